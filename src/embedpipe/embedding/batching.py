"""Token-budget batching: texts of similar length go together, so padding stays small.

:class:`~embedpipe.embedding.embedder.SentenceTransformerEmbedder` sorts texts by token count and
cuts them into batches with :func:`token_batches`; a runner (:mod:`embedpipe.embedding.runners`)
then runs one batch at a time.
"""

from __future__ import annotations

import numpy as np


def token_batches(lengths: np.ndarray, budget: int, max_batch: int) -> list[np.ndarray]:
    """Cut texts into batches of similar length whose padded size fits a token budget.

    Texts are sorted by token count; a batch grows while ``len(batch) * longest <= budget`` and
    ``len(batch) <= max_batch``. A text longer than the budget gets a batch of its own.

    Args:
        lengths: Tokens per text (special tokens included, capped at the model's maximum).
        budget: Most padded tokens per batch.
        max_batch: Most texts per batch.

    Returns:
        Index arrays into ``lengths``, shortest texts first; every index appears exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        # sorted ascending: the last text of a batch is its longest
        while (
            end < n and end - start < max_batch and (end - start + 1) * max(1, lengths[order[end]]) <= budget
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def default_batch_tokens(backend: str, device: str) -> int:
    """Padded tokens per batch when ``model.batch_tokens`` is not set.

    Measured on a 2-core Sapphire Rapids CPU (``benchmarks/backends.py``): torch peaks at about
    4,096 tokens per batch, ONNX Runtime at about 1,024 (its int8 kernels like batches that stay
    in cache). On a GPU much larger batches keep the device busy; out-of-memory halves them.
    """
    if device.startswith("cuda"):
        return 65_536
    if backend in {"onnx", "onnx-int8"}:
        return 1024
    return 4096
