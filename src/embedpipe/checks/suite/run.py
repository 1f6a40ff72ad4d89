"""One family of checks measured and gated into results, the families to run, and the verdict."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from embedpipe.checks import registry
from embedpipe.checks.stats import Stat
from embedpipe.checks.suite.context import AuditContext, Skip
from embedpipe.config import ChecksSettings
from embedpipe.errors import EmbedpipeError
from embedpipe.schemas import CheckResult
from embedpipe.store import Store

log = logging.getLogger(__name__)


def at_least(
    name: str, value: float, checks: ChecksSettings, detail: str, effect: float | None = None
) -> Stat:
    """``value`` against the configured threshold of check ``name``: fires when it is below it."""
    _, threshold, _ = checks.gate(name)
    return Stat(statistic=value, threshold=threshold, fired=value < threshold, effect=effect, detail=detail)


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_family(family: str, ctx: AuditContext, checks: ChecksSettings, store: Store) -> list[CheckResult]:
    """Measure one family of checks and apply their gates. Never raises for a check's own failure."""
    names, fn = registry.FAMILY[family].names, registry.FAMILY[family].measure()
    gates = {n: checks.gate(n) for n in names}
    common = {"table_version": ctx.version, "reference_version": ctx.reference_version}
    active = [n for n in names if gates[n][0] != "off"]
    off = [
        CheckResult(check=n, status="skipped", severity="off", detail="turned off (severity off)", **common)
        for n in names
        if n not in active
    ]
    if not active:
        return off
    try:
        stats = fn(family, ctx, checks, store)
    except Skip as e:
        return off + [
            CheckResult(check=n, status="skipped", severity=gates[n][0], detail=str(e), **common)
            for n in active
        ]
    except Exception as e:  # a check that cannot be measured must not pass silently: it is an error
        msg = str(e) if isinstance(e, EmbedpipeError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, EmbedpipeError):
            log.warning("check family=%s could not be measured: %s", family, msg, exc_info=True)
        return off + [
            CheckResult(check=n, status="error", severity=gates[n][0], detail=msg, **common) for n in active
        ]
    out = list(off)
    for n in active:
        severity = gates[n][0]
        st = stats.get(n)
        if st is None:
            out.append(
                CheckResult(
                    check=n, status="skipped", severity=severity, detail="no reference version", **common
                )
            )
            continue
        out.append(
            CheckResult(
                check=n,
                status=severity if st.fired else "pass",
                severity=severity,
                statistic=_num(st.statistic),
                threshold=_num(st.threshold),
                p_value=_num(st.p_value),
                effect=_num(st.effect),
                detail=st.detail,
                **common,
            )
        )
    return out


def families_to_run(checks: ChecksSettings) -> list[str]:
    """Families with at least one check not turned off."""
    return [f.name for f in registry.FAMILIES if any(checks.gate(n)[0] != "off" for n in f.names)]


def verdict(results: Sequence[CheckResult]) -> tuple[bool, list[str]]:
    """Whether the version may be served, and the checks that block it."""
    blocking = [r.check for r in results if r.blocks]
    return not blocking, blocking
