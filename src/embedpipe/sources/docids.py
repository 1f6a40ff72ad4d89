"""Document ids: the one place that builds them and reads them back (plain Python).

A whole-file document's id is its path relative to the source root; a record's id is
``<path>#<record key>``. So that the first ``#`` is always the separator, ``%`` and ``#`` in the
*path* are percent-encoded (``%25``, ``%23``): a file literally named ``ids.jsonl#x.txt`` gets the id
``ids.jsonl%23x.txt`` and can no longer take the id of record ``x.txt`` of ``ids.jsonl``. Paths
without ``#`` or ``%`` (nearly all) keep the id they always had. Record keys are opaque: they are
never escaped, never resolved as paths, and a ``/`` or ``..`` in one means nothing.
"""

from __future__ import annotations

SEPARATOR = "#"


def escape_path(path: str) -> str:
    """``path`` with ``%`` and ``#`` percent-encoded (unchanged when it has neither)."""
    if "%" not in path and SEPARATOR not in path:
        return path
    return path.replace("%", "%25").replace(SEPARATOR, "%23")


def unescape_path(escaped: str) -> str:
    """The inverse of :func:`escape_path`."""
    if "%" not in escaped:
        return escaped
    return escaped.replace("%23", SEPARATOR).replace("%25", "%")


def make_doc_id(path: str, key: str | None = None) -> str:
    """The id of a whole-file document (``key=None``) or of record ``key`` of the file at ``path``."""
    return escape_path(path) if key is None else f"{escape_path(path)}{SEPARATOR}{key}"


def split_doc_id(doc_id: str) -> tuple[str, str | None]:
    """``(path, key)`` of a doc_id made by :func:`make_doc_id` (``key`` is ``None`` for a whole file)."""
    head, sep, key = doc_id.partition(SEPARATOR)
    return unescape_path(head), (key if sep else None)


def file_of(doc_id: str) -> str:
    """The file (relative path) a doc_id, or a reject's ``file#record`` path, belongs to."""
    return split_doc_id(doc_id)[0]


def is_legacy_id(doc_id: str, path: str) -> bool:
    """Whether ``doc_id`` is the form a document of ``path`` had before paths were escaped, and
    that form is no longer made (the path has ``#`` or ``%``): such a document changes id once."""
    if escape_path(path) == path:
        return False
    return doc_id == path or doc_id.startswith(path + SEPARATOR)
