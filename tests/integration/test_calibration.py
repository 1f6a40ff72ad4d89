"""Calibration of the drift checks on real embeddings (the bundled model, the sample corpus).

False alarms at most 1% per check over 100 random half/half splits of one corpus, and firing on a
real topic shift and on a model swap. The work is ``benchmarks/calibration.py``; this asserts it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def calibration() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(
        "benchmark_calibration", ROOT / "benchmarks" / "calibration.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.run(seeds=100)


def test_false_alarm_rate_is_at_most_one_percent_per_check(calibration: dict[str, Any]) -> None:
    rates = calibration["false_alarm"]
    assert calibration["n"] > 500 and calibration["seeds"] == 100
    assert set(rates) == {
        *("centroid_shift", "domain_auc", "mmd", "drifted_components", "anisotropy"),
        *("effective_rank", "duplicate_vectors", "token_length_psi", "language_mix"),
    }
    assert all(rate <= 0.01 for rate in rates.values()), rates


def test_distribution_checks_fire_on_a_topic_shift_and_a_model_swap(calibration: dict[str, Any]) -> None:
    for shift in ("topic_shift", "model_swap"):
        results = calibration[shift]
        for name in ("centroid_shift", "domain_auc", "mmd"):
            assert results[name].fired, (shift, name, results[name])
            assert results[name].p_value < 0.001
    assert calibration["model_swap"]["drifted_components"].fired
    # the same texts through changed pooling: the canary sees it at once
    assert calibration["canary_median_after_swap"] < 0.9999
