"""Keep discovery inside its source root (plain Python, no Prefect).

A source root is read, and nothing else:

- A symlink met while walking a folder is never read as a document of its own. When its resolved
  target lies outside the source folder it is a reject (the reason names the location class,
  "outside the source folder", not the target, which may itself be sensitive); when the target is
  inside, the target is read once under its own path (if the include/exclude globs select it) and
  the link is skipped, so nothing is indexed twice. Folder symlinks are never followed.
- A file given explicitly as the source is the user's choice: it is read even when it is a symlink
  (its target is read, under the target's folder as the source root).
- An object key under an ``s3://`` prefix with an empty, ``.`` or ``..`` segment is a reject: such a
  key could name, or be confused with, an object outside the prefix.
- Local files are opened with ``O_NOFOLLOW`` where the platform has it, so a file swapped for a
  symlink between discovery and reading is refused instead of followed.
"""

from __future__ import annotations

import os

OUTSIDE = "outside the source folder"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def is_inside(target: str, root: str) -> bool:
    """Whether the absolute, resolved path ``target`` is ``root`` or lies under it."""
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def link_target(root: str, full: str) -> tuple[str, str | None]:
    """Where the symlink ``full`` (under the resolved ``root``) leads.

    Returns:
        ``("outside", None)`` when its resolved target lies outside ``root``, else
        ``("inside", rel)`` with the target's path relative to ``root`` ('/'-separated).
    """
    target = os.path.realpath(full)
    if not is_inside(target, root):
        return "outside", None
    return "inside", os.path.relpath(target, root).replace(os.sep, "/")


def outside_reason(kind: str) -> str:
    """The reject reason of a symlink to a ``kind`` ("file" or "folder") outside the root."""
    verb = "read" if kind == "file" else "followed"
    return f"symlink to a {kind} {OUTSIDE}; not {verb} (give the target itself as a source to index it)"


def bad_object_key(rel: str) -> str | None:
    """Why an object key (relative to its prefix) cannot be read safely, or ``None`` when it can."""
    parts = rel.split("/")
    if any(p in {"", ".", ".."} for p in parts):
        return (
            "object key has an empty, '.' or '..' segment: it may name an object "
            f"{OUTSIDE} (the s3:// prefix); not read"
        )
    return None


def open_nofollow(path: str) -> int:
    """A read-only file descriptor for ``path``, refusing a symlink as the last component.

    Raises:
        OSError: As :func:`os.open` (``ELOOP`` when ``path`` is a symlink).
    """
    return os.open(path, os.O_RDONLY | NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
