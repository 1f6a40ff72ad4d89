"""Settings: environment facts (where data lives, which model, how big a batch).

Precedence, highest first: CLI flags, ``EMBEDPIPE_*`` environment variables (nested with ``__``),
``embedpipe.toml``, defaults. Nothing is built at import time: call :func:`get_settings`.

The modules: ``settings`` (the root model and its loader), ``pipeline`` (source, chunk, model and
runtime groups), ``storage`` (store, vector cache, retention), ``checks`` (checks and their gates),
``index`` (vector, full-text and scalar indexes), ``_base`` (the base group and the shared ``s3``
group), ``origins`` (where each value came from).
"""

from embedpipe.config._base import S3Settings
from embedpipe.config.checks import ChecksSettings, GateSettings
from embedpipe.config.index import IndexSettings
from embedpipe.config.pipeline import ChunkSettings, ModelSettings, RuntimeSettings, SourceSettings
from embedpipe.config.settings import Settings, get_settings
from embedpipe.config.storage import RetentionSettings, StoreSettings, VectorCacheSettings

__all__ = [
    "ChecksSettings",
    "ChunkSettings",
    "GateSettings",
    "IndexSettings",
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
