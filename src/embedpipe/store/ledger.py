"""The ledger tables beside the chunks table: runs, rejects, checks and canary vectors.

Each is an append-only LanceDB table of the same database, created on first use and shared by
every chunks table there (rows name their table). Runs and rejects record what each run did;
check results gate publication and rollback; canary vectors detect a model that changed under
the same name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from embedpipe.schemas import (
    CANARY_TABLE,
    CHECKS_TABLE,
    REJECTS_TABLE,
    RUNS_TABLE,
    C,
    CheckResult,
    Reject,
    RunSummary,
    canary_schema,
    checks_schema,
    rejects_schema,
    runs_schema,
)
from embedpipe.store.connection import StoreBase
from embedpipe.store.filters import all_of, eq, isin


class LedgerMixin(StoreBase):
    """The runs, rejects, checks and canary tables (part of :class:`~embedpipe.store.Store`)."""

    # ------------------------------------------------------------------ runs and rejects

    def append_run(self, summary: RunSummary) -> None:
        """Append the run summary to the ``runs`` table (created on first use)."""
        row = summary.model_dump()
        for extra in ("rejects", "reused_chunk_texts", "checks", "gate", "served_version"):
            row.pop(extra)
        data = pa.Table.from_pylist([row], schema=runs_schema())
        self._append(RUNS_TABLE, data)

    def append_rejects(self, run_id: str, rejects: Sequence[Reject], at: Any) -> None:
        if not rejects:
            return
        data = pa.Table.from_pylist(
            [
                {C.RUN_ID: run_id, C.SOURCE: r.source, C.PATH: r.path, C.REASON: r.reason, C.AT: at}
                for r in rejects
            ],
            schema=rejects_schema(),
        )
        self._append(REJECTS_TABLE, data)

    def _append(self, name: str, data: pa.Table) -> None:
        table = self.open_table(name)
        try:
            if table is None:
                try:
                    self.db.create_table(name, data=data, schema=data.schema)
                    return
                except (ValueError, OSError) as e:  # created meanwhile by a concurrent run
                    if "exist" not in str(e).lower():
                        raise
                    table = self.db.open_table(name)
            table.add(data)
        except Exception as e:
            raise self._error(f"cannot append to table={name}", e) from e

    # ------------------------------------------------------------------ check records

    def append_checks(self, run_id: str, results: Sequence[CheckResult], at: Any) -> None:
        """Append check results to the ``checks`` table (created on first use)."""
        if not results:
            return
        rows = [
            {
                C.RUN_ID: run_id,
                C.TABLE: self.settings.table,
                "table_version": r.table_version,
                "check": r.check,
                "statistic": r.statistic,
                "threshold": r.threshold,
                "severity": r.severity,
                "status": r.status,
                C.AT: at,
                "reference_version": r.reference_version,
                "p_value": r.p_value,
                "effect": r.effect,
                "detail": r.detail,
            }
            for r in results
        ]
        self._append(CHECKS_TABLE, pa.Table.from_pylist(rows, schema=checks_schema()))

    def recorded_checks(self, version: int) -> dict[str, float]:
        """The latest recorded statistic of each check on ``version`` of this table (for comparisons)."""
        table = self.open_table(CHECKS_TABLE)
        if table is None:
            return {}
        rows = (
            table.search()
            .where(
                all_of(
                    [
                        eq(C.TABLE, self.settings.table),
                        eq("table_version", int(version)),
                        ~isin("status", ["error", "skipped"]),
                    ]
                )
            )
            .select(["check", "statistic", C.AT])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        out: dict[str, float] = {}
        for r in sorted(rows, key=lambda r: r[C.AT]):
            if r["statistic"] is not None:
                out[r["check"]] = float(r["statistic"])
        return out

    def failed_checks(self, version: int) -> list[str]:
        """Checks of severity ``fail`` that failed (or errored) on ``version`` of this table."""
        checks = self.open_table(CHECKS_TABLE)
        if checks is None:
            return []
        flt = all_of(
            [
                eq(C.TABLE, self.settings.table),
                eq("table_version", int(version)),
                eq("severity", "fail"),
                isin("status", ["fail", "error"]),
            ]
        )
        rows = checks.search().where(flt).select(["check"]).limit(None).to_list()
        return sorted({r["check"] for r in rows})

    # ------------------------------------------------------------------ canary vectors

    def append_canary(
        self, run_id: str, version: int | None, model_id: str, hashes: Sequence[str], vectors: Any, at: Any
    ) -> None:
        """Store the canary probe vectors embedded by a run."""
        rows = [
            {
                C.RUN_ID: run_id,
                C.TABLE: self.settings.table,
                "table_version": version,
                C.MODEL_ID: model_id,
                "probe": i,
                "probe_hash": h,
                C.VECTOR: [float(x) for x in v],
                C.AT: at,
            }
            for i, (h, v) in enumerate(zip(hashes, vectors, strict=True))
        ]
        self._append(CANARY_TABLE, pa.Table.from_pylist(rows, schema=canary_schema()))

    def canary_baseline(self, model_id: str, version: int | None) -> tuple[int | None, dict[str, Any]]:
        """Stored probe vectors of ``model_id``: those of ``version`` if any, else the oldest stored.

        Returns:
            (the version they were stored with, {probe_hash: vector}); empty when none are stored.
        """
        table = self.open_table(CANARY_TABLE)
        if table is None:
            return None, {}
        rows = (
            table.search()
            .where(eq(C.MODEL_ID, model_id) & eq(C.TABLE, self.settings.table))
            .select(["table_version", "probe_hash", C.VECTOR, C.AT])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        if not rows:
            return None, {}
        chosen = [r for r in rows if version is not None and r["table_version"] == version]
        if not chosen:
            first = min(rows, key=lambda r: r[C.AT])
            chosen = [r for r in rows if r["table_version"] == first["table_version"]]
        ver = chosen[0]["table_version"]
        return ver, {r["probe_hash"]: r[C.VECTOR] for r in chosen}
