"""Arrow schemas of the data embedpipe moves and stores, and the typed run records."""

from embedpipe.schemas.arrow import (
    SCHEMA_VERSION,
    C,
    canary_schema,
    checks_schema,
    chunks_schema,
    docs_schema,
    rejects_schema,
    runs_schema,
    segments_schema,
    vector_cache_schema,
    vector_matrix,
)
from embedpipe.schemas.records import (
    CheckReport,
    CheckResult,
    ChunkingIdentity,
    ModelIdentity,
    Reject,
    RunSummary,
)

__all__ = [
    "SCHEMA_VERSION",
    "C",
    "CheckReport",
    "CheckResult",
    "ChunkingIdentity",
    "ModelIdentity",
    "Reject",
    "RunSummary",
    "canary_schema",
    "checks_schema",
    "chunks_schema",
    "docs_schema",
    "rejects_schema",
    "runs_schema",
    "segments_schema",
    "vector_cache_schema",
    "vector_matrix",
]
