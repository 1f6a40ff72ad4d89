"""The check registry: the one place a check's name, family, default gate and function are declared."""

from __future__ import annotations

import subprocess
import sys

import pytest

from embedpipe.checks import registry
from embedpipe.checks.drift.calibration import DRIFT_CHECKS
from embedpipe.checks.suite.run import families_to_run
from embedpipe.config import get_settings
from embedpipe.errors import ConfigError

# The default gates as they were before the registry (config.settings.CHECK_GATES): stored check
# results and users' settings depend on them, so they are pinned here literally.
DEFAULT_GATES = {
    "integrity": ("fail", 0.0, None),
    "canary": ("fail", 0.9999, None),
    "centroid_shift": ("warn", 1.5, None),
    "domain_auc": ("warn", 0.6, None),
    "mmd": ("warn", 0.001, None),
    "drifted_components": ("warn", 0.25, None),
    "anisotropy": ("warn", 0.1, None),
    "effective_rank": ("fail", 0.5, None),
    "duplicate_vectors": ("fail", 0.01, None),
    "token_length_psi": ("warn", 0.25, None),
    "truncation_rate": ("warn", 0.01, None),
    "language_mix": ("warn", 0.1, None),
    "golden_recall": ("fail", 0.0, 0.05),
    "golden_mrr": ("fail", 0.0, 0.05),
    "golden_ndcg": ("fail", 0.0, 0.05),
    "triplets": ("fail", 0.9, 0.02),
    "pairs_spearman": ("fail", 0.7, 0.02),
    "neighbour_stability": ("fail", 0.9, None),
    "index_recall": ("fail", 0.95, None),  # issue 15: a fail gate at index.min_recall
}


def test_default_gates_are_unchanged_and_read_by_settings() -> None:
    assert {name: c.gate for name, c in registry.CHECKS.items()} == DEFAULT_GATES
    checks = get_settings().checks
    assert {name: checks.gate(name) for name in DEFAULT_GATES} == DEFAULT_GATES


def test_families_run_in_the_suite_order_and_every_function_resolves() -> None:
    assert [f.name for f in registry.FAMILIES] == [
        "integrity", "canary", "centroid_shift", "domain_auc", "mmd", "drifted_components",
        "anisotropy", "effective_rank", "duplicate_vectors", "truncation_rate", "token_length_psi",
        "language_mix", "golden", "triplets", "pairs", "neighbours", "index",
    ]  # fmt: skip
    assert registry.FAMILY["golden"].names == ("golden_recall", "golden_mrr", "golden_ndcg")
    for family in registry.FAMILIES:
        module, _, name = family.function.partition(":")
        assert module.startswith("embedpipe.checks.suite.")
        fn = family.measure()
        assert callable(fn) and (fn.__module__, fn.__name__) == (module, name)
        assert all(c.family == family.name for c in family.checks)
    assert families_to_run(get_settings().checks) == [f.name for f in registry.FAMILIES]


def test_drift_checks_are_the_registry_comparisons() -> None:
    assert list(DRIFT_CHECKS) == [c.name for c in registry.COMPARISONS]
    assert "truncation_rate" not in DRIFT_CHECKS  # absolute, not a comparison
    for c in registry.COMPARISONS:
        fn = c.statistic_fn()
        assert DRIFT_CHECKS[c.name] is fn and fn.__name__ == c.name
        assert fn.__module__.startswith("embedpipe.checks.drift.")
    with pytest.raises(ValueError, match="check=canary has no comparison statistic"):
        registry.CHECKS["canary"].statistic_fn()


def test_turning_a_family_off_by_its_checks_and_unknown_names() -> None:
    off = {name: {"severity": "off"} for name in registry.FAMILY["golden"].names}
    assert "golden" not in families_to_run(get_settings({"checks": {"gates": off}}).checks)
    with pytest.raises(ConfigError, match=r"unknown check\(s\) \['golden'\]"):
        get_settings({"checks": {"gates": {"golden": {"severity": "off"}}}})  # a family, not a check


def test_registry_and_settings_import_without_numpy() -> None:
    code = (
        "import sys, embedpipe.config, embedpipe.checks.registry; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'pyarrow', 'lancedb', 'scipy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
