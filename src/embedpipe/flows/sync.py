"""The sync flow: compare the sources with the table, then write only what changed, as one version.

prepare → load-state → discover (unchanged files left out) → per shard (ingest → chunk → embed →
stage) → write → checks → publish → summarize.
Unchanged documents are skipped, only new chunk texts go through the model, stale and deleted
chunks are removed, and nothing becomes visible until the single ``write`` commit. A run that
changes nothing creates no version. A new version is then checked (one task per check family)
and served only when its gates pass (write, audit, publish; see :mod:`embedpipe.flows._audit`).
"""

from __future__ import annotations

import json
from functools import partial

from prefect import flow
from prefect.states import State

from embedpipe.config import Settings, get_settings
from embedpipe.flows._pipeline import check_reject_ratio, opaque, run_shards
from embedpipe.flows._writing import WritingRun, writing_run
from embedpipe.incremental import missing_documents, renamed_documents
from embedpipe.schemas import READER_META_KEY, RunCounts, RunSummary
from embedpipe.sources.globs import PathFilter
from embedpipe.sources.parse import reader_identity, reader_map, updated_reader_map
from embedpipe.store import CommitResult
from embedpipe.tasks.sources import discover_task, source_scopes
from embedpipe.tasks.store import load_state_task, write_task


@flow(name="sync", persist_result=False, log_prints=False, validate_parameters=True)
def sync(
    sources: list[str], settings: Settings | None = None, delete_missing: bool = True
) -> State[RunSummary] | RunSummary:
    """Sync documents under ``sources`` into the chunks table as at most one new version.

    Args:
        sources: Folders or files to read.
        settings: Settings; loaded from the environment and ``embedpipe.toml`` when omitted.
        delete_missing: Remove the chunks of documents that disappeared from a scanned source.

    Returns:
        The run summary; on failure a ``Failed`` state carrying it, and the table is unchanged.
    """
    write = partial(_write_changes, sources=sources, delete_missing=delete_missing)
    return writing_run("sync", settings or get_settings(), [str(s) for s in sources], write)


def _write_changes(run: WritingRun, sources: list[str], delete_missing: bool) -> CommitResult:
    """Stage what changed in ``sources`` since the version read, then commit it with the deletions."""
    settings, tally, read_version = run.settings, run.tally, run.prepared.read_version
    scopes = source_scopes(sources, settings)
    known = load_state_task(settings, scopes, read_version)
    # Files the table holds as they are now are not read; record files only under sources the
    # table records as read in full with this run's reader settings (text_field, id_field).
    identity = reader_identity(settings.source)
    stored = reader_map(run.prepared.reader)
    records = {root for root, read_with in stored.items() if read_with == identity}
    plan = discover_task(sources, settings, opaque(known), records)
    tally.add_rejects(plan.rejects)
    tally.counts += RunCounts(seen=plan.unchanged_docs, unchanged=plan.unchanged_docs)
    run_shards(plan, settings, run.run_id, known, read_version, tally)
    check_reject_ratio(tally, settings, "nothing was committed")
    deleted_docs: list[tuple[str, str]] = []
    if delete_missing:
        keep = PathFilter(settings.source.include, settings.source.exclude)
        deleted_docs = missing_documents(
            known, tally.seen_ids, plan.scanned_files, tally.protected_files, keep, plan.unchanged
        )
        renamed = renamed_documents(known, deleted_docs)
        if renamed:
            run.logger.warning(
                "stage=ingest docs_renamed=%d: %d document(s) changed id because file names with "
                "'#' or '%%' are now escaped (%%23, %%25); this version replaces them under the "
                "new id (a one-time migration, see README 'Document ids')",
                renamed,
                renamed,
            )
    run.docs_deleted = len(deleted_docs)
    replace = sorted(set(tally.changed_text) | set(deleted_docs))
    read_with = updated_reader_map(stored, [(sc.source, sc.paths is None) for sc in scopes], identity)
    schema = run.schema()
    schema = schema.with_metadata({**(schema.metadata or {}), READER_META_KEY: json.dumps(read_with)})
    return write_task(
        opaque(tally.staged),
        settings,
        run.run_id,
        schema,
        opaque(replace),
        opaque(tally.exclude),
        read_version,
    )
