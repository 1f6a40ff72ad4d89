"""Write, audit, publish: checks as Prefect tasks gate which version the table serves.

Real Prefect (test harness), real LanceDB, the deterministic fake model (a bag of hashed words).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from embedpipe.config import GateSettings
from embedpipe.errors import GateFailed, NothingServedError
from embedpipe.flows.check import check
from embedpipe.flows.reindex import reindex
from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import CANARY_TABLE, CHECKS_TABLE, SERVING_TAG, Store
from tests.fakes import NAN, SWAP_ENV, ZERO
from tests.helpers import make_settings, write

pytestmark = pytest.mark.usefixtures("prefect_harness")

ANIMALS = [
    "cat",
    "dog",
    "horse",
    "cow",
    "sheep",
    "goat",
    "duck",
    "goose",
    "hen",
    "fox",
    "wolf",
    "bear",
    "deer",
    "owl",
    "hawk",
    "eagle",
    "mouse",
    "rat",
    "bat",
    "frog",
]
ACTS = [
    "runs",
    "sleeps",
    "eats",
    "jumps",
    "hides",
    "barks",
    "sings",
    "swims",
    "climbs",
    "hunts",
    "rests",
    "plays",
    "waits",
    "watches",
]
PLACES = [
    "barn",
    "field",
    "forest",
    "river",
    "meadow",
    "hill",
    "farm",
    "pond",
    "yard",
    "garden",
    "valley",
    "lake",
]
TECH = [
    "kernel",
    "socket",
    "buffer",
    "thread",
    "mutex",
    "packet",
    "router",
    "compiler",
    "linker",
    "cache",
    "queue",
    "shard",
]
VERBS = [
    "allocates",
    "flushes",
    "locks",
    "routes",
    "parses",
    "compiles",
    "schedules",
    "evicts",
    "replicates",
    "hashes",
]


def sentence(rng: random.Random, nouns: list[str], verbs: list[str], places: list[str]) -> str:
    noun, verb, place, other = rng.choice(nouns), rng.choice(verbs), rng.choice(places), rng.choice(nouns)
    return f"The {noun} {verb} near the {place} with the {other}."


def make_corpus(root: Path, n_docs: int, *, tech: bool = False, seed: int = 0, start: int = 0) -> Path:
    rng = random.Random(seed)
    for i in range(start, start + n_docs):
        nouns, verbs, places = (TECH, VERBS, TECH) if tech else (ANIMALS, ACTS, PLACES)
        paras = [" ".join(sentence(rng, nouns, verbs, places) for _ in range(3)) for _ in range(4)]
        write(root / ("tech" if tech else "farm") / f"doc{i:03d}.md", "\n\n".join(paras))
    return root


def settings_for(tmp_path: Path, **groups):
    groups.setdefault("chunk", {"tokens": 40, "overlap": 0})
    groups.setdefault("model", {"name": "fake:64"})
    return make_settings(tmp_path, **groups)


def run(src: Path, settings):
    state = sync([str(src)], settings, return_state=True)
    return state, state.result(raise_on_failure=False)


def statuses(summary) -> dict[str, str]:
    return {c.check: c.status for c in summary.checks}


def test_clean_runs_pass_every_check_and_move_the_serving_tag(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 40)
    settings = settings_for(tmp_path)
    state, s1 = run(src, settings)
    assert state.is_completed(), state.message
    assert s1.gate == "passed" and s1.served_version == s1.table_version == 1
    first = statuses(s1)
    assert first["integrity"] == first["duplicate_vectors"] == first["effective_rank"] == "pass"
    assert first["canary"] == "skipped"  # first canary: stored as the baseline
    assert first["mmd"] == first["domain_auc"] == "skipped"  # nothing to compare with yet
    # a clean incremental run: one document edited, three added
    make_corpus(src, 1, seed=99, start=0)
    make_corpus(src, 3, seed=7, start=40)
    state, s2 = run(src, settings)
    assert state.is_completed(), state.message
    got = statuses(s2)
    assert s2.gate == "passed" and s2.served_version == s2.table_version == 2
    assert {got[n] for n in got} <= {"pass", "skipped"}, got
    for name in (
        "integrity",
        "canary",
        "centroid_shift",
        "domain_auc",
        "mmd",
        "drifted_components",
        "anisotropy",
        "effective_rank",
        "duplicate_vectors",
        "token_length_psi",
        "language_mix",
        "neighbour_stability",
    ):
        assert got[name] == "pass", (name, [c for c in s2.checks if c.check == name])
    by = {c.check: c for c in s2.checks}
    assert by["canary"].statistic == pytest.approx(1.0, abs=1e-6)
    assert by["neighbour_stability"].statistic == 1.0
    assert all(c.reference_version == 1 and c.table_version == 2 for c in s2.checks)
    store = Store(settings.store)
    assert store.serving_version() == 2
    recorded = store.open_table(CHECKS_TABLE).to_arrow().to_pylist()
    assert {r["table_version"] for r in recorded} == {1, 2}
    assert {r["run_id"] for r in recorded if r["table_version"] == 2} == {s2.run_id}
    assert all(r["severity"] in {"fail", "warn", "off"} for r in recorded)
    assert store.open_table(CANARY_TABLE).count_rows() == 2 * 32
    # a run that changes nothing checks nothing and reports what is served
    _, s3 = run(src, settings)
    assert s3.table_version is None and s3.checks == [] and s3.served_version == 2


def test_nan_vectors_are_quarantined_with_a_reason_and_lose_nothing(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 20)
    settings = settings_for(tmp_path)
    run(src, settings)
    write(src / "farm" / "broken.md", f"A perfectly normal looking document.\n\nIts second part. {NAN}")
    make_corpus(src, 1, seed=42, start=0)  # an edit of doc000
    write(src / "farm" / "doc001.md", f"doc001 is edited and now breaks the model. {NAN}")
    state, s = run(src, settings)
    assert state.is_completed(), state.message
    reasons = {r.path: r.reason for r in s.rejects}
    assert set(reasons) == {"farm/broken.md", "farm/doc001.md"}
    assert "non-finite (NaN or infinite) vector" in reasons["farm/broken.md"]
    rows = Store(settings.store).open_version(None).to_arrow()
    docs = set(rows.column(C.DOC_ID).to_pylist())
    assert "farm/broken.md" not in docs
    assert "farm/doc001.md" in docs  # its previous rows are kept, not deleted
    assert s.gate == "passed" and s.served_version == s.table_version == 2
    assert next(c for c in s.checks if c.check == "integrity").statistic == 0.0


def test_zero_vectors_fail_integrity_and_are_never_served(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 20)
    settings = settings_for(tmp_path)
    run(src, settings)
    write(src / "farm" / "broken.md", f"A perfectly normal looking document. {ZERO}")
    state, s = run(src, settings)
    assert state.is_failed()
    assert s.gate == "failed" and s.table_version == 2
    integrity = next(c for c in s.checks if c.check == "integrity")
    assert integrity.status == "fail" and integrity.statistic == 1.0 and "zero=1" in integrity.detail
    assert "integrity" in s.message and "not served" in s.message
    assert "keeps serving the content of version 1, restored as the newest version 3" in s.message
    store = Store(settings.store)
    # the served content (version 1's) is the newest version again: the next run builds on it
    assert s.served_version == 3 and store.serving_version() == 3 and int(store.open_table().version) == 3
    for target in (None, "latest"):  # what search and dashboards read
        docs = set(store.open_version(target).to_arrow().column(C.DOC_ID).to_pylist())
        assert "farm/broken.md" not in docs and len(docs) == 20
    # the failed version stays inspectable, and on-demand checks report the same failure
    assert "farm/broken.md" in set(store.open_version(2).to_arrow().column(C.DOC_ID).to_pylist())
    report = check(settings, version="2", return_state=True).result(raise_on_failure=False)
    assert report.gate == "failed" and report.blocking == ["integrity"] and not report.published
    assert store.serving_version() == 3
    # rolling back to the failed version is refused unless forced
    with pytest.raises(GateFailed, match="failed its checks \\(integrity\\)"):
        store.rollback("2")
    # the next run (the document fixed) builds on the served content and is served
    write(src / "farm" / "broken.md", "A perfectly normal looking document.")
    state, s = run(src, settings)
    assert state.is_completed() and s.gate == "passed" and s.served_version == s.table_version == 4
    assert s.docs_new == 1 and s.chunks_embedded == 1


def test_a_failing_first_version_serves_nothing_and_the_next_run_starts_clean(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 5)
    write(src / "farm" / "broken.md", f"Broken from the start. {ZERO}")
    settings = settings_for(tmp_path)
    state, s = run(src, settings)
    assert state.is_failed() and s.gate == "failed" and s.served_version is None
    assert "nothing is served yet; the table was emptied as version 2" in s.message
    store = Store(settings.store)
    with pytest.raises(NothingServedError, match="no version has passed its checks yet"):
        store.open_version(None)
    assert store.open_version("latest").count_rows() == 0
    (src / "farm" / "broken.md").unlink()
    state, s = run(src, settings)
    assert state.is_completed() and s.served_version == s.table_version == 3 and s.docs_new == 5


def test_a_table_from_before_checks_falls_back_to_its_latest_version(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 10)
    settings = settings_for(tmp_path)
    run(src, settings_for(tmp_path, checks={"enabled": False, "triplets": [], "pairs": []}))
    store = Store(settings.store)
    store.open_table().tags.delete(SERVING_TAG)  # as written by a version of embedpipe without checks
    assert store.serving_version() is None and int(store.open_version(None).version) == 1
    write(src / "farm" / "broken.md", f"Broken. {ZERO}")
    state, s = run(src, settings)
    assert state.is_failed() and s.served_version == 3
    assert int(store.open_version(None).version) == 3
    assert store.open_version(None).count_rows() == store.open_version(1).count_rows()


def test_a_typo_in_the_baseline_stops_before_anything_is_written(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 5)
    settings = settings_for(tmp_path)
    run(src, settings)
    make_corpus(src, 1, seed=3, start=20)
    typo = settings_for(tmp_path, checks={"baseline_tag": "baselien", "triplets": [], "pairs": []})
    state, s = run(src, typo)
    assert state.is_failed() and "baseline 'baselien' is neither a tag nor a version" in s.message
    assert s.table_version is None and int(Store(settings.store).open_table().version) == 1
    state = check(settings, baseline="baselien", return_state=True)
    assert state.is_failed() and "baselien" in state.message


def test_silent_model_swap_fires_the_canary_and_drift_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_corpus(tmp_path / "src", 40)
    settings = settings_for(tmp_path)
    run(src, settings)
    # same model name and weights hash, different vectors: a library or hardware change
    monkeypatch.setenv(SWAP_ENV, "1")
    make_corpus(src, 40, seed=5, start=40)
    state, s = run(src, settings)
    assert state.is_failed() and s.gate == "failed" and s.served_version == 3
    got = {c.check: c for c in s.checks}
    assert got["canary"].status == "fail" and got["canary"].statistic < 0.5
    assert "canary" in s.message
    fired = {n for n in ("centroid_shift", "domain_auc", "mmd") if got[n].status == "warn"}
    assert fired, {n: (got[n].statistic, got[n].p_value) for n in ("centroid_shift", "domain_auc", "mmd")}


def test_topic_shift_fires_drift_warnings_and_a_fail_gate_blocks_it(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 40)
    settings = settings_for(tmp_path)
    run(src, settings)
    make_corpus(src, 80, tech=True, start=100)  # the corpus doubles with an unrelated topic
    state, s = run(src, settings)
    got = {c.check: c for c in s.checks}
    # drift checks are warnings by default: the shift is reported, the version still served
    assert state.is_completed() and s.gate == "passed" and s.served_version == 2
    for name in ("centroid_shift", "domain_auc", "mmd"):
        assert got[name].status == "warn", (name, got[name])
        assert got[name].p_value is not None and got[name].p_value < 0.001
    assert got["neighbour_stability"].status == "pass"  # unchanged chunks keep their neighbours
    # the same shift against a gate configured as fail is not served
    strict = settings_for(
        tmp_path / "strict",
        checks={"gates": {"domain_auc": {"severity": "fail"}}, "triplets": [], "pairs": []},
    )
    src2 = make_corpus(tmp_path / "src2", 40)
    run(src2, strict)
    make_corpus(src2, 80, tech=True, start=100)
    state, s = run(src2, strict)
    assert state.is_failed() and s.gate == "failed" and "domain_auc" in s.message and s.served_version == 3


def _golden(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_golden_set_regression_and_broken_golden_set_block_serving(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 20)
    write(src / "special" / "kites.md", "Kites fly high over windy beaches in spring.")
    write(src / "special" / "bread.md", "Sourdough bread needs flour, water, salt and a starter.")
    golden = _golden(
        tmp_path / "golden.jsonl",
        [
            {"query": "kites fly over windy beaches", "relevant": {"special/kites.md": 3}},
            {"query": "sourdough bread flour starter", "relevant": {"special/bread.md": 2}},
        ],
    )
    settings = settings_for(tmp_path, checks={"golden": [golden], "triplets": [], "pairs": []})
    state, s1 = run(src, settings)
    got = {c.check: c for c in s1.checks}
    assert (
        s1.gate == "passed" and got["golden_recall"].statistic == 1.0 and got["golden_mrr"].statistic == 1.0
    )
    # the kites document now says something else: retrieval quality drops against version 1
    write(src / "special" / "kites.md", "Tax forms are due at the end of the fiscal quarter.")
    state, s2 = run(src, settings)
    got = {c.check: c for c in s2.checks}
    assert state.is_failed() and s2.gate == "failed" and s2.served_version == 3
    assert got["golden_mrr"].status == "fail" and got["golden_mrr"].statistic < 0.9
    assert got["golden_mrr"].threshold == pytest.approx(1.0 - 0.05)
    assert "reference version 1: 1.0000" in got["golden_mrr"].detail
    # a golden set naming documents the table does not hold cannot be measured: an error, not a pass
    broken = _golden(tmp_path / "broken.jsonl", [{"query": "kites", "relevant": {"special/nope.md": 1}}])
    report = check(
        settings.model_copy(update={"checks": settings.checks.model_copy(update={"golden": [broken]})}),
        version="serving",
        return_state=True,
    ).result(raise_on_failure=False)
    errors = {c.check: c for c in report.checks if c.status == "error"}
    assert set(errors) == {"golden_recall", "golden_mrr", "golden_ndcg"}
    assert "special/nope.md" in errors["golden_recall"].detail and report.gate == "failed"
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"query": "x", "relevant": {"special/kites.md": 1}}\n{oops\n', encoding="utf-8")
    report = check(
        settings.model_copy(
            update={"checks": settings.checks.model_copy(update={"golden": [str(malformed)]})}
        ),
        return_state=True,
    ).result(raise_on_failure=False)
    bad = next(c for c in report.checks if c.check == "golden_ndcg")
    assert bad.status == "error" and "line 2: not valid JSON" in bad.detail


def test_check_publishes_after_a_gate_is_relaxed_and_rollback_serves(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 20)
    settings = settings_for(tmp_path)
    run(src, settings)
    write(src / "farm" / "broken.md", f"Broken. {ZERO}")
    state, _ = run(src, settings)
    assert state.is_failed()
    store = Store(settings.store)
    assert store.serving_version() == 3  # version 1's content, restored
    relaxed = settings.model_copy(
        update={
            "checks": settings.checks.model_copy(
                update={"gates": {"integrity": GateSettings(severity="warn")}}
            )
        }
    )
    report = check(relaxed, version="2", publish=True, return_state=True).result(raise_on_failure=False)
    assert report.gate == "passed" and report.published
    assert next(c for c in report.checks if c.check == "integrity").status == "warn"
    # the accepted version becomes the newest (a restore commit) and is served
    assert store.serving_version() == 4 == int(store.open_table().version)
    assert "farm/broken.md" in set(store.open_version(None).to_arrow().column(C.DOC_ID).to_pylist())
    res = store.rollback("1")
    assert res["version"] == 5 and store.serving_version() == 5


def test_baseline_tag_pins_the_reference_and_checks_can_be_turned_off(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 20)
    settings = settings_for(tmp_path)
    run(src, settings)
    Store(settings.store).open_table().tags.create("baseline", 1)
    for i in range(2):
        make_corpus(src, 2, seed=10 + i, start=50 + 2 * i)
        run(src, settings)
    report = check(settings, baseline="baseline", return_state=True).result(raise_on_failure=False)
    assert (
        report.version == 3
        and report.reference_version == 1
        and "baseline tag 'baseline'" in report.reference
    )
    assert report.gate == "passed"
    off = settings_for(tmp_path, checks={"enabled": False})
    write(src / "farm" / "broken.md", f"Broken. {ZERO}")
    state, s = run(src, off)
    assert state.is_completed() and s.gate == "skipped" and s.checks == [] and s.served_version == 4


def test_vector_index_recall_is_measured_against_exact_search(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 500)  # 2,000 chunks: more rows than a PQ codebook has codes
    settings = settings_for(tmp_path)
    run(src, settings)
    store = Store(settings.store)

    def index_recall():
        report = check(settings, return_state=True).result(raise_on_failure=False)
        return next(c for c in report.checks if c.check == "index_recall")

    assert index_recall().status == "skipped"  # no index: searches are exact
    # a deliberately coarse index: 64 partitions, one PQ sub-vector for 64 dimensions
    store.open_table().create_index(
        metric="cosine", vector_column_name=C.VECTOR, num_partitions=64, num_sub_vectors=1
    )
    coarse = index_recall()
    assert coarse.status == "fail" and coarse.statistic < 0.5, coarse
    assert "against exact search over 50 queries" in coarse.detail
    # an exact-distance index over few partitions finds what exact search finds
    store.open_table().create_index(
        metric="cosine", vector_column_name=C.VECTOR, index_type="IVF_FLAT", num_partitions=4, replace=True
    )
    fine = index_recall()
    assert fine.status == "pass" and fine.statistic == 1.0, fine


def test_a_model_change_is_judged_by_quality_checks_and_served(tmp_path: Path) -> None:
    src = make_corpus(tmp_path / "src", 20)
    write(src / "special" / "kites.md", "Kites fly high over windy beaches in spring.")
    golden = tmp_path / "golden.jsonl"
    golden.write_text(
        json.dumps({"query": "kites over windy beaches", "relevant": {"special/kites.md": 2}}) + "\n"
    )
    checks = {"golden": [str(golden)], "triplets": [], "pairs": []}
    settings = settings_for(tmp_path, checks=checks)
    run(src, settings)
    other = settings_for(tmp_path, model={"name": "fake:64:2"}, checks=checks)  # other weights, same dim
    state = reindex(other, return_state=True)
    s = state.result(raise_on_failure=False)
    assert state.is_completed(), state.message
    assert s.gate == "passed" and s.served_version == s.table_version == 2
    got = {c.check: c for c in s.checks}
    for name in ("centroid_shift", "domain_auc", "mmd", "drifted_components", "neighbour_stability"):
        assert got[name].status == "skipped" and "not comparable" in got[name].detail, got[name]
    # geometry falls back to absolute tests in the new space
    assert "no reference: absolute ceiling" in got["anisotropy"].detail
    assert got["canary"].status == "skipped" and "stored now as its baseline" in got["canary"].detail
    assert got["integrity"].status == "pass" and "rows new since version 1" in got["integrity"].detail
    # the golden set is compared with the figures recorded for version 1 (another model)
    assert got["golden_mrr"].status == "pass" and "reference version 1: 1.0000" in got["golden_mrr"].detail
    assert (
        Store(settings.store).table_identity(table=Store(settings.store).open_version(None)).name
        == "fake:64:2"
    )
