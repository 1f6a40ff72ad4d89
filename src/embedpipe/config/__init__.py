"""Settings: environment facts (where data lives, which model, how big a batch).

Precedence, highest first: CLI flags, ``EMBEDPIPE_*`` environment variables (nested with ``__``),
``embedpipe.toml``, defaults. Nothing is built at import time: call :func:`get_settings`.
"""

from embedpipe.config.settings import (
    ChecksSettings,
    ChunkSettings,
    GateSettings,
    ModelSettings,
    RetentionSettings,
    RuntimeSettings,
    S3Settings,
    Settings,
    SourceSettings,
    StoreSettings,
    VectorCacheSettings,
    get_settings,
)

__all__ = [
    "ChecksSettings",
    "ChunkSettings",
    "GateSettings",
    "ModelSettings",
    "RetentionSettings",
    "RuntimeSettings",
    "S3Settings",
    "Settings",
    "SourceSettings",
    "StoreSettings",
    "VectorCacheSettings",
    "get_settings",
]
