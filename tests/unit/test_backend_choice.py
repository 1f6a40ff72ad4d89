"""The rule that picks a backend from measured candidates (model.backend = "auto")."""

from __future__ import annotations

from embedpipe.config import ModelSettings, get_settings
from embedpipe.embedding.auto import (
    MIN_SPEEDUP,
    BackendChoice,
    Candidate,
    _pick,
    with_backend,
)

TORCH = Candidate("torch", "fp32", 10.0, 1.0, 1.0, 1.0, True)


def cand(backend: str, speed: float, mean: float = 0.99999, passed: bool = True) -> Candidate:
    return Candidate(backend, "fp32", speed, speed / 10.0, mean, mean, passed)


def test_the_fastest_passing_backend_wins() -> None:
    assert _pick([TORCH, cand("onnx", 14.0), cand("openvino", 30.0)]).backend == "openvino"


def test_a_backend_failing_the_guard_is_never_chosen_however_fast() -> None:
    assert _pick([TORCH, cand("onnx-int8", 40.0, 0.993, passed=False), cand("onnx", 14.0)]).backend == "onnx"


def test_torch_stays_unless_another_is_clearly_faster() -> None:
    assert _pick([TORCH, cand("onnx", 10.0 * MIN_SPEEDUP - 0.1)]).backend == "torch"
    assert _pick([TORCH]).backend == "torch"
    assert _pick([TORCH, Candidate("openvino", note="not usable: RuntimeError")]).backend == "torch"


def test_near_ties_go_to_the_most_faithful() -> None:
    # within 5% of the fastest: the higher cosine to torch wins
    assert _pick([TORCH, cand("onnx", 20.0, 1.0), cand("openvino", 20.5, 0.99998)]).backend == "onnx"
    assert _pick([TORCH, cand("onnx", 15.0, 1.0), cand("openvino", 20.5, 0.99998)]).backend == "openvino"


def test_choice_round_trips_and_only_measured_decisions_go_into_a_table() -> None:
    c = BackendChoice("openvino", "r", (TORCH, cand("openvino", 30.0)), {"mean_cosine": 0.999}, 18, 1.0, True)
    assert BackendChoice.from_dict(c.as_dict()) == c
    assert set(c.table_metadata()) == {"embedpipe.model.backend_choice"}
    assert BackendChoice("torch", "kept: ...").table_metadata() == {}


def test_with_backend_sets_only_the_backend() -> None:
    s = get_settings({"model": {"name": "fake:8", "batch_size": 7}})
    assert s.model.backend == "auto"
    t = with_backend(s, BackendChoice("onnx", "r"))
    assert t.model.backend == "onnx" and t.model.batch_size == 7 and s.model.backend == "auto"
    assert with_backend(s, None) is s
    assert ModelSettings().backend == "auto"
