"""The store stage: the LanceDB table of chunks and everything kept beside it.

:class:`Store` is the one door the pipeline uses. It is assembled from one part per concern, each
in its own module:

- :mod:`~embedpipe.store.connection`: the database URI, storage options, opening tables, errors;
- :mod:`~embedpipe.store.identity`: the model and chunking a table was built with;
- :mod:`~embedpipe.store.state`: reads of a pinned version (document state, rows, vectors, search);
- :mod:`~embedpipe.store.staging`: a run's shards, staged outside the served table;
- :mod:`~embedpipe.store.commit`: one atomic commit per run, the stale-head check, the ``serving`` tag;
- :mod:`~embedpipe.store.scalar_index`: the scalar indexes on the columns runs filter by;
- :mod:`~embedpipe.store.ledger`: the runs, rejects, checks and canary tables;
- :mod:`~embedpipe.store.retention`: versions, rollback, compaction and cleanup;
- :mod:`~embedpipe.store.indexes`: the vector, full-text and scalar indexes' upkeep and listing
  (the vector index's parameters, record and tuning: :mod:`~embedpipe.store.vector_index`).

Beside it: :mod:`~embedpipe.store.reader` (read-only access through Lance alone, for search),
:mod:`~embedpipe.store.vector_cache`, :mod:`~embedpipe.store.lock` (the table run lock) and
:mod:`~embedpipe.store.objectstore` (S3 settings for Lance and pyarrow). Filters are expressions
(:mod:`~embedpipe.store.filters`), never hand-quoted SQL. Nothing here imports Prefect, and
nothing imports LanceDB before a table is opened.
"""

from __future__ import annotations

from embedpipe.schemas import CANARY_TABLE, CHECKS_TABLE, REJECTS_TABLE, RUNS_TABLE, VECTOR_CACHE_TABLE
from embedpipe.store.commit import CommitMixin, CommitResult
from embedpipe.store.identity import IdentityMixin, model_mismatch
from embedpipe.store.indexes import IndexMixin, IndexRefresh
from embedpipe.store.ledger import LedgerMixin
from embedpipe.store.reader import RUN_ID_TAG, SERVING_TAG
from embedpipe.store.retention import RetentionMixin
from embedpipe.store.staging import STAGING_DIR, StagedShard, StagingMixin
from embedpipe.store.state import DocState, Scope, StateMixin, vector_query

__all__ = [
    "CANARY_TABLE",
    "CHECKS_TABLE",
    "REJECTS_TABLE",
    "RUNS_TABLE",
    "RUN_ID_TAG",
    "SERVING_TAG",
    "STAGING_DIR",
    "VECTOR_CACHE_TABLE",
    "CommitResult",
    "DocState",
    "IndexRefresh",
    "Scope",
    "StagedShard",
    "Store",
    "model_mismatch",
    "vector_query",
]


class Store(IndexMixin, RetentionMixin, CommitMixin, StagingMixin, LedgerMixin, StateMixin, IdentityMixin):
    """LanceDB database access for one configured store; picklable, connects lazily.

    One object with the methods of every part (listed in the module docstring), because its
    callers (tasks, flows, checks, the CLI) each use several concerns on one store, and the parts
    call each other (a rollback reads the ledger, then publishes).
    """
