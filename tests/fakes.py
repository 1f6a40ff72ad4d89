"""A deterministic fake embedder for fast unit tests (integration tests use the real model)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

import numpy as np

from embedpipe.config import ModelSettings
from embedpipe.schemas import ModelIdentity

EXPLODE = "EXPLODE_IN_EMBEDDER"
"""A document containing this marker makes the fake model fail, to test crashes mid-run."""
KILL = "KILL_PROCESS_IN_EMBEDDER"
"""A text containing this marker ends the process running the model (a Dask worker dying)."""
NAN = "NAN_IN_EMBEDDER"
"""A text containing this marker gets a NaN vector, to test the integrity gate."""
ZERO = "ZERO_IN_EMBEDDER"
"""A text containing this marker gets an all-zero vector (LanceDB stores it; the integrity gate
must catch it)."""
SWAP_ENV = "FAKE_EMBEDDER_SILENT_SWAP"
"""When this environment variable is set, the fake model's vectors change but its identity does not:
a silent model, library or hardware change that only the canary and drift checks can see."""
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|\w+|[^\w\s]")


class RegexTokens:
    """Word and punctuation tokens; each CJK character is one token, like BERT's tokenizer."""

    special_tokens = 2
    tokenizer_hash = "regex-tokens-v1"

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [
            np.asarray([m.span() for m in _TOKEN.finditer(t)], dtype=np.int64).reshape(-1, 2) for t in texts
        ]

    def count(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([sum(1 for _ in _TOKEN.finditer(t)) for t in texts], dtype=np.int64)


class FakeEmbedder:
    """Bag of hashed tokens: similar texts get similar vectors; same text, same vector.

    The model name is ``fake:<dim>`` or ``fake:<dim>:<seed>`` (another seed = another model).
    """

    def __init__(self, settings: ModelSettings) -> None:
        parts = settings.name.split(":")
        self.dim = int(parts[1]) if len(parts) > 1 else 32
        self.seed = parts[2] if len(parts) > 2 else "0"
        self.settings = settings
        self.device = "cpu"
        self.tokenizer = RegexTokens()
        self.special_tokens = 2
        self.calls = 0
        self.identity = ModelIdentity(
            name=settings.name,
            weights_hash=hashlib.sha256(f"fake-{self.dim}-{self.seed}".encode()).hexdigest(),
            dim=self.dim,
            max_seq_length=128,
            normalize=settings.normalize,
        )

    def _token_vec(self, token: str) -> np.ndarray:
        salt = os.environ.get(SWAP_ENV, "")
        digest = hashlib.blake2b(f"{self.seed}{salt}:{token.lower()}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return rng.standard_normal(self.dim).astype(np.float32)

    def encode(self, texts: Sequence[str], batch_size: int, lengths: np.ndarray | None = None) -> np.ndarray:
        self.calls += 1
        if any(EXPLODE in t for t in texts):
            raise RuntimeError("fake model crashed in the middle of a run")
        if any(KILL in t for t in texts):
            os._exit(1)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for m in _TOKEN.finditer(t):
                out[i] += self._token_vec(m.group())
            if NAN in t:
                out[i, 0] = np.nan
            if ZERO in t:
                out[i] = 0.0
            if self.settings.normalize:
                norm = np.linalg.norm(out[i])
                if norm > 0:
                    out[i] /= norm
        return out
