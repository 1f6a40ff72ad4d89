"""Include/exclude globs on '/'-separated paths relative to a source root, matched by ``wcmatch``.

A pattern matches the whole path: ``*`` and ``?`` stay within one folder (and match a leading
dot), ``[...]`` is a character class (``[!...]`` or ``[^...]`` negated), ``**`` reaches any depth,
case is ignored, and every other character is literal (a backslash included: there are no escapes,
braces, negations or extended globs). A pattern names files: ``folder/**`` names a folder's files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from wcmatch import glob

FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.IGNORECASE | glob.FORCEUNIX
_NEVER = re.compile(r"(?!)")


def _any_depth(pattern: str) -> list[str]:
    """``pattern`` as globs in which ``**`` only ever stands as a whole folder segment.

    ``wcmatch`` reads a ``**`` inside a name (``**.md``, ``docs**``) as ``*``; here ``**`` reaches
    any depth wherever it stands, as this project always documented, so ``a**b`` becomes ``a*b``
    (within one folder) and ``a*/**/*b`` (across folders).
    """
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        if segment != "**" and "**" in segment:
            head, _, tail = segment.partition("**")
            left, right = "/".join([*segments[:i], head]), "/".join([tail.lstrip("*"), *segments[i + 1 :]])
            return _any_depth(f"{left}*{right}") + _any_depth(f"{left}*/**/*{right}")
    return [pattern]


def compile_globs(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regular expression that fully matches the paths any of ``patterns`` selects."""
    expanded = [g for p in patterns for g in _any_depth(p.replace("\\", "\\\\"))]  # '\' is literal
    regexes, _ = glob.translate(expanded, flags=FLAGS) if expanded else ([], [])
    return re.compile("|".join(regexes)) if regexes else _NEVER


class PathFilter:
    """Include/exclude globs matched against paths relative to a source root; exclude wins."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = compile_globs(include)
        self.exclude = compile_globs(exclude)

    def __call__(self, rel: str) -> bool:
        return self.include.fullmatch(rel) is not None and self.exclude.fullmatch(rel) is None

    def excludes_folder(self, rel: str) -> bool:
        """Whether the exclude globs skip everything under the folder ``rel``."""
        return self.exclude.fullmatch(rel) is not None or self.exclude.fullmatch(f"{rel}/_") is not None
