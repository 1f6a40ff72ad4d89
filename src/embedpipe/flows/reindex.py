"""The reindex flow: rebuild the table with another model or chunking, then switch in one commit.

When the chunking is unchanged (same budget, overlap and tokenizer), the stored chunk texts are
re-embedded and the sources are not read at all; otherwise the sources recorded in the table are
read and chunked again. Either way the new rows are staged and then replace the table's contents
in a single commit: readers see the old index until that commit and the new one after it, never a
half-built one. The new version is checked like any other and served only when its gates pass
(a model change is judged by the quality checks; the vector-space drift checks do not apply
across models). The previous version stays available to ``rollback`` until retention removes it.
"""

from __future__ import annotations

from functools import partial

from prefect import flow
from prefect.states import State

from embedpipe.config import Settings, get_settings
from embedpipe.flows._pipeline import check_reject_ratio, opaque, reembed_stored, run_shards
from embedpipe.flows._writing import WritingRun, writing_run
from embedpipe.incremental import empty_state
from embedpipe.schemas import ModelIdentity, RunSummary
from embedpipe.store import CommitResult, Store
from embedpipe.tasks.sources import discover_task
from embedpipe.tasks.store import stored_sources, switch_task


@flow(name="reindex", persist_result=False, log_prints=False, validate_parameters=True)
def reindex(
    settings: Settings | None = None, sources: list[str] | None = None
) -> State[RunSummary] | RunSummary:
    """Rebuild the chunks table with the configured model and chunking, then switch atomically.

    Args:
        settings: The new configuration (model, chunking); loaded from the environment when omitted.
        sources: Read these sources instead of the table's own (forces re-reading).

    Returns:
        The run summary (``flow="reindex"``); on failure a ``Failed`` state carrying it, and the
        table still serves the previous index.
    """
    write = partial(_rebuild, sources=sources)
    return writing_run("reindex", settings or get_settings(), list(sources or []), write, check_table=False)


def _vector_identity(m: ModelIdentity) -> tuple[str, int, bool, str, str]:
    """What decides a text's vector: equal for two models, a stored vector is still valid."""
    return (m.weights_hash, m.dim, m.normalize, m.backend, m.precision)


def _rebuild(run: WritingRun, sources: list[str] | None) -> CommitResult:
    """Stage the whole table again with the run's model and chunking, then switch to it in one commit."""
    settings, tally, prepared = run.settings, run.tally, run.prepared
    store = Store(settings.store)
    table = store.require_table()
    assert prepared.read_version is not None  # the table exists: it was read at a version
    table.checkout(prepared.read_version)
    old_identity = store.table_identity(table=table)
    old_chunking = store.table_chunking(table)
    assert old_identity is not None
    same_model = _vector_identity(old_identity) == _vector_identity(prepared.identity)
    reuse_version = prepared.read_version if same_model else None
    run.reused_chunk_texts = (
        sources is None and old_chunking is not None and old_chunking.same_chunks(prepared.chunking)
    )
    if run.reused_chunk_texts:
        reembed_stored(
            settings, run.run_id, prepared.read_version, int(table.count_rows()), reuse_version, tally
        )
    else:
        plan = discover_task(sources or stored_sources(settings, prepared.read_version), settings)
        tally.add_rejects(plan.rejects)
        run_shards(plan, settings, run.run_id, empty_state(), reuse_version, tally)
        check_reject_ratio(tally, settings, "the table was not switched")
    result = switch_task(opaque(tally.staged), settings, run.run_id, run.schema(), prepared.read_version)
    # The switch replaces every row: the summary counts no chunk as deleted.
    return CommitResult(result.version, result.written, 0)
