"""Write, audit, publish: check a freshly written version, then serve it only if its gates pass.

The table's ``serving`` tag is what readers get. A version that passes is published; one that
fails is never served, and its run makes the served content the newest version again (a restore
commit), so the next run builds on checked content rather than on the rows that failed, while the
failed version stays in the history for inspection (``embedpipe check --version N``).
"""

from __future__ import annotations

from typing import Any

from embedpipe.checks.suite.run import families_to_run, verdict
from embedpipe.config import Settings
from embedpipe.errors import GateFailed
from embedpipe.flows._pipeline import opaque
from embedpipe.schemas import Audit
from embedpipe.store import Store
from embedpipe.tasks.checks import check_task, fall_back_task, publish_task, record_task, sample_task


def adopt_implicit_serving(store: Store, version: int) -> int | None:
    """The served version before ``version`` was written, making it explicit for older tables.

    A table written before checks existed (or with checks off) served its latest version without a
    tag; its first checked version must have that one to fall back to. Versions with the rows of
    ``version`` (its commit, before its index versions) were never served: they do not count.
    """
    served = store.serving_version()
    if served is not None or store.audited():
        return served
    earlier = store.last_other_version(version)
    if earlier is None:
        return None
    store.publish(earlier, expect_serving=None)
    return store.serving_version()


def audit_and_publish(
    settings: Settings,
    run_id: str,
    version: int,
    audit: Audit,
    baseline: str | None = None,
    publish: bool = True,
    writer: bool = True,
) -> Audit:
    """Run every check family on ``version`` as its own task, record the results, then publish.

    ``audit`` is filled in place, so a caller that catches :class:`GateFailed` still has the results.

    Args:
        settings: Settings.
        run_id: The run doing the checks.
        version: The version to check.
        audit: Filled with what was found.
        baseline: Compare with this tag or version instead of the served one.
        publish: Serve the version when its gates pass.
        writer: The caller just wrote ``version`` (sync, reindex): publish it only while it is the
            newest version, and on failure restore the served content as the newest version.
            ``False`` (on-demand checks) changes nothing but the tag, and only when asked.

    Raises:
        GateFailed: A check of severity ``fail`` failed or could not be measured; nothing was published.
    """
    store = Store(settings.store)
    served_before = adopt_implicit_serving(store, version) if writer else store.serving_version()
    if writer:
        # The run's index versions follow its commit: its tag names the last, the version audited.
        store.move_run_tag(run_id, version)
    if not settings.checks.enabled:
        audit.gate = "skipped"
        if publish:
            audit.served_version = publish_task(settings, version, served_before, writer)
        return audit
    ctx: Any = sample_task(settings, run_id, version, baseline)
    audit.reference_version = ctx.reference_version
    audit.reference = (
        f"version {ctx.reference_version} ({ctx.reference_how})"
        if ctx.reference_version is not None
        else ctx.reference_how
    )
    families = families_to_run(settings.checks)
    if settings.runtime.runner == "dask":
        # The flow's task runner is the Dask cluster: checks stay in the flow process, next to the
        # sample and the model already loaded here, rather than shipping the sample to workers.
        for f in families:
            audit.results += check_task(f, opaque(ctx), settings)
    else:
        # opaque: the sample's thousands of ids and texts are not walked on every submit
        futures = [check_task.submit(f, opaque(ctx), settings) for f in families]
        for fut in futures:
            audit.results += fut.result()
    ok, audit.blocking = verdict(audit.results)
    audit.gate = "passed" if ok else "failed"
    record_task(audit.results, settings, run_id, version, ok and publish, audit.blocking, audit.reference)
    if ok and publish:
        audit.served_version = publish_task(settings, version, served_before, writer)
        return audit
    restored = None
    if not ok and writer:
        restored = fall_back_task(settings, version, served_before)
    audit.served_version = store.serving_version()
    if ok:
        return audit
    if audit.served_version is None:
        served = "nothing is served yet" + (
            f"; the table was emptied as version {restored} so the next run starts clean" if restored else ""
        )
    elif restored is not None:
        served = (
            f"the table keeps serving the content of version {served_before}, restored as the newest "
            f"version {restored} so that the next run builds on it"
        )
    else:
        served = f"the table keeps serving version {audit.served_version}"
    failures = "; ".join(f"{r.check}: {r.detail}" for r in audit.results if r.check in audit.blocking)
    raise GateFailed(
        f"checks failed on table={settings.store.table} version {version}: {failures}. "
        f"Version {version} is not served; {served}. Inspect it with `embedpipe check --version {version}`; "
        "fix the cause and re-run, or relax the gate (checks.gates.<name>.severity=warn)"
        + (
            "; the re-run reuses this run's vectors from the vector cache"
            if writer and settings.store.cache.enabled
            else ""
        )
    )
