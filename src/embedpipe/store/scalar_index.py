"""Scalar indexes on the chunks table: the columns the runs filter by.

A run filters the chunks table by ``source`` and ``path`` (reading its state), by ``doc_id`` (the
stored rows of changed documents, the rows a commit replaces) and by ``chunk_hash`` (vectors to
reuse). Each gets a Lance scalar index, so those reads touch the matching rows instead of scanning
the table: a BITMAP for ``source`` (a handful of roots), a BTREE for the others (about one value per
file, document or chunk).

The writing runs create the indexes an existing table lacks right before their commit
(:meth:`~embedpipe.store.commit.CommitMixin.commit`), as one version of its own with exactly the rows
the run read. The run's commit, the one version it tags, checks and serves, then carries them; and
"the version before" a run's commit (what a failed gate falls back to, what the checks compare
with) still holds the previous content. It happens once the table has ``index.scalar_min_rows``
rows (a new table gets its indexes from the next run that writes to it), and again only after a
change that drops an index. An index commit changes no row, so it never makes a run's delta stale
(:func:`only_indexed_since`). Folding new rows into existing indexes (``optimize``) belongs to the
index lifecycle, not here: until then Lance answers a filter from the index for indexed rows and
scans only the rest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from embedpipe.schemas import C
from embedpipe.store.connection import StoreBase

if TYPE_CHECKING:
    from lancedb.table import Table

log = logging.getLogger(__name__)

SCALAR_INDEXES: dict[str, Literal["BTREE", "BITMAP"]] = {
    C.SOURCE: "BITMAP",
    C.PATH: "BTREE",
    C.DOC_ID: "BTREE",
    C.CHUNK_HASH: "BTREE",
}
"""The chunks table's scalar indexes: column and index type."""


class ScalarIndexMixin(StoreBase):
    """Creating the chunks table's missing scalar indexes (part of :class:`~embedpipe.store.Store`)."""

    @staticmethod
    def scalar_indexed_columns(table: Table) -> set[str]:
        """The columns of ``table`` that have a scalar index of their own."""
        return {
            cfg.columns[0]
            for cfg in table.list_indices()
            if len(cfg.columns) == 1 and cfg.columns[0] in SCALAR_INDEXES
        }

    def ensure_scalar_indexes(self, table: Table, min_rows: int = 1) -> list[str]:
        """Create the scalar indexes ``table`` lacks (:data:`SCALAR_INDEXES`), all in one commit.

        Nothing is done below ``min_rows`` rows (a scan is as fast), or when every index exists.
        Never raises: an index only makes filters faster, and a committed run must not fail for
        one; a failure is logged with its reason and the next writing run tries again.

        Args:
            table: The table at its newest version (not a pinned snapshot); left at the newest
                version afterwards.
            min_rows: Rows the table needs before indexes are worth their version.

        Returns:
            The columns an index was created for, in :data:`SCALAR_INDEXES` order.
        """
        created: list[str] = []
        try:
            if table.count_rows() < min_rows:
                return created
            have = self.scalar_indexed_columns(table)
            names = set(table.schema.names)
            missing = [c for c in SCALAR_INDEXES if c not in have and c in names]
            if missing:
                _build_in_one_commit(table, missing)
                created = missing
        except Exception as e:  # a slower filter, never a wrong one: the commit stands
            log.warning(
                "could not create the scalar indexes of table=%s: %s: %s",
                self.settings.table,
                type(e).__name__,
                e,
            )
        if created:
            log.info("stage=write table=%s scalar_indexes_created=%s", self.settings.table, created)
        return created


def _build_in_one_commit(table: Table, columns: list[str]) -> None:
    """Build an index segment per column over every fragment, then publish them as one version.

    Lance's ``create_index_uncommitted`` writes an index without publishing it; one ``CreateIndex``
    commit then adds them all, so creating four indexes costs the table one version, not four. The
    commit names the version it read, so a concurrent writer makes it fail rather than go stale.
    """
    import lance
    from lance import LanceOperation

    ds = table.to_lance()
    fragments = [f.fragment_id for f in ds.get_fragments()]
    new = [
        ds.create_index_uncommitted(c, SCALAR_INDEXES[c], name=f"{c}_idx", fragment_ids=fragments)
        for c in columns
    ]
    lance.LanceDataset.commit(
        ds, LanceOperation.CreateIndex(new_indices=new, removed_indices=[]), read_version=ds.version
    )
    table.checkout_latest()


def only_indexed_since(table: Table, read_version: int) -> bool:
    """Whether every version after ``read_version`` up to the head only created indexes.

    Such commits change no row, so changes computed against ``read_version`` still apply.
    """
    ds = table.to_lance()
    head = int(ds.version)
    if head <= read_version:
        return False
    try:
        for version in range(read_version + 1, head + 1):
            tx = ds.read_transaction(version)
            if tx is None or type(tx.operation).__name__ != "CreateIndex":
                return False
    except Exception as e:  # a version that cannot be read is treated as a change (refused)
        log.warning("cannot read the transaction of table=%s version=%s: %s", table.name, version, e)
        return False
    return True
