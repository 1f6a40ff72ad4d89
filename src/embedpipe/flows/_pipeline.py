"""The shard pipeline shared by the sync and reindex flows, and the run's tally.

Shards are pipelined: while the model embeds shard *i*, shards *i+1..i+k* are read and chunked and
shard *i-1* is staged, with at most ``runtime.max_inflight_shards`` shards in memory. Embedding is
chained shard after shard so that one model instance is never asked for two forward passes at once.
"""

from __future__ import annotations

import gc
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote

from embedpipe.config import Settings
from embedpipe.errors import EmbedpipeError, RejectRatioExceeded
from embedpipe.flows._dask import cancel_all, worker_result
from embedpipe.incremental import Known, split_state
from embedpipe.progress import chunks_progress
from embedpipe.schemas import C, Reject, RunCounts, RunSummary
from embedpipe.store import StagedShard, Store
from embedpipe.tasks.chunking import chunk_task
from embedpipe.tasks.embedding import embed_task, reembed_task
from embedpipe.tasks.shard import ShardOutcome, outcome_of, shard_task
from embedpipe.tasks.sources import Plan, ingest_task
from embedpipe.tasks.store import read_stored_task, stage_task

T = TypeVar("T")
F = TypeVar("F")


@dataclass
class Tally:
    """What the shards of a run added up to."""

    counts: RunCounts = field(default_factory=RunCounts)
    protected_files: set[tuple[str, str]] = field(default_factory=set)
    """Files with a reject or a dropped document: documents missing from them are not deleted."""
    staged: list[StagedShard] = field(default_factory=list)
    seen_ids: set[tuple[str, str]] = field(default_factory=set)
    changed_text: list[tuple[str, str]] = field(default_factory=list)
    exclude: dict[str, list[str]] = field(default_factory=dict)
    """Per staged file, the doc_ids left out of the commit (duplicates of an earlier shard's)."""

    def add_rejects(self, rejects: list[Reject]) -> None:
        """Count files rejected before any shard read them (discovery); they are never deleted."""
        self.counts += RunCounts(seen=len(rejects), rejects=rejects)
        self.protected_files |= {(r.source, r.path) for r in rejects}


class ArtifactProgress:
    """Mirrors chunk progress into a Prefect progress artifact, at most once per model call."""

    def __init__(self, key: str) -> None:
        self.total = 0
        self.done = 0
        self.id: Any = None
        try:
            self.id = create_progress_artifact(progress=0.0, key=key, description="Chunks embedded")
        except Exception:  # the UI artifact is a nicety; a run never fails for it
            self.id = None

    def start(self) -> None:
        pass

    def add_total(self, n: int) -> None:
        self.total += n

    def advance(self, n: int) -> None:
        self.done += n
        if self.id is not None and self.total:
            try:
                update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))
            except Exception:
                self.id = None

    def close(self) -> None:
        pass


def check_reject_ratio(tally: Tally, settings: Settings, consequence: str) -> None:
    """Fail the run when more input was rejected than ``source.max_reject_ratio`` allows.

    Raises:
        RejectRatioExceeded: With the counts, the limit and ``consequence``.
    """
    rejected, seen = len(tally.counts.rejects), tally.counts.seen
    ratio = rejected / seen if seen else 0.0
    if ratio > settings.source.max_reject_ratio:
        raise RejectRatioExceeded(
            f"{rejected} of {seen} documents rejected (ratio {ratio:.2f} > "
            f"source.max_reject_ratio={settings.source.max_reject_ratio}); {consequence}. "
            "See the rejects for reasons"
        )


@dataclass
class Outcome:
    """How a guarded run ended."""

    status: str = "completed"
    message: str | None = None
    exit_code: int = 0
    """The CLI's exit status for this outcome (the error class's, 1 for an unexpected error)."""


def discard_staging(settings: Settings, rid: str) -> None:
    """Remove a failed run's staged shards, keeping their vectors in the vector cache first."""
    store = Store(settings.store)
    store.cache.keep_staged(rid)
    store.drop_staging(rid)


@contextmanager
def guarded_run(flow_name: str, settings: Settings, rid: str, logger: Any) -> Iterator[Outcome]:
    """Turn any failure inside a run into a recorded failed outcome, and clean its staging.

    Expected failures (embedpipe errors) keep their one-line message; anything else is logged with
    its traceback. Either way the table is untouched (nothing was committed) and the run's staged
    files are removed, their vectors kept in the vector cache for the next run. The Prefect
    progress artifact lives for the duration of the block. Writing flows enter the table's run
    lock right after it, in the same ``with`` statement (:func:`embedpipe.flows._lock.table_lock`),
    so that a lock timeout is such a failure too.
    """
    outcome = Outcome()
    progress = ArtifactProgress(f"embedpipe-{flow_name}-progress")
    chunks_progress.add(progress)
    try:
        yield outcome
    except EmbedpipeError as e:
        outcome.status, outcome.message, outcome.exit_code = "failed", str(e), e.exit_code
        discard_staging(settings, rid)
    except Exception as e:  # a bug or a library failure: recorded as a failed run, table untouched
        logger.error("%s failed unexpectedly: %s: %s", flow_name, type(e).__name__, e, exc_info=True)
        outcome.status, outcome.message, outcome.exit_code = "failed", f"{type(e).__name__}: {e}", 1
        discard_staging(settings, rid)
    finally:
        chunks_progress.remove(progress)


def final_state(outcome: Outcome, summary: RunSummary, logger: Any) -> State[RunSummary]:
    """The flow's final state, carrying the summary either way."""
    if outcome.status == "failed":
        logger.warning("%s failed: %s", summary.flow, outcome.message)
        return Failed(message=outcome.message, data=summary)
    return Completed(message=f"table={summary.table} version={summary.table_version}", data=summary)


def opaque(value: T) -> T:
    """``value`` as a task parameter Prefect passes through without walking it for futures.

    Prefect visits every element of a task's parameters on submit and again when the task starts;
    for a list of thousands of files, documents or sampled ids that costs tens of milliseconds per
    task on the flow's thread. (Typed as the value: the task receives the value itself.)
    """
    return cast(T, quote(value))


def run_id() -> str:
    """The Prefect flow run id (a fresh UUID outside a flow run)."""
    rid = flow_run.get_id()
    return str(rid) if rid else str(uuid.uuid4())


def add_outcome(tally: Tally, out: ShardOutcome) -> None:
    """Add one shard's outcome to the run's tally (in shard order: earlier parts of a file win)."""
    tally.staged.append(out.staged)
    tally.counts += out.counts
    tally.protected_files |= out.protected_files
    dups = _reject_duplicates(tally, out)
    tally.seen_ids.update(out.seen_ids)
    tally.changed_text += [d for d in out.changed_text if d not in dups] if dups else out.changed_text
    if out.dropped:
        # Documents left out by the embed stage keep their stored rows and are never deleted.
        dropped = set(out.dropped)
        tally.changed_text = [d for d in tally.changed_text if d not in dropped]
        tally.protected_files |= out.dropped_files


def _reject_duplicates(tally: Tally, out: ShardOutcome) -> set[tuple[str, str]]:
    """Reject the documents of ``out`` whose (source, doc_id) an earlier shard of the run already had.

    The first one wins: the duplicate's staged rows are left out of the commit and it does not
    replace the first one's rows, so two inputs that map to one id can never delete each other's
    rows. Parts of one big record file are read in different shards, where this is the
    duplicate-id check across parts; elsewhere doc_ids are unique by construction
    (:mod:`embedpipe.sources.docids`) and this is the guard that keeps it so.

    Returns:
        The duplicates' (source, doc_id).
    """
    dups = {k for k in out.seen_ids if k in tally.seen_ids}
    if not dups:
        return dups
    split = set(out.split_ids)
    for src, doc_id in sorted(dups):
        tally.exclude.setdefault(out.staged.uri, []).append(doc_id)
        reason = (
            "duplicate id in this file (an earlier part has it)"
            if doc_id in split
            else "duplicate doc_id: another input of this run already has this id; not written"
        )
        tally.counts.rejects.append(Reject(path=doc_id, reason=reason, source=src))
    return dups


def shard_window(submitted: Iterable[F], collect: Callable[[F, bool], None], size: int) -> None:
    """Collect submitted shards oldest first, with at most ``size`` of them in flight.

    Args:
        submitted: Submits one shard's tasks per item as it is iterated (a generator), so that a
            shard is submitted only when the window has room for it.
        collect: Takes one shard's futures and ``more``, which is ``False`` only for the final
            shard when it is collected after every shard was submitted.
        size: ``runtime.max_inflight_shards``.
    """
    inflight: deque[F] = deque()
    for futures in submitted:
        inflight.append(futures)
        del futures  # the window alone keeps a shard's futures (and their results) alive
        while len(inflight) >= size:
            collect(inflight.popleft(), True)
    while inflight:
        collect(inflight.popleft(), bool(inflight))


def _collect(tally: Tally, futures: tuple[Any, Any, Any, Any], more: bool) -> None:
    docs_f, chunks_f, emb_f, stage_f = futures
    del futures
    docs = docs_f.result()
    chunks = chunks_f.result()
    emb = emb_f.result()
    staged = stage_f.result()
    add_outcome(tally, outcome_of(docs, chunks, emb, staged))
    del docs, chunks, emb, docs_f, chunks_f, emb_f, stage_f
    # Prefect's states and contexts form reference cycles that keep a finished shard's Arrow
    # buffers alive until the cyclic collector runs; collecting here keeps memory bounded by the
    # in-flight window instead of by how often Python happens to collect (once per shard). A full
    # collection scans every object of the process (~0.2 s with a model loaded), so it is skipped
    # after the last shard, where nothing is read behind it and the commit waits on it.
    if more:
        gc.collect()


def _run_shards_on_workers(
    plan: Plan, settings: Settings, rid: str, known: Known, read_version: int | None, tally: Tally
) -> None:
    """Every shard as one task on the Dask workers; only small outcomes come back, in shard order."""
    futures = []
    # Chunks are reported only when a whole shard lands: the rate counts from the submission.
    chunks_progress.start()
    for shard_no, (refs, shard_known) in enumerate(
        zip(plan.shards, split_state(known, plan.shards), strict=True)
    ):
        futures.append(shard_task.submit(shard_no, refs, settings, shard_known, rid, read_version))
    try:
        for fut in futures:
            out = worker_result(fut)
            add_outcome(tally, out)
            # The model runs in the workers: the flow reports each shard's chunks as it lands.
            chunks_progress.add_total(out.counts.embedded)
            chunks_progress.advance(out.counts.embedded)
    except BaseException:
        cancel_all(futures)
        raise


def _submit_shards(
    plan: Plan, settings: Settings, rid: str, known: Known, read_version: int | None
) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Submit each shard's ingest, chunk, embed and stage tasks, one shard per item."""
    prev_embed: Any = None
    states = split_state(known, plan.shards)
    for shard_no, (refs, shard_known) in enumerate(zip(plan.shards, states, strict=True)):
        # Futures are passed where tasks take values: Prefect resolves them (hence the ignores).
        docs_f: Any = ingest_task.submit(shard_no, opaque(refs), settings, opaque(shard_known))
        chunks_f: Any = chunk_task.submit(docs_f, settings)  # type: ignore[call-overload]
        emb_f: Any = embed_task.submit(  # type: ignore[call-overload]
            chunks_f, docs_f, settings, rid, read_version, wait_for=[prev_embed] if prev_embed else None
        )
        stage_f = stage_task.submit(emb_f, settings, rid)  # type: ignore[call-overload]
        prev_embed = emb_f
        yield docs_f, chunks_f, emb_f, stage_f


def run_shards(
    plan: Plan, settings: Settings, rid: str, known: Known, read_version: int | None, tally: Tally
) -> None:
    """Ingest, chunk, embed and stage every shard of the plan, pipelined, into ``tally``.

    With ``runtime.runner=dask`` each shard is one task on a Dask worker instead (see
    :mod:`embedpipe.tasks.shard`); the flow still commits once.
    """
    if settings.runtime.runner == "dask":
        _run_shards_on_workers(plan, settings, rid, known, read_version, tally)
        return
    submitted = _submit_shards(plan, settings, rid, known, read_version)
    shard_window(submitted, partial(_collect, tally), settings.runtime.max_inflight_shards)


def reembed_stored(
    settings: Settings, rid: str, version: int, total: int, reuse_version: int | None, tally: Tally
) -> None:
    """Re-embed the ``total`` chunk rows stored at ``version`` and stage them, pipelined, into ``tally``.

    The rows are read back in shards of ``runtime.shard_rows``; every document counts as seen and
    new. ``reuse_version``: the version whose vectors are still valid (the same model), or ``None``.
    """
    doc_ids: set[str] = set()

    def submitted() -> Iterator[tuple[Any, Any]]:
        prev_embed: Any = None
        step = settings.runtime.shard_rows
        for shard_no, offset in enumerate(range(0, total, step)):
            rows_f: Any = read_stored_task.submit(settings, version, offset, step)
            emb_f: Any = reembed_task.submit(  # type: ignore[call-overload]
                rows_f, settings, rid, shard_no, reuse_version, wait_for=[prev_embed] if prev_embed else None
            )
            stage_f = stage_task.submit(emb_f, settings, rid)  # type: ignore[call-overload]
            prev_embed = emb_f
            yield emb_f, stage_f

    def collect(futures: tuple[Any, Any], more: bool) -> None:
        emb_f, stage_f = futures
        emb = emb_f.result()
        tally.staged.append(stage_f.result())
        doc_ids.update(emb.table.column(C.DOC_ID).to_pylist())
        tally.counts += emb.counts

    shard_window(submitted(), collect, settings.runtime.max_inflight_shards)
    tally.counts.seen = tally.counts.new = len(doc_ids)
