"""The one text hash: pinned values, so stored ``doc_hash``/``chunk_hash``/canary hashes never change."""

from __future__ import annotations

import hashlib

from embedpipe import chunking, hashing
from embedpipe.checks.suite import probes
from embedpipe.sources import parse

# Literal digests (from ``sha256sum`` of the UTF-8 bytes), not recomputed by the code under test.
NORMAL = ("Embeddings, naïve café ✓", "b5ded0b89abc4236e6777b1fe5a3abbdf6212f4c098736ba36afd44701e300ad")
# A lone surrogate (a JSON escape can make one) hashes as its surrogatepass bytes ED A0 80.
LONE_SURROGATE = ("lone \ud800 surrogate", "479215214424b9467f3e8c1702144dd9889704a94c287fb3e91e0777fe44dd69")
EMPTY = ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_sha256_text_is_pinned_for_normal_empty_and_lone_surrogate_text() -> None:
    for text, digest in (NORMAL, LONE_SURROGATE, EMPTY):
        assert hashing.sha256_text(text) == digest, repr(text)


def test_sha256_text_equals_plain_utf8_sha256_where_that_exists() -> None:
    """The canary's former ``text_hash`` was sha256 of strict UTF-8: same value for every text it accepted."""
    for text in (NORMAL[0], "x" * 10, "😀 astral plane \U0010ffff", "\x00nul\n"):
        assert hashing.sha256_text(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_long_text_is_hashed_in_pieces_with_the_same_digest() -> None:
    piece = hashing._HASH_PIECE
    for text in ("é" * (piece + 3), "a" * (2 * piece), "\ud800" + "b" * piece + "\udfff"):
        whole = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        assert hashing.sha256_text(text) == whole


def test_every_stored_hash_uses_the_one_function() -> None:
    """Documents, chunks and the canary all hash with :func:`embedpipe.hashing.sha256_text`."""
    assert parse.sha256_text is hashing.sha256_text
    assert chunking.sha256_text is hashing.sha256_text
    assert probes.sha256_text is hashing.sha256_text
