"""Names of the tables embedpipe keeps next to the chunks table: each is defined here and only here.

The chunks table's own name is a setting (``store.table``); these ledger tables are shared by every
chunks table of a database and keep their names, so changing one would orphan what is stored.
"""

from __future__ import annotations

RUNS_TABLE = "runs"
"""One row per run: its summary (:func:`~embedpipe.schemas.runs_schema`)."""
REJECTS_TABLE = "rejects"
"""Files and rows that were not embedded, with the reason."""
CHECKS_TABLE = "checks"
"""One row per check result per checked version."""
CANARY_TABLE = "canary"
"""Canary probe vectors per model, the baseline of the canary check."""
VECTOR_CACHE_TABLE = "vector_cache"
"""Vectors kept from failed or unserved runs for reuse (when the vector cache is on)."""

LEDGER_TABLES = (RUNS_TABLE, REJECTS_TABLE, CHECKS_TABLE, CANARY_TABLE, VECTOR_CACHE_TABLE)
"""Every table above."""

READER_META_KEY = "embedpipe.reader"
"""The chunks table's schema-metadata key recording which reader settings its documents were read
with (:func:`embedpipe.sources.parse.reader_identity`)."""
