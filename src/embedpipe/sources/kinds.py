"""The file kinds a source may hold, by extension: the one list that settings and the parsers share."""

from __future__ import annotations

KINDS: dict[str, str] = {
    ".txt": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "html",
    ".htm": "html",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
"""Extension (lower case, with its dot) to the reader that parses it."""

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(KINDS)
"""The extensions read by default (``source.include`` is one ``**/*EXT`` glob for each)."""

SPLITTABLE = frozenset({"jsonl", "parquet"})
"""Kinds whose large files are split into parts (JSONL at line boundaries, Parquet at row groups)."""


def kind_of(rel: str) -> str | None:
    """The kind of the file at the '/'-separated path ``rel`` (extension case ignored), or ``None``.

    The extension is ``PurePosixPath(rel).suffix`` (a leading or trailing dot is none), taken
    without building a path object: discovery calls this once per listed file.
    """
    name = rel[rel.rfind("/") + 1 :]
    dot = name.rfind(".")
    return KINDS.get(name[dot:].lower()) if 0 < dot < len(name) - 1 else None
