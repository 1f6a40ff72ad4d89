"""A table's history: listing versions, rolling back, compaction and removing old versions.

Every commit makes a version; tags name some of them (the run that made it, ``serving``, an
operator's baseline). Retention removes what the policy no longer keeps, never a version a
non-run tag protects; rollback makes a past version the newest again and serves it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from embedpipe.errors import GateFailed, VersionNotFoundError
from embedpipe.schemas import LEDGER_TABLES, VECTOR_CACHE_TABLE
from embedpipe.store.commit import CommitMixin
from embedpipe.store.ledger import LedgerMixin
from embedpipe.store.reader import RUN_ID_TAG, version_rows

if TYPE_CHECKING:
    from lance import LanceDataset


def _aware(ts: Any) -> Any:
    from datetime import UTC

    return ts if getattr(ts, "tzinfo", None) else ts.replace(tzinfo=UTC)


class RetentionMixin(CommitMixin, LedgerMixin):
    """Versions, rollback and retention (part of :class:`~embedpipe.store.Store`)."""

    def _local_dataset(self, name: str | None = None) -> LanceDataset:
        """The table of a local database as a Lance dataset, opened without ``lancedb``.

        Listing versions and tags needs only the dataset's manifests, and ``lance`` alone imports
        in a fraction of ``lancedb``'s time. An object store goes through ``lancedb`` (its errors
        are explained there).

        Raises:
            TableNotFoundError: The database or the table does not exist.
        """
        import lance

        name = name or self.settings.table
        folder = self._local_folder()
        assert folder is not None
        path = os.path.join(folder, f"{name}.lance")
        if not os.path.isdir(path):
            self.require_table(name)  # the database's own answer (and message) for a missing table
        try:
            return lance.dataset(path)
        except Exception as e:
            raise self._error(f"cannot open table={name} at uri={self.uri}", e) from e

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        """Versions of the table with their tags and the run that created each."""
        if self._local_folder() is None:
            table = self.require_table(name)
            return version_rows(table.tags.list(), table.list_versions())
        dataset = self._local_dataset(name)
        return version_rows(dataset.tags.list(), dataset.versions())

    def rollback(self, target: str, name: str | None = None, force: bool = False) -> dict[str, Any]:
        """Make a past version (number or tag) the latest again, as a new version, and serve it.

        A version that failed a check of severity ``fail`` is refused unless ``force`` is set.

        Raises:
            VersionNotFoundError: No such version or tag.
            GateFailed: The target failed its checks (and ``force`` is not set).
        """
        table = self.require_table(name)
        tags = table.tags.list()
        if target in tags:
            version = int(tags[target]["version"])
        elif target.isdigit():
            version = int(target)
            if version not in {int(v["version"]) for v in table.list_versions()}:
                raise VersionNotFoundError(
                    f"version={version} not found in table={table.name}; see `embedpipe versions`"
                )
        else:
            raise VersionNotFoundError(
                f"no version or tag named {target!r} in table={table.name}; see `embedpipe versions`"
            )
        failed = self.failed_checks(version)
        if failed and not force:
            raise GateFailed(
                f"version={version} of table={table.name} failed its checks ({', '.join(failed)}); "
                "rolling back to it would serve it. Pass --force to do it anyway"
            )
        previous = int(table.version)
        self.cache.keep_replaced(table, version, "rollback")
        table.restore(version)
        # An operator's rollback is a decision to serve that content again: the restored copy is
        # published at once (the version it copies was served or inspected before).
        self.publish(int(table.version))
        return {
            "table": table.name,
            "restored": version,
            "previous_version": previous,
            "version": int(table.version),
        }

    # ------------------------------------------------------------------ retention

    def apply_retention(
        self, keep_versions: int, max_age_hours: float, compact: bool = False
    ) -> dict[str, Any]:
        """Remove old versions of the chunks, runs, rejects, checks, canary and vector cache tables.

        A version is removed only when it is older than ``max_age_hours`` and not among the last
        ``keep_versions``. Tags other than run-id tags (for example a served or baseline tag) always
        protect their version. Run-id tags of versions past the policy are dropped first (the run
        and its version stay recorded in the ``runs`` table). With ``compact``, small data files of
        the chunks table are merged first (that makes one new version). The vector cache is first
        trimmed to ``store.cache`` (age and size), and compacted with ``compact``.

        Returns:
            Per table: versions before and after, bytes removed, run tags dropped, compaction.
        """
        from datetime import UTC, datetime, timedelta

        report: dict[str, Any] = {}
        age = timedelta(hours=max_age_hours)
        cutoff = datetime.now(UTC) - age
        trimmed = self.cache.trim()
        for name in (self.settings.table, *LEDGER_TABLES):
            table = self.open_table(name)
            if table is None:
                continue
            entry: dict[str, Any] = {"versions_before": len(table.list_versions())}
            if name == VECTOR_CACHE_TABLE:
                entry.update(trimmed)
                if compact:
                    entry["compacted"] = str(table.compact_files())
            if compact and name == self.settings.table:
                served, before = self.serving_version(table), int(table.version)
                stats = table.compact_files()
                entry["compacted"] = str(stats)
                # Compaction rewrites files, not content: a served latest version stays served as
                # its compacted copy (and the old files can go). It commits up to two versions; any
                # other commit meanwhile (a row count that moved, more versions) keeps the tag put.
                table = self.require_table(name)
                rows = {
                    int(v["version"]): (v.get("metadata") or {}).get("total_rows")
                    for v in table.list_versions()
                }
                after = int(table.version)
                same = all(rows.get(v) == rows.get(before) for v in range(before + 1, after + 1))
                if served is not None and served == before and 0 < after - before <= 2 and same:
                    self.publish(after, expect_serving=served)
            versions = sorted(table.list_versions(), key=lambda v: int(v["version"]))
            keep = {int(v["version"]) for v in versions[-keep_versions:]}
            dropped = []
            for tag, info in table.tags.list().items():
                v = int(info["version"])
                ts = next((x["timestamp"] for x in versions if int(x["version"]) == v), None)
                if RUN_ID_TAG.match(tag) and v not in keep and ts is not None and _aware(ts) < cutoff:
                    table.tags.delete(tag)
                    dropped.append(tag)
            try:
                stats = table.to_lance().cleanup_old_versions(
                    older_than=age, retain_versions=keep_versions, error_if_tagged_old_versions=False
                )
            except Exception as e:
                raise self._error(f"cleanup of table={name} failed", e) from e
            entry.update(
                versions_after=len(table.list_versions()),
                bytes_removed=int(getattr(stats, "bytes_removed", 0)),
                run_tags_dropped=len(dropped),
            )
            report[name] = entry
        return report
