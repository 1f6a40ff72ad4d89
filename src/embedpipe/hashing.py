"""The one content hash of text (plain Python): what ``doc_hash``, ``chunk_hash`` and the canary store.

Every stored hash of text is :func:`sha256_text`, so a document, a chunk and a canary probe are
compared by the same function wherever they are written or read back.
"""

from __future__ import annotations

import hashlib

_HASH_PIECE = 1 << 20


def sha256_text(text: str) -> str:
    """Hex sha256 of the UTF-8 bytes of ``text``.

    A lone surrogate (which no UTF-8 column can hold, but a JSON escape can produce) is encoded
    with ``surrogatepass`` rather than raising, so hashing never fails; for every string without
    one this is exactly ``sha256(text.encode("utf-8"))``. A long text is encoded a piece at a time:
    the same digest, without a second full copy of a big document in memory.

    Args:
        text: Any string.

    Returns:
        64 lowercase hex characters.
    """
    if len(text) <= _HASH_PIECE:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    h = hashlib.sha256()
    for i in range(0, len(text), _HASH_PIECE):  # no surrogate pair is split: str is code points
        h.update(text[i : i + _HASH_PIECE].encode("utf-8", "surrogatepass"))
    return h.hexdigest()
