"""Arrow schemas of the data embedpipe moves and stores, the typed run records and step results."""

from embedpipe.schemas.arrow import (
    SCHEMA_VERSION,
    C,
    canary_schema,
    checks_schema,
    chunks_schema,
    doc_state_schema,
    docs_schema,
    rejects_schema,
    runs_schema,
    search_hits,
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
from embedpipe.schemas.steps import Audit, RunCounts
from embedpipe.schemas.tables import (
    CANARY_TABLE,
    CHECKS_TABLE,
    LEDGER_TABLES,
    REJECTS_TABLE,
    RUNS_TABLE,
    VECTOR_CACHE_TABLE,
)

__all__ = [
    "CANARY_TABLE",
    "CHECKS_TABLE",
    "LEDGER_TABLES",
    "REJECTS_TABLE",
    "RUNS_TABLE",
    "SCHEMA_VERSION",
    "VECTOR_CACHE_TABLE",
    "Audit",
    "C",
    "CheckReport",
    "CheckResult",
    "ChunkingIdentity",
    "ModelIdentity",
    "Reject",
    "RunCounts",
    "RunSummary",
    "canary_schema",
    "checks_schema",
    "chunks_schema",
    "doc_state_schema",
    "docs_schema",
    "rejects_schema",
    "runs_schema",
    "search_hits",
    "segments_schema",
    "vector_cache_schema",
    "vector_matrix",
]
