"""Golden tests: every Arrow schema is pinned, so a change is a deliberate diff.

To accept a deliberate change: ``UPDATE_GOLDEN=1 pytest tests/unit/test_schemas.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from embedpipe.schemas import (
    C,
    ModelIdentity,
    canary_schema,
    checks_schema,
    chunks_schema,
    docs_schema,
    rejects_schema,
    runs_schema,
    segments_schema,
    vector_cache_schema,
)

GOLDEN = Path(__file__).parent / "golden" / "schemas.json"


def describe(schema: pa.Schema) -> dict:
    return {
        "fields": [
            {
                "name": f.name,
                "type": str(f.type),
                "nullable": f.nullable,
                "description": (f.metadata or {}).get(b"description", b"").decode(),
            }
            for f in schema
        ],
        "metadata": {k.decode(): v.decode() for k, v in sorted((schema.metadata or {}).items())},
    }


def current() -> dict:
    return {
        "docs": describe(docs_schema()),
        "segments": describe(segments_schema()),
        "chunks_384": describe(chunks_schema(384)),
        "rejects": describe(rejects_schema()),
        "runs": describe(runs_schema()),
        "checks": describe(checks_schema()),
        "canary": describe(canary_schema()),
        "vector_cache": describe(vector_cache_schema()),
    }


def test_schemas_match_golden() -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(current(), indent=1, ensure_ascii=False) + "\n")
    assert current() == json.loads(GOLDEN.read_text())


def test_vector_is_fixed_size_float32() -> None:
    field = chunks_schema(384).field(C.VECTOR)
    assert field.type == pa.list_(pa.float32(), 384)
    assert not field.nullable


def test_every_field_is_described() -> None:
    for schema in (
        docs_schema(),
        segments_schema(),
        chunks_schema(8),
        rejects_schema(),
        runs_schema(),
        checks_schema(),
        canary_schema(),
        vector_cache_schema(),
    ):
        for f in schema:
            assert (f.metadata or {}).get(b"description"), f.name


def test_bad_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="dim must be positive"):
        chunks_schema(0)


def test_model_identity_round_trips_through_metadata() -> None:
    ident = ModelIdentity(name="m", weights_hash="ab" * 32, dim=8, max_seq_length=128, normalize=True)
    md = chunks_schema(8, ident.table_metadata()).metadata
    back = ModelIdentity.from_table_metadata({k.decode(): v.decode() for k, v in md.items()})
    assert back == ident
    assert ident.model_id == "m@" + "ab" * 6
    assert ModelIdentity.from_table_metadata({}) is None


def test_ledger_table_names_are_pinned() -> None:
    """Stored databases hold tables by these names: renaming one would orphan what is stored."""
    from embedpipe.schemas import tables

    assert tables.LEDGER_TABLES == ("runs", "rejects", "checks", "canary", "vector_cache")
    for make, name in (
        (runs_schema, tables.RUNS_TABLE),
        (rejects_schema, tables.REJECTS_TABLE),
        (checks_schema, tables.CHECKS_TABLE),
        (canary_schema, tables.CANARY_TABLE),
        (vector_cache_schema, tables.VECTOR_CACHE_TABLE),
    ):
        assert make().metadata[b"embedpipe.schema"] == name.encode()
