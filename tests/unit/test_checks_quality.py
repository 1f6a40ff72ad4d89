"""Quality measures, check-set loaders, the integrity scan and gate settings (no Prefect)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedpipe.checks import quality
from embedpipe.checks.integrity import scan_vectors
from embedpipe.checks.suite.run import verdict
from embedpipe.config import get_settings
from embedpipe.errors import ConfigError
from embedpipe.schemas import CheckResult


def _jsonl(path: Path, rows: list[object]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------- loaders


def test_builtin_sets_load_and_are_well_formed() -> None:
    triplets = quality.load_triplets(["builtin"])
    pairs = quality.load_pairs(["builtin"])
    canary = quality.load_canary("builtin")
    assert len(triplets) >= 30 and all(t.anchor and t.positive and t.negative for t in triplets)
    assert len(pairs) >= 50 and min(p.score for p in pairs) < 1 and max(p.score for p in pairs) > 4
    assert len(canary) == 32 and len(set(canary)) == 32


def test_sample_corpus_golden_set_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    golden = quality.load_golden([str(root / "examples" / "quality" / "golden.jsonl")])
    assert len(golden) >= 20 and all(q.relevant for q in golden)


def test_golden_set_with_hostile_text_is_kept_as_text(tmp_path: Path) -> None:
    spec = _jsonl(tmp_path / "g.jsonl", [{"query": "<script>alert(1)</script>", "relevant": {"a.md": 2}}])
    [q] = quality.load_golden([spec])
    assert q.query == "<script>alert(1)</script>" and q.relevant == {"a.md": 2.0}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ('{"query": "x", "relevant": {"a": 1}\n', "line 1: not valid JSON"),
        ('{"query": "ok", "relevant": {"a": 1}}\n[1, 2]\n', "line 2: expected a JSON object"),
        ('{"query": "", "relevant": {"a": 1}}\n', "'query' must be a non-empty string"),
        ('{"query": "x", "relevant": {}}\n', "'relevant' must be a non-empty object"),
        ('{"query": "x", "relevant": ["a"]}\n', "'relevant' must be a non-empty object"),
        ('{"query": "x", "relevant": {"a": -1}}\n', "grade of doc_id 'a' must be > 0"),
        ('{"query": "x", "relevant": {"a": "high"}}\n', "'grade' must be a finite number"),
        ('{"query": "x", "relevant": {"a": NaN}}\n', "'grade' must be a finite number"),
    ],
)
def test_malformed_golden_sets_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        quality.load_golden([str(path)])
    assert message in str(e.value) and "golden" in str(e.value)


def test_golden_set_missing_huge_and_wrongly_encoded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"golden file not found: path=.*nope\.jsonl"):
        quality.load_golden([str(tmp_path / "nope.jsonl")])
    huge = tmp_path / "huge.jsonl"
    with huge.open("w") as f:
        f.seek(quality.MAX_SET_BYTES + 10)
        f.write("\n")
    with pytest.raises(ConfigError, match="too large"):
        quality.load_golden([str(huge)])
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"query": "caf\xe9", "relevant": {"a": 1}}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8: path=.*latin1\.jsonl"):
        quality.load_golden([str(latin)])
    long_query = _jsonl(tmp_path / "long.jsonl", [{"query": "x" * 30_000, "relevant": {"a": 1}}])
    with pytest.raises(ConfigError, match="30000 characters"):
        quality.load_golden([long_query])


def test_malformed_triplets_and_pairs(tmp_path: Path) -> None:
    bad = _jsonl(tmp_path / "t.jsonl", [{"anchor": "a", "positive": "b"}])
    with pytest.raises(ConfigError, match="line 1: 'negative' must be a non-empty string"):
        quality.load_triplets([bad])
    flat = _jsonl(tmp_path / "p.jsonl", [{"a": "x", "b": "y", "score": 1}, {"a": "u", "b": "v", "score": 1}])
    with pytest.raises(ConfigError, match="must not all be equal"):
        quality.load_pairs([flat])
    nan = _jsonl(tmp_path / "q.jsonl", [{"a": "x", "b": "y", "score": "five"}])
    with pytest.raises(ConfigError, match="'score' must be a finite number"):
        quality.load_pairs([nan])
    empty = tmp_path / "c.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no probe lines"):
        quality.load_canary(str(empty))


# ------------------------------------------------------------------------------- measures


def test_retrieval_metrics_on_known_rankings() -> None:
    golden = [
        quality.GoldenQuery("q1", {"a": 3.0, "b": 1.0}),
        quality.GoldenQuery("q2", {"z": 1.0}),
    ]
    m = quality.retrieval_metrics([["a", "x", "b"], ["x", "y"]], golden, k=2)
    assert m["recall"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["mrr"] == pytest.approx((1.0 + 0.0) / 2)
    ideal = 7 + 1 / np.log2(3)
    assert m["ndcg"] == pytest.approx((7 + 1 / np.log2(4)) / ideal / 2)
    perfect = quality.retrieval_metrics([["a", "b"], ["z"]], golden, k=2)
    assert perfect == {"recall": 1.0, "mrr": 1.0, "ndcg": 1.0}


def _bag_encoder(texts: list[str] | tuple[str, ...]) -> np.ndarray:
    rows = []
    for t in texts:
        v = np.zeros(64)
        for w in t.lower().split():
            v[zlib.crc32(w.encode()) % 64] += 1
        rows.append(v)
    return np.asarray(rows)


def test_triplets_and_pairs_measure_what_they_claim() -> None:
    good = [quality.Triplet("red apple pie", "apple pie red", "blue sky high", 0.1)] * 3
    bad = [quality.Triplet("red apple pie", "blue sky high", "apple pie red", 0.1)]
    assert quality.triplet_accuracy(_bag_encoder, good)[0] == 1.0
    assert quality.triplet_accuracy(_bag_encoder, good + bad)[0] == 0.75
    pairs = [
        quality.Pair("a b c d", "a b c d", 5.0),
        quality.Pair("a b c d", "a b c x", 3.0),
        quality.Pair("a b c d", "a x y z", 1.0),
        quality.Pair("a b c d", "w x y z", 0.0),
    ]
    assert quality.pair_spearman(_bag_encoder, pairs) == pytest.approx(1.0)
    reversed_scores = [quality.Pair(p.a, p.b, 5 - p.score) for p in pairs]
    assert quality.pair_spearman(_bag_encoder, reversed_scores) == pytest.approx(-1.0)


def test_neighbour_overlap_is_one_for_same_vectors_and_low_for_another_model() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 16)).astype(np.float32)
    assert quality.neighbour_overlap(a, a.copy(), 10) == 1.0
    rotation = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    assert quality.neighbour_overlap(a, (a @ rotation).astype(np.float32), 10) == pytest.approx(1.0, abs=1e-6)
    other = rng.standard_normal((300, 16)).astype(np.float32)
    assert quality.neighbour_overlap(a, other, 10) < 0.2


def test_canary_cosines_match_by_probe_hash() -> None:
    v = np.eye(3)
    stored = {"h0": [1.0, 0.0, 0.0], "h1": [0.0, 0.0, 1.0], "gone": [1.0, 1.0, 1.0]}
    cos = quality.canary_cosines(stored, ["h0", "h1", "new"], v)
    assert cos.tolist() == [1.0, 0.0]


# ------------------------------------------------------------------------------- integrity


def _fsl(m: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(m.ravel(), pa.float32()), m.shape[1])


def test_integrity_scan_counts_each_kind_of_bad_vector() -> None:
    m = np.tile(np.asarray([[0.6, 0.8, 0.0]], np.float32), (8, 1))
    m[1, 0] = np.nan
    m[2, 2] = np.inf
    m[3] = 0.0
    m[4] = [3.0, 4.0, 0.0]
    col = _fsl(m)
    batches = [pa.record_batch([col.slice(0, 5)], names=["v"]), pa.record_batch([col.slice(5)], names=["v"])]
    st = scan_vectors(batches, "v", dim=3, normalize=True, vector_type=col.type)
    assert st.fired and st.statistic == 4.0
    assert "nan=1 inf=1 zero=1" in st.detail and "norm_off=1" in st.detail
    ok = scan_vectors([pa.record_batch([_fsl(m[5:])], names=["v"])], "v", 3, True, col.type)
    assert not ok.fired and ok.statistic == 0.0
    unnormalised = scan_vectors([pa.record_batch([_fsl(m[4:5])], names=["v"])], "v", 3, False, col.type)
    assert not unnormalised.fired


def test_integrity_scan_rejects_wrong_dimension_and_dtype() -> None:
    m = np.ones((2, 4), np.float32) / 2
    wrong_dim = scan_vectors([pa.record_batch([_fsl(m)], names=["v"])], "v", 3, True, _fsl(m).type)
    assert wrong_dim.fired and "expected fixed_size_list<item: float>[3]" in wrong_dim.detail
    f64 = pa.FixedSizeListArray.from_arrays(pa.array(m.ravel(), pa.float64()), 4)
    wrong_type = scan_vectors([pa.record_batch([f64], names=["v"])], "v", 4, True, f64.type)
    assert wrong_type.fired and "double" in wrong_type.detail


# ------------------------------------------------------------------------------- gates


def test_gate_settings_override_defaults_and_reject_unknown_checks() -> None:
    s = get_settings({"checks": {"gates": {"mmd": {"severity": "fail", "threshold": 0.05}}}})
    assert s.checks.gate("mmd") == ("fail", 0.05, None)
    assert s.checks.gate("integrity") == ("fail", 0.0, None)
    assert s.checks.gate("golden_ndcg") == ("fail", 0.0, 0.05)
    with pytest.raises(ConfigError, match=r"unknown check\(s\) \['mdd'\]"):
        get_settings({"checks": {"gates": {"mdd": {"severity": "warn"}}}})
    with pytest.raises(ConfigError, match=r"checks\.gates\.mmd\.severity"):
        get_settings({"checks": {"gates": {"mmd": {"severity": "loud"}}}})


def test_gate_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDPIPE_CHECKS__GATES__DOMAIN_AUC__SEVERITY", "fail")
    monkeypatch.setenv("EMBEDPIPE_CHECKS__SAMPLE_SIZE", "2000")
    s = get_settings()
    assert s.checks.gate("domain_auc")[0] == "fail" and s.checks.sample_size == 2000


def test_verdict_blocks_only_on_failing_fail_gates() -> None:
    def r(check: str, status: str, severity: str) -> CheckResult:
        return CheckResult(check=check, status=status, severity=severity)

    assert verdict([r("mmd", "warn", "warn"), r("integrity", "pass", "fail"), r("x", "skipped", "fail")]) == (
        True,
        [],
    )
    assert verdict([r("integrity", "fail", "fail"), r("golden_recall", "error", "fail")]) == (
        False,
        ["integrity", "golden_recall"],
    )
