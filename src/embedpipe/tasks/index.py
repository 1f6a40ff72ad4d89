"""Index task (around :meth:`embedpipe.store.Store.refresh_indexes`): after a run's commit and before
its checks, bring the table's indexes up to date so the gates judge the index that will be served."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task

from embedpipe.config import Settings
from embedpipe.store import CommitResult, Store
from embedpipe.tasks._common import RETRYING


@dataclass(frozen=True)
class IndexedCommit(CommitResult):
    """A commit result whose version is the one to audit: the commit's, or the newest index version."""

    version: int


def refresh_indexes(
    settings: Settings, run_id: str, result: CommitResult, retrain: bool = False
) -> IndexedCommit:
    """Refresh the indexes after the commit ``result``; the result names the version to audit.

    Creating, optimizing or retraining an index makes new table versions: the returned result's
    ``version`` is the newest one (the commit's own version when nothing changed, or when indexing
    is off); the audit moves the run's tag from its commit to it. Called only when the run wrote a
    version.
    """
    if result.version is None:
        raise ValueError("refresh_indexes: the run wrote no version, so there is nothing to index")
    if not settings.index.enabled:
        return IndexedCommit(result.version, result.written, result.deleted)
    store = Store(settings.store)
    done = store.refresh_indexes(settings.index, retrain=retrain, k=settings.checks.k)
    if done.version is None:
        return IndexedCommit(result.version, result.written, result.deleted)
    return IndexedCommit(done.version, result.written, result.deleted)


@task(name="index", **RETRYING)
def index_task(settings: Settings, run_id: str, result: CommitResult, retrain: bool = False) -> IndexedCommit:
    """Create, refresh or retrain the table's indexes after a commit (see :func:`refresh_indexes`)."""
    out = refresh_indexes(settings, run_id, result, retrain)
    get_run_logger().info(
        "stage=index run_id=%s table=%s committed=%s version=%s",
        run_id,
        settings.store.table,
        result.version,
        out.version,
    )
    return out
