"""embedpipe: keep a corpus's embeddings fresh, versioned and searchable.

The public Python API is what ``__all__`` lists (see :mod:`embedpipe.api` and the README)::

    import embedpipe

    summary = embedpipe.sync(["docs/"], db="./.embedpipe/db")   # a Prefect (sub)flow
    hits = embedpipe.open("./.embedpipe/db").search("vector index", k=3)

Everything else in the package is private and may change. Names are imported on first use, so
``import embedpipe`` loads neither Prefect, LanceDB nor the model.

The package is layered: ``config``, ``schemas``, ``embedding``, ``store`` and the plain modules
(``sources``, ``chunking``, ``progress``, ``search``) never import Prefect; only ``tasks`` and
``flows`` do.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING, Any

# Lance's Rust logger warns on every table creation ("No existing dataset ... will be created"),
# which is expected here and would otherwise land on a successful run's console.
_os.environ.setdefault("LANCEDB_LOG", "error")

__version__ = "0.1.0"

if TYPE_CHECKING:
    from embedpipe.api import Table, check, make_settings, open, reindex, sync
    from embedpipe.config import Settings
    from embedpipe.errors import EmbedpipeError, RunFailed
    from embedpipe.schemas import CheckReport, RunSummary

__all__ = [
    "CheckReport",
    "EmbedpipeError",
    "RunFailed",
    "RunSummary",
    "Settings",
    "Table",
    "__version__",
    "check",
    "make_settings",
    "open",
    "reindex",
    "sync",
]

_WHERE = {
    "Table": "embedpipe.api",
    "check": "embedpipe.api",
    "make_settings": "embedpipe.api",
    "open": "embedpipe.api",
    "reindex": "embedpipe.api",
    "sync": "embedpipe.api",
    "Settings": "embedpipe.config",
    "EmbedpipeError": "embedpipe.errors",
    "RunFailed": "embedpipe.errors",
    "CheckReport": "embedpipe.schemas",
    "RunSummary": "embedpipe.schemas",
}


def __getattr__(name: str) -> Any:
    # Lazy: a submodule import (``import embedpipe.cli``) must not pay for the API's imports.
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'embedpipe' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
