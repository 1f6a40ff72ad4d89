"""Check tasks: sample a version and its reference, measure each check family, record, publish."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from embedpipe.checks.suite.context import AuditContext, load_context
from embedpipe.checks.suite.run import run_family
from embedpipe.config import Settings
from embedpipe.schemas import CheckResult
from embedpipe.store import Store
from embedpipe.tasks._common import RETRYING, TASK_DEFAULTS


@task(name="audit-sample", **RETRYING)
def sample_task(settings: Settings, run_id: str, version: int, baseline: str | None = None) -> AuditContext:
    """Draw the fixed-seed samples of ``version`` and its reference version."""
    ctx = load_context(
        Store(settings.store),
        settings.checks,
        settings.model,
        run_id,
        version,
        baseline,
        search_mode=settings.index.search_mode,
    )
    get_run_logger().info(
        "stage=audit-sample version=%d rows=%d sample=%d reference=%s (%s)",
        version,
        ctx.new.rows,
        len(ctx.new.chunk_ids),
        ctx.reference_version,
        ctx.reference_how,
    )
    return ctx


@task(name="check", task_run_name="check-{family}", **TASK_DEFAULTS)
def check_task(family: str, ctx: AuditContext, settings: Settings) -> list[CheckResult]:
    """Measure one family of checks on the sampled version (see :mod:`embedpipe.checks.suite.run`)."""
    results = run_family(family, ctx, settings.checks, Store(settings.store))
    logger = get_run_logger()
    for r in results:
        logger.info(
            "stage=check check=%s status=%s statistic=%s threshold=%s",
            r.check,
            r.status,
            r.statistic,
            r.threshold,
        )
    return results


def checks_table(results: list[CheckResult]) -> list[dict[str, object]]:
    """Rows of the Prefect table artifact."""
    return [
        {
            "check": r.check,
            "status": r.status,
            "severity": r.severity,
            "statistic": None if r.statistic is None else round(r.statistic, 6),
            "threshold": None if r.threshold is None else round(r.threshold, 6),
            "p_value": None if r.p_value is None else float(f"{r.p_value:.3g}"),
            "detail": r.detail,
        }
        for r in results
    ]


def checks_markdown(
    version: int, served: bool, blocking: list[str], results: list[CheckResult], ref: str
) -> str:
    """A short markdown verdict of a version's checks."""
    fired = [r for r in results if r.status in {"warn", "fail", "error"}]
    if served:
        head = f"### version {version}: checks **passed**, **served**"
    elif blocking:
        head = f"### version {version}: **not served**, blocked by {', '.join(f'`{b}`' for b in blocking)}"
    else:
        head = f"### version {version}: checks **passed** (not published by this check)"
    lines = [head, f"Compared with {ref}.", ""]
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "warn", "fail", "error", "skipped")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for r in fired:
        detail = r.detail.replace("`", "'")
        lines.append(f"- `{r.check}` **{r.status}**: {detail}")
    return "\n".join(lines)


@task(name="record-checks", **RETRYING)
def record_task(
    results: list[CheckResult],
    settings: Settings,
    run_id: str,
    version: int,
    served: bool,
    blocking: list[str],
    ref: str,
) -> None:
    """Append the results to the ``checks`` table and publish the Prefect artifacts."""
    Store(settings.store).append_checks(run_id, results, datetime.now(UTC))
    try:
        create_table_artifact(
            checks_table(results), key="embedpipe-checks", description=f"Checks of version {version}"
        )
        create_markdown_artifact(
            checks_markdown(version, served, blocking, results, ref),
            key="embedpipe-checks-verdict",
            description="Publish gate verdict",
        )
    except Exception as e:  # the record is written; the UI view is a nicety
        get_run_logger().warning("could not publish check artifacts: %s: %s", type(e).__name__, e)


@task(name="publish", **RETRYING)
def publish_task(settings: Settings, version: int, served_before: int | None, writer: bool) -> int | None:
    """Serve ``version``: move the table's ``serving`` tag to it (see :func:`publish_version`)."""
    served = publish_version(Store(settings.store), version, served_before, writer)
    get_run_logger().info("stage=publish table=%s serving=%s", settings.store.table, served)
    return served


def publish_version(store: Store, version: int, served_before: int | None, writer: bool) -> int | None:
    """Serve ``version`` and return what is served afterwards.

    The served content is always the newest version, so that the next run builds on it: a run
    publishes its own version only while it is the newest (a later commit's run publishes that
    one); an operator publishing an older version (``embedpipe check --version N --publish``)
    makes it the newest version first, with a restore commit.
    """
    head = int(store.require_table().version)
    if head != version:
        if writer:
            return store.serving_version()
        version = store.make_head(version, reason="publish")
    store.publish(version, expect_serving=served_before)
    return store.serving_version()


@task(name="fall-back", **RETRYING)
def fall_back_task(settings: Settings, version: int, served: int | None) -> int | None:
    """After ``version`` failed its checks, make the served content the newest version again.

    Returns the restore commit's version (``None`` when ``version`` is no longer the newest: a
    later run committed on top of it and its own audit decides).
    """
    store = Store(settings.store)
    if int(store.require_table().version) != version:
        return None
    head = store.make_head(served)
    if served is not None:
        store.publish(head, expect_serving=served)
    get_run_logger().warning(
        "stage=fall-back table=%s failed_version=%d restored=%s as version %d",
        settings.store.table,
        version,
        served if served is not None else "empty",
        head,
    )
    return head
