"""The check flow: run the drift and quality checks on demand, and publish a version that passes.

Scheduled runs of this flow catch what changes outside the data: a library upgrade or new hardware
that moves the vectors of the same model (the canary), an index whose recall decayed, a golden set
that no longer retrieves what it should.
"""

from __future__ import annotations

from contextlib import nullcontext

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from embedpipe.config import Settings, get_settings
from embedpipe.errors import GateFailed
from embedpipe.flows._audit import audit_and_publish
from embedpipe.flows._lock import table_lock
from embedpipe.flows._pipeline import run_id
from embedpipe.schemas import Audit, CheckReport
from embedpipe.store import Store


@flow(name="check", persist_result=False, log_prints=False, validate_parameters=True)
def check(
    settings: Settings | None = None,
    version: str = "latest",
    baseline: str | None = None,
    publish: bool = False,
) -> State[CheckReport] | CheckReport:
    """Check one version of the table against its reference.

    Args:
        settings: Settings; loaded from the environment and ``embedpipe.toml`` when omitted.
        version: ``latest``, ``serving``, a version number or a tag.
        baseline: Compare with this tag or version instead of the served one.
        publish: Serve the version when its gates pass.

    Returns:
        The report; a ``Failed`` state carrying it when a gate failed.
    """
    settings = settings or get_settings()
    logger = get_run_logger()
    rid = run_id()
    store = Store(settings.store)
    audit = Audit()
    # On demand the checks always run (checks.enabled only governs runs that write).
    on = settings.model_copy(update={"checks": settings.checks.model_copy(update={"enabled": True})})
    message = None
    # Publishing writes (the tag, maybe a restore commit): it takes the table's run lock, and
    # resolves ``latest`` only once it holds it.
    with table_lock(settings.store, rid, "check", logger) if publish else nullcontext():
        number = store.resolve_version(version, store.require_table())
        try:
            audit_and_publish(on, rid, number, audit, baseline=baseline, publish=publish, writer=False)
        except GateFailed as e:
            message = str(e)
    report = CheckReport(
        run_id=rid,
        table=settings.store.table,
        version=number,
        reference_version=audit.reference_version,
        reference=audit.reference,
        gate=audit.gate or "skipped",
        blocking=audit.blocking,
        served_version=store.serving_version(),
        published=publish and audit.gate == "passed",
        checks=audit.results,
        message=message,
    )
    if message:
        logger.warning("check failed: %s", message)
        return Failed(message=message, data=report)
    return Completed(message=f"version {number}: {report.gate}", data=report)
