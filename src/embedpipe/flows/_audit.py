"""Write, audit, publish: check a freshly written version, then serve it only if its gates pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embedpipe.checks.suite import families_to_run, verdict
from embedpipe.config import Settings
from embedpipe.errors import GateFailed
from embedpipe.resources.store import Store
from embedpipe.schemas import CheckResult
from embedpipe.tasks.checks import check_task, publish_task, record_task, sample_task


@dataclass
class Audit:
    """What the audit of one version found and did."""

    results: list[CheckResult] = field(default_factory=list)
    gate: str | None = None
    served_version: int | None = None
    blocking: list[str] = field(default_factory=list)


def audit_and_publish(
    settings: Settings,
    run_id: str,
    version: int,
    audit: Audit,
    written_by: str | None = None,
    baseline: str | None = None,
    publish: bool = True,
) -> Audit:
    """Run every check family on ``version`` as its own task, record the results, then publish.

    ``audit`` is filled in place, so a caller that catches :class:`GateFailed` still has the results.

    Raises:
        GateFailed: A check of severity ``fail`` failed or could not be measured; nothing was published.
    """
    store = Store(settings.store)
    if not settings.checks.enabled:
        audit.gate = "skipped"
        if publish:
            audit.served_version = publish_task(settings, version)
        return audit
    ctx: Any = sample_task(settings, run_id, version, written_by, baseline)
    futures = [check_task.submit(f, ctx, settings) for f in families_to_run(settings.checks)]
    for f in futures:
        audit.results += f.result()
    ok, audit.blocking = verdict(audit.results)
    audit.gate = "passed" if ok else "failed"
    ref = (
        f"version {ctx.reference_version} ({ctx.reference_how})"
        if ctx.reference_version is not None
        else ctx.reference_how
    )
    record_task(audit.results, settings, run_id, version, ok and publish, audit.blocking, ref)
    if ok and publish:
        audit.served_version = publish_task(settings, version)
    else:
        audit.served_version = store.serving_version()
    if not ok:
        served = (
            "nothing is served yet"
            if audit.served_version is None
            else (f"the table keeps serving version {audit.served_version}")
        )
        raise GateFailed(
            f"checks failed on table={settings.store.table} version {version}: "
            + "; ".join(f"{r.check}: {r.detail}" for r in audit.results if r.check in audit.blocking)
            + f". Version {version} is not served; {served}. See `embedpipe check --json`, fix the cause "
            "and re-run, or relax the gate (checks.gates.<name>.severity=warn)"
        )
    return audit
