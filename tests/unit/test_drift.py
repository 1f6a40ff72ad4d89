"""Drift statistics: silent on random halves of one set, firing on real shifts, calibrated, robust."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

from embedpipe.checks import drift
from embedpipe.checks.stats import Stat

D = 384
N_TOPICS = 16

# ---------------------------------------------------------------------------------------------------
# Synthetic but realistic sentence embeddings: 16 anisotropic topic clusters (low-rank-plus-noise
# covariances) around a common direction, plus shared global factors with a decaying spectrum; rows
# L2-normalised float32. Tuned to match all-MiniLM-L6-v2 embeddings of 3,000 Python docstrings:
# mean cosine ~0.09 (real 0.10), within-topic cosine ~0.3, effective rank ~135 of 384 (real 137),
# top-32 principal components hold ~51% of the variance (real 53%).
# ---------------------------------------------------------------------------------------------------


def make_space(seed: int = 123, d: int = D, rank: int = 16, factors: int = 48) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)
    common *= 0.7 / np.linalg.norm(common)
    means = rng.normal(size=(N_TOPICS, d))
    means *= 1.2 / np.linalg.norm(means, axis=1, keepdims=True)
    bases = rng.normal(size=(N_TOPICS, d, rank)) * 0.4 / np.sqrt(rank)
    bases *= np.linspace(1.5, 0.3, rank) / np.sqrt(rank)  # low rank, decaying spectrum per topic
    shared = np.linalg.qr(rng.normal(size=(d, factors)))[0] * (0.6 / np.arange(1, factors + 1) ** 0.8)
    return {"common": common, "means": means, "bases": bases, "shared": shared, "noise": 0.35 / np.sqrt(d)}


def sample(space: dict[str, Any], n: int, weights: Any = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.ones(N_TOPICS) if weights is None else np.asarray(weights, dtype=float)
    z = rng.choice(N_TOPICS, size=n, p=w / w.sum())
    u = rng.normal(size=(n, space["bases"].shape[2]))
    x = space["common"] + space["means"][z] + np.einsum("ndr,nr->nd", space["bases"][z], u)
    x += rng.normal(size=(n, space["shared"].shape[1])) @ space["shared"].T
    x += space["noise"] * rng.normal(size=x.shape)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


TOPIC_SHIFT = [4, 4, 4, 4] + [1] * 8 + [0] * 4  # four topics 4x as frequent, four dropped


def rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture(scope="module")
def space() -> dict[str, Any]:
    return make_space()


@pytest.fixture(scope="module")
def halves(space: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    full = sample(space, 2000, seed=1)
    order = np.random.default_rng(7).permutation(len(full))
    return full[order[:1000]], full[order[1000:]]


@pytest.fixture(scope="module")
def shifts(space: dict[str, Any], halves: tuple[np.ndarray, np.ndarray]) -> dict[str, tuple[np.ndarray, ...]]:
    a, b = halves
    return {
        # topic shift: a different mix of the same topics
        "topic": (a, sample(space, 1000, TOPIC_SHIFT, seed=2)),
        # model swap: the same points seen through a random rotation of the space
        "rotation": (a, (b @ rotation(D, 3).T).astype(np.float32)),
        # model swap: vectors from a different generator altogether
        "other_model": (a, sample(make_space(seed=999), 1000, seed=4)),
    }


VECTOR_CHECKS = ["centroid_shift", "domain_auc", "mmd", "drifted_components", "anisotropy", "effective_rank"]
SHIFT_CHECKS = ["centroid_shift", "domain_auc", "mmd", "drifted_components"]


def run(name: str, ref: np.ndarray, new: np.ndarray, **kw: Any) -> Stat:
    return drift.DRIFT_CHECKS[name](ref, new, **kw)


# ---------------------------------------------------------------------------------------------------
# vector checks: silent on halves, firing on shifts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VECTOR_CHECKS)
def test_silent_on_random_halves(name: str, halves: tuple[np.ndarray, np.ndarray]) -> None:
    s = run(name, *halves)
    assert isinstance(s, Stat)
    assert not s.fired, s.detail
    assert math.isfinite(s.statistic)
    if s.p_value is not None:
        assert 0.0 < s.p_value <= 1.0


@pytest.mark.parametrize("shift", ["topic", "rotation", "other_model"])
@pytest.mark.parametrize("name", SHIFT_CHECKS)
def test_fires_on_shift(name: str, shift: str, shifts: dict[str, tuple[np.ndarray, ...]]) -> None:
    ref, new = shifts[shift]
    s = run(name, ref, new)
    assert s.fired, s.detail
    if s.p_value is not None:
        assert s.p_value < 0.001


def test_centroid_shift_reads_one_without_change(space: dict[str, Any]) -> None:
    full = sample(space, 1200, seed=11)
    ratios = []
    for seed in range(30):
        order = np.random.default_rng(seed).permutation(len(full))
        s = drift.centroid_shift(full[order[:600]], full[order[600:]])
        ratios.append(s.statistic)
        assert s.threshold >= 1.5
    assert 0.85 < float(np.mean(ratios)) < 1.15
    rotated = drift.centroid_shift(full[:600], full[600:] @ rotation(D, 5).T.astype(np.float32))
    assert rotated.statistic > 20 and rotated.effect is not None and rotated.effect > 0.3


def test_centroid_shift_needs_a_practically_large_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20_000, 16)).astype(np.float32)
    new = rng.normal(size=(20_000, 16)).astype(np.float32)
    new[:, 0] += 0.1  # highly significant at this n, but 2.5% of the spread
    s = drift.centroid_shift(ref, new)
    assert s.p_value is not None and s.p_value < 1e-6 and s.statistic > s.threshold
    assert not s.fired
    assert drift.centroid_shift(ref, new, min_std_shift=0.0).fired
    new[:, 0] += 0.5
    assert drift.centroid_shift(ref, new).fired


def test_domain_auc_values(shifts: dict[str, tuple[np.ndarray, ...]], halves: tuple[np.ndarray, ...]) -> None:
    quiet = drift.domain_auc(*halves)
    assert abs(quiet.statistic - 0.5) < 0.05 and quiet.effect == pytest.approx(quiet.statistic - 0.5)
    swap = drift.domain_auc(*shifts["rotation"])
    assert swap.statistic > 0.95
    # deterministic for a seed, subsample bounded by max_per_side
    again = drift.domain_auc(*shifts["topic"], max_per_side=300, seed=3)
    assert again == drift.domain_auc(*shifts["topic"], max_per_side=300, seed=3)
    assert "n=300+300" in again.detail


def test_mmd_permutation_p_value_and_effect_gate(shifts: dict[str, tuple[np.ndarray, ...]]) -> None:
    ref, new = shifts["rotation"]
    s = drift.mmd(ref, new, permutations=200, max_per_side=300)
    assert s.p_value == pytest.approx(1 / 201)
    assert s.statistic > 0.03
    # significant but below the practical minimum: does not fire
    high = drift.mmd(ref, new, permutations=200, max_per_side=300, alpha=0.01, min_effect=1.0)
    assert high.p_value is not None and high.p_value < 0.01 and not high.fired


def test_drifted_components_counts_components(
    shifts: dict[str, tuple[np.ndarray, ...]], halves: tuple[np.ndarray, ...]
) -> None:
    s = drift.drifted_components(*shifts["topic"])
    assert s.statistic > 0.35 and s.p_value is not None and s.p_value < 1e-10
    quiet = drift.drifted_components(*halves)
    assert quiet.statistic <= 3 / 32
    low_rank = np.random.default_rng(0).normal(size=(200, 3)) @ np.random.default_rng(1).normal(size=(3, 50))
    few = drift.drifted_components(low_rank[:100], low_rank[100:])
    assert "/3 components" in few.detail  # capped at the rank


def test_anisotropy_common_direction(halves: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = halves
    direction = np.random.default_rng(5).normal(size=D)
    direction /= np.linalg.norm(direction)
    bent = b + 0.6 * direction
    bent = (bent / np.linalg.norm(bent, axis=1, keepdims=True)).astype(np.float32)
    s = drift.anisotropy(a, bent)
    assert s.fired and s.effect is not None and s.effect > 0.1
    # rotations keep every cosine: not this check's business
    assert not drift.anisotropy(a, (b @ rotation(D, 3).T).astype(np.float32)).fired
    # exact value on a small case: mean pairwise cosine, scale-invariant
    x = np.array([[1, 0], [0, 2], [3, 3]], dtype=np.float32)
    expected = (0 + 1 / np.sqrt(2) + 1 / np.sqrt(2)) / 3
    assert drift._mean_cosine(x) == pytest.approx(expected)
    # no reference: absolute ceiling
    assert drift.anisotropy(None, a).fired is False
    assert drift.anisotropy(a[:3], np.tile(a[:1], (50, 1))).fired


def test_effective_rank_collapse(halves: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = halves
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(3, D))
    collapsed = directions[rng.integers(0, 3, size=1000)] + 0.01 * rng.normal(size=(1000, D))
    collapsed = (collapsed / np.linalg.norm(collapsed, axis=1, keepdims=True)).astype(np.float32)
    s = drift.effective_rank(a, collapsed)
    assert s.fired and s.statistic < 0.1
    assert drift.effective_rank(a, b).statistic == pytest.approx(1.0, abs=0.05)
    # no reference: absolute floor of 2
    line = np.outer(rng.normal(size=100), directions[0])
    line_stat = drift.effective_rank(None, line)
    assert line_stat.fired and line_stat.statistic == pytest.approx(1.0, abs=1e-6)
    assert not drift.effective_rank(None, a).fired
    # ideal case: isotropic data in k dims has effective rank ~k
    iso = rng.normal(size=(20_000, 10))
    assert drift._erank(iso) == pytest.approx(10.0, abs=0.05)


# ---------------------------------------------------------------------------------------------------
# duplicates, tokens, scripts
# ---------------------------------------------------------------------------------------------------


def _hashes(texts: list[str]) -> list[str]:
    return [hashlib.sha256(t.encode()).hexdigest() for t in texts]


def test_duplicate_vectors(halves: tuple[np.ndarray, np.ndarray]) -> None:
    a = halves[0].copy()
    hashes = _hashes([f"text {i}" for i in range(len(a))])
    clean = drift.duplicate_vectors(a, hashes)
    assert clean.statistic == 0.0 and not clean.fired
    # identical texts sharing a vector are fine
    same_text = list(hashes)
    a[1:30] = a[0]
    for i in range(1, 30):
        same_text[i] = same_text[0]
    assert drift.duplicate_vectors(a, same_text).statistic == 0.0
    # different texts, same vector: collapsed embeddings
    s = drift.duplicate_vectors(a, hashes)
    assert s.statistic == pytest.approx(30 / 1000) and s.fired
    # one exact byte of difference is a different vector
    b = halves[0].copy()
    b[1] = np.nextafter(b[0], np.float32(2))
    assert drift.duplicate_vectors(b, hashes).statistic == 0.0
    with pytest.raises(ValueError, match="text hashes"):
        drift.duplicate_vectors(a, hashes[:-1])


def _token_lengths(n: int, seed: int, limit: int = 256, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.gamma(4.0, 40.0 + shift, size=n).astype(int) + 5, limit)
    return lengths  # heavy tie at the limit


def test_token_length_psi() -> None:
    ref = _token_lengths(2000, 0)
    assert (ref == 256).mean() > 0.1  # heavy ties at the limit
    quiet = drift.token_length_psi(ref, _token_lengths(2000, 1))
    assert quiet.statistic < 0.05 and not quiet.fired
    shifted = drift.token_length_psi(ref, _token_lengths(2000, 2, shift=-25.0))
    assert shifted.fired and shifted.statistic > 0.25 and shifted.p_value is not None
    longer = drift.token_length_psi(ref, _token_lengths(2000, 2, limit=512, shift=30.0))
    assert longer.fired
    # constant reference lengths: one edge, two bins, no crash
    same = drift.token_length_psi(np.full(100, 256), np.full(100, 256))
    assert same.statistic == 0.0 and not same.fired
    # a handful of new chunks cannot fire on noise (significance gate)
    small = drift.token_length_psi(ref, _token_lengths(8, 3))
    assert not small.fired


def test_truncation_rate() -> None:
    tokens = np.array([100] * 95 + [300] * 5)
    s = drift.truncation_rate(tokens, limit=256)
    assert s.statistic == pytest.approx(0.05) and s.fired
    assert not drift.truncation_rate(tokens, limit=300).fired
    assert not drift.truncation_rate(tokens[:3], limit=10).fired


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("The quick brown fox", "latin"),
        ("Übergrößenträger café", "latin"),
        ("数据漂移检测很重要。", "han"),
        ("ひらがなとカタカナ", "kana"),
        ("한국어 문장입니다", "hangul"),
        ("Привет, мир", "cyrillic"),
        ("Καλημέρα κόσμε", "greek"),
        ("مرحبا بالعالم", "arabic"),
        ("שלום עולם", "hebrew"),
        ("नमस्ते दुनिया", "devanagari"),
        ("สวัสดีครับ", "other"),
        ("12345 !!! 678", "none"),
        ("", "none"),
        ("中文内容里有一个 API 名称", "han"),
    ],
)
def test_script_of(text: str, script: str) -> None:
    assert drift.script_of(text) == script


def _texts(n: int, share_chinese: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["index", "vector", "model", "drift", "search", "chunk", "token", "query", "data", "table"]
    hanzi = list("数据模型向量索引检索漂移文本查询表格分块")
    out = []
    for i in range(n):
        if rng.random() < share_chinese:
            out.append("".join(rng.choice(hanzi, size=12)) + f" {i}")
        else:
            out.append(" ".join(rng.choice(words, size=8)) + f" {i}.")
    return out


def test_language_mix() -> None:
    english = _texts(500, 0.05, 0)
    quiet = drift.language_mix(english, _texts(500, 0.05, 1))
    assert not quiet.fired and quiet.statistic < 0.05
    chinese = _texts(500, 0.9, 2)
    s = drift.language_mix(english, chinese)
    assert s.fired and s.statistic > 0.7 and s.p_value is not None and s.p_value < 1e-10
    assert s.detail.startswith("latin 0.9") and "han 0.0" in s.detail and "->0.9" in s.detail
    assert not drift.language_mix(english[:50], english[50:100]).fired


# ---------------------------------------------------------------------------------------------------
# degenerate input
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VECTOR_CHECKS)
def test_too_few_vectors(name: str, halves: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = halves
    for ref, new in ((a[:4], b), (a, b[:4]), (a[:0], b[:0])):
        s = run(name, ref, new)
        assert not s.fired
        if name in ("anisotropy", "effective_rank") and len(new) >= 5:
            continue  # a missing reference falls back to an absolute bound on new
        assert math.isnan(s.statistic) and "too few vectors" in s.detail


@pytest.mark.parametrize("name", VECTOR_CHECKS)
def test_constant_vectors(name: str) -> None:
    const = np.tile(np.linspace(-1, 1, 16, dtype=np.float32), (50, 1))
    s = run(name, const, const[:30].copy())
    assert not s.fired, s.detail


@pytest.mark.parametrize("name", VECTOR_CHECKS)
def test_one_dimension(name: str) -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 1)).astype(np.float32)
    new = rng.normal(size=(300, 1)).astype(np.float32)
    s = run(name, ref, new)
    assert not s.fired, s.detail
    if name in ("centroid_shift", "domain_auc", "mmd", "drifted_components"):
        moved = run(name, ref, new + 2.0)
        assert moved.fired, moved.detail


def test_other_degenerate_inputs() -> None:
    few = np.zeros((3, 8), dtype=np.float32)
    assert not drift.duplicate_vectors(few, ["a", "b", "c"]).fired
    assert math.isnan(drift.token_length_psi([1, 2], [1, 2, 3, 4, 5, 6]).statistic)
    assert not drift.language_mix(["a"] * 3, ["b"] * 10).fired
    zeros = np.zeros((20, 8), dtype=np.float32)
    assert not drift.anisotropy(zeros, zeros).fired
    assert not drift.effective_rank(zeros, zeros).fired
    with pytest.raises(ValueError, match="dimensions"):
        drift.centroid_shift(np.ones((10, 3)), np.ones((10, 4)))
    nan = np.full((10, 4), np.nan, dtype=np.float32)
    assert not drift.mmd(nan, nan).fired


# ---------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------


# Measured at 81 s on the shared 2-core machine (every check on 100 random splits): 600 s keeps the
# margin of the suite's other slow tests, where its default of 300 s would be under four times that.
@pytest.mark.timeout(600)
def test_calibration_over_100_seeds(space: dict[str, Any]) -> None:
    n = 1000
    vectors = sample(space, n, seed=21)
    tokens = _token_lengths(n, 22)
    texts = _texts(n, 0.3, 23)
    rates = drift.calibrate(
        vectors,
        tokens,
        texts,
        _hashes(texts),
        seeds=100,
        mmd={"permutations": 200, "alpha": 0.005, "max_per_side": 300},
        domain_auc={"max_per_side": 250},
    )
    assert set(rates) == set(drift.DRIFT_CHECKS)
    assert all(rate <= 0.01 for rate in rates.values()), rates
    with pytest.raises(ValueError, match="unknown"):
        drift.calibrate(vectors, None, None, None, seeds=1, nope={})


def test_calibrate_counts_firings(space: dict[str, Any]) -> None:
    # a check that fires on anything must show a false-alarm rate of 1
    vectors = sample(space, 200, seed=31)
    rates = drift.calibrate(
        vectors,
        None,
        None,
        None,
        seeds=3,
        centroid_shift={"min_ratio": 0.0, "alpha": 1.0, "min_std_shift": 0.0},
        anisotropy={"max_delta": -1.0},
        mmd={"permutations": 20},
    )
    assert set(rates) == set(drift.DRIFT_CHECKS) - {"duplicate_vectors", "token_length_psi", "language_mix"}
    assert rates["anisotropy"] == 1.0 and rates["centroid_shift"] == 1.0 and rates["mmd"] == 0.0
