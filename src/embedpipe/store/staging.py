"""Staging: a run's embedded shards, written as Arrow IPC files outside the served table.

A run never writes into the served table batch by batch. Its shards are staged next to the
database (``<db>/_embedpipe_staging/<table>/<run_id>/shard-NNNNNN.arrow``) and read back as one
stream by the commit (:mod:`embedpipe.store.commit`). Staged files are invisible to readers; those
of a run that died before its commit are swept after ``runtime.staging_ttl_hours``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from embedpipe.schemas import C
from embedpipe.store import objectstore
from embedpipe.store.connection import StoreBase

log = logging.getLogger(__name__)

STAGING_DIR = "_embedpipe_staging"


@dataclass(frozen=True)
class StagedShard:
    """A reference to one staged shard file (what tasks pass around instead of the data)."""

    uri: str
    rows: int


class StagingMixin(StoreBase):
    """Staged shards of a run (part of :class:`~embedpipe.store.Store`)."""

    def staging_uri(self, run_id: str) -> str:
        return f"{self.uri.rstrip('/')}/{STAGING_DIR}/{self.settings.table}/{run_id}"

    def stage(self, run_id: str, shard_no: int, data: pa.Table) -> StagedShard:
        """Write one embedded shard as an Arrow IPC file outside the served table."""
        fs, _ = self._fs()
        uri = f"{self.staging_uri(run_id)}/shard-{shard_no:06d}.arrow"
        path = objectstore.fs_path(uri)
        # On an object store one PUT is already all-or-nothing (and a rename is a copy): no temp file.
        remote = objectstore.is_s3(uri)
        try:
            if not remote:
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = path if remote else path + ".tmp"
            with fs.open_output_stream(tmp) as out, pa.ipc.new_file(out, data.schema) as writer:
                writer.write_table(data, max_chunksize=8192)
            if not remote:
                fs.move(tmp, path)
        except OSError as e:
            raise self._error(f"cannot stage shard={shard_no} at uri={uri}", e) from e
        return StagedShard(uri=uri, rows=data.num_rows)

    def drop_staging(self, run_id: str) -> None:
        fs, _ = self._fs()
        uri = self.staging_uri(run_id)
        path = objectstore.fs_path(uri)
        try:
            fs.delete_dir(path)
        except (FileNotFoundError, OSError) as e:
            log.debug("staging already gone uri=%s: %s", uri, e)

    def sweep_staging(self, ttl_hours: float) -> int:
        """Remove staged runs older than ``ttl_hours`` (left by runs that died). Returns how many."""
        fs, base = self._fs()
        root = f"{base.rstrip('/')}/{STAGING_DIR}/{self.settings.table}"
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        except OSError:
            return 0
        cutoff = time.time() - ttl_hours * 3600
        removed = 0
        if objectstore.is_s3(self.uri):
            return self._sweep_objects(fs, root, cutoff)
        for info in infos:
            if info.type == pafs.FileType.Directory and info.mtime and info.mtime.timestamp() < cutoff:
                fs.delete_dir(info.path)
                removed += 1
        return removed

    @staticmethod
    def _sweep_objects(fs: pafs.FileSystem, root: str, cutoff: float) -> int:
        """Object stores have no folder mtimes: a staged run is stale when its newest object is."""
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        except OSError:
            return 0
        newest: dict[str, float] = {}
        for info in infos:
            if info.type == pafs.FileType.File and info.mtime is not None:
                run = info.path[len(root) :].strip("/").split("/", 1)[0]
                newest[run] = max(newest.get(run, 0.0), info.mtime.timestamp())
        removed = 0
        for run, ts in newest.items():
            if ts < cutoff:
                fs.delete_dir(f"{root}/{run}")
                removed += 1
        return removed

    def _staged_reader(
        self,
        staged: Sequence[StagedShard],
        schema: pa.Schema,
        exclude: dict[str, list[str]],
        counter: list[int],
    ) -> pa.RecordBatchReader:
        """The staged rows as one stream for a commit, less ``exclude``; counts them in ``counter[0]``."""
        files = [s.uri for s in staged if s.rows]
        fs, _ = self._fs()

        def batches() -> Iterator[pa.RecordBatch]:
            for uri in files:
                path = objectstore.fs_path(uri)
                dataset = pads.dataset(path, format="ipc", filesystem=fs, schema=schema)
                drop = exclude.get(uri)
                flt = ~pc.field(C.DOC_ID).isin(drop) if drop else None
                for batch in dataset.to_batches(filter=flt, batch_size=8192):
                    counter[0] += batch.num_rows
                    yield batch

        return pa.RecordBatchReader.from_batches(schema, batches())
