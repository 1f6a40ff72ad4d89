"""The files of a source root, local or in object storage, behind one small interface (no Prefect).

A source root is a folder or an ``s3://bucket/prefix``; :class:`SourceFS` lists, stats and opens
its files, and is the one place where the two kinds of root differ. Both are a ``pyarrow.fs``
filesystem (``LocalFileSystem``, or the ``S3FileSystem`` configured by the ``s3`` settings). Where a
folder is not read through it, the reason is a guard of :mod:`embedpipe.sources.guard`:

- a folder is walked with ``lstat`` (pyarrow's listing follows symlinks, and a symlink must be seen
  to be refused or read once under its target's path);
- a local file is opened with ``O_NOFOLLOW``, so a file swapped for a symlink since discovery is
  refused;
- an object key with an empty, ``.`` or ``..`` segment is a reject.

Both check the size limit from the listing, before anything is read, and give the size and
mtime that the stat shortcut (``source.skip_unchanged_files``) compares.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow.fs as pafs

from embedpipe.config import SourceSettings
from embedpipe.errors import RejectedInput, SourceError
from embedpipe.schemas import Reject
from embedpipe.sources import guard
from embedpipe.sources.globs import PathFilter
from embedpipe.sources.kinds import KINDS, kind_of
from embedpipe.store import objectstore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file (or one part of a large record file) to read."""

    source: str
    path: str
    size: int
    mtime_ns: int
    kind: str
    part: tuple[int, int, int] | None = None
    """For split files: (start, stop, first_row): byte range (JSONL) or row-group range (Parquet),
    and the 1-based row number of the part's first record."""
    part_bytes: int = 0
    """For split files: the bytes this part covers (uncompressed size for Parquet)."""

    @property
    def abspath(self) -> str:
        """The file's local path, or its ``s3://`` URI."""
        return SourceFS(self.source).uri(self.path)

    @property
    def weight(self) -> int:
        """Bytes this ref contributes to a shard."""
        return self.size if self.part is None else max(1, self.part_bytes)


Found = tuple[str, FileRef | Reject | None]
"""A path met under a source root, and its ref, its reject, or ``None`` for a link read elsewhere."""


# --------------------------------------------------------------------------- source roots


def normalize_source(source: str) -> str:
    """Absolute, symlink-free form of a source root, so the same folder is always the same source;
    ``s3://bucket/prefix`` without trailing or duplicate slashes for object storage."""
    if objectstore.is_s3(source):
        try:
            return objectstore.normalize_s3_uri(source)
        except ValueError as e:
            raise SourceError(f"bad source={source}: {e}") from None
    if "://" in source:
        raise SourceError(
            f"unsupported source={source}: only local folders and files and s3://bucket/prefix are supported"
        )
    return str(Path(source).expanduser().resolve())


def source_scope(raw: str, settings: SourceSettings) -> tuple[str, list[str] | None]:
    """The root of a source and, for a single file given as the source, its name.

    Raises:
        SourceError: The source does not exist (or an object store cannot be listed).
    """
    if objectstore.is_s3(raw):
        return SourceFS(normalize_source(raw), settings).scope()
    root_path = Path(raw).expanduser()
    if not root_path.exists() and not root_path.is_symlink():
        raise SourceError(f"source not found: path={raw}; pass an existing folder or file")
    if root_path.is_file():
        return str(root_path.resolve().parent), [root_path.resolve().name]
    return normalize_source(raw), None


# --------------------------------------------------------------------------- one root


class SourceFS:
    """List, stat and open the files under one normalized source root.

    Args:
        root: A normalized source root (:func:`normalize_source`): an absolute folder or
            ``s3://bucket/prefix``.
        settings: The size limit and the ``s3`` settings; only needed to list or open files.
    """

    def __init__(self, root: str, settings: SourceSettings | None = None) -> None:
        self.root = root
        self.remote = objectstore.is_s3(root)
        self._settings = settings

    @functools.cached_property
    def settings(self) -> SourceSettings:
        return self._settings if self._settings is not None else SourceSettings()

    @functools.cached_property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return objectstore.filesystem(self.root, self.settings.s3)

    def uri(self, rel: str) -> str:
        """The local path or ``s3://`` URI of the file at ``rel`` ('/'-separated) under the root."""
        return f"{self.root}/{rel}" if self.remote else os.path.join(self.root, *rel.split("/"))

    # ----------------------------------------------------------------------- listing

    def files(self, names: list[str] | None, keep: PathFilter, rejects: list[Reject]) -> Iterator[Found]:
        """The files under the root that ``keep`` selects (or the ``names`` given), in path order.

        Args:
            names: The file given as the source itself (read even when the globs would skip it,
                and locally even when it is a symlink), or ``None`` for the whole root.
            keep: The include/exclude globs.
            rejects: Receives a reject for each folder that cannot be listed or leads outside.

        Raises:
            SourceError: An object store cannot be listed.
        """
        if self.remote:
            listed = self._objects(names)
            return ((rel, r) for rel, r in listed.items() if names is not None or keep(rel))
        if names is not None:
            return ((rel, self._stat(rel, walked=False)) for rel in names)
        # lazily: excluded files are never stat'ed
        return ((rel, self._stat(rel, full=full)) for rel, full in self._walk(rejects, keep) if keep(rel))

    def scope(self) -> tuple[str, list[str] | None]:
        """For an ``s3://`` root: the root itself, or its parent and name when it names one object.

        Raises:
            SourceError: The bucket does not exist, the prefix holds no objects, or the store fails.
        """
        fs, path = self._fs
        try:
            info = fs.get_file_info(path)
            bucket = info if "/" not in path else None
            if info.type == pafs.FileType.NotFound and bucket is None:
                bucket = fs.get_file_info(path.split("/", 1)[0])
        except OSError as e:
            raise self._source_error(e) from None
        if info.type == pafs.FileType.File:
            parent, _, name = self.root.rpartition("/")
            return parent, [name]
        if bucket is not None and bucket.type == pafs.FileType.NotFound:
            raise SourceError(f"cannot read source={self.root}: the bucket does not exist")
        if info.type == pafs.FileType.NotFound:
            raise SourceError(
                f"source not found: {self.root} holds no objects; "
                "check the bucket and prefix (and s3.endpoint)"
            )
        return self.root, None

    def _walk(self, rejects: list[Reject], keep: PathFilter) -> Iterator[tuple[str, str]]:
        """(path relative to the root, '/'-separated; local path) of every file under the root."""
        root = self.root

        def onerror(e: OSError) -> None:
            rel = os.path.relpath(e.filename or root, root).replace(os.sep, "/")
            rejects.append(Reject(path=rel, reason=f"unreadable folder: {e.strerror or e}", source=root))

        for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
            dirnames.sort()
            # the folder relative to the root, '/'-separated ('' for the root itself): one relpath
            # per folder, not per file (a listing of a million files pays this per file otherwise)
            here = os.path.relpath(dirpath, root).replace(os.sep, "/")
            prefix = "" if here == "." else here + "/"
            for name in dirnames:  # folder symlinks are never followed; one leading out is reported
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    rel = os.path.relpath(full, root).replace(os.sep, "/")
                    where, _ = guard.link_target(root, full)
                    if where == "outside" and not keep.excludes_folder(rel):
                        reason = guard.outside_reason("folder")
                        rejects.append(Reject(path=rel, reason=reason, source=root))
            for name in sorted(filenames):
                yield prefix + name, os.path.join(dirpath, name)

    def _stat(self, rel: str, walked: bool = True, full: str | None = None) -> FileRef | Reject | None:
        """A ref for a file found under a folder, a reject, or ``None`` for a symlink whose target
        inside the root is read under its own path (see :mod:`embedpipe.sources.guard`)."""
        full = full if full is not None else self.uri(rel)
        try:
            st = os.lstat(full) if walked else os.stat(full)
        except OSError as e:
            return Reject(path=rel, reason=f"unreadable file: {e.strerror or e}", source=self.root)
        if stat.S_ISLNK(st.st_mode):
            where, target = guard.link_target(self.root, full)
            if where == "outside":
                return Reject(path=rel, reason=guard.outside_reason("file"), source=self.root)
            try:
                os.stat(full)
            except OSError:
                return Reject(path=rel, reason="unreadable file: broken symlink", source=self.root)
            log.debug("symlink path=%s: its target %s inside the source folder is read there", rel, target)
            return None
        if not stat.S_ISREG(st.st_mode):
            return Reject(path=rel, reason="not a regular file (device, pipe or socket)", source=self.root)
        return self._ref_or_reject(rel, st.st_size, st.st_mtime_ns)

    def _objects(self, names: list[str] | None) -> dict[str, FileRef | Reject]:
        """Objects under an ``s3://`` root (recursively), or the one object given, with size and mtime."""
        fs, base = self._fs
        try:
            if names is not None:
                infos = fs.get_file_info([f"{base}/{n}" for n in names])
            else:
                infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise self._source_error(e) from None
        found: dict[str, FileRef | Reject] = {}
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != pafs.FileType.File:  # "folders" are prefixes or zero-byte marker objects
                continue
            if not info.path.startswith(base + "/"):  # never anything beside the prefix
                continue
            rel = info.path[len(base) + 1 :]
            bad = guard.bad_object_key(rel)
            if bad is not None:
                found[rel] = Reject(path=rel, reason=bad, source=self.root)
                continue
            mtime_ns = info.mtime_ns if info.mtime_ns is not None else 0
            found[rel] = self._ref_or_reject(rel, int(info.size or 0), int(mtime_ns))
        return found

    def _ref_or_reject(self, rel: str, size: int, mtime_ns: int) -> FileRef | Reject:
        limit = int(self.settings.max_file_mb * 1024 * 1024)
        kind = kind_of(rel)
        if kind is None:
            return Reject(
                path=rel,
                reason=f"unsupported file type {Path(rel).suffix or '(none)'!r}; "
                f"supported: {', '.join(sorted(set(KINDS)))}",
                source=self.root,
            )
        if size > limit:
            return Reject(
                path=rel,
                reason=f"file too large: {size / 1048576:.1f} MiB > source.max_file_mb={limit / 1048576:g}",
                source=self.root,
            )
        return FileRef(source=self.root, path=rel, size=size, mtime_ns=mtime_ns, kind=kind)

    # ----------------------------------------------------------------------- reading

    def open(self, rel: str) -> IO[bytes]:
        """Open a file for reading bytes: a local file (never through a symlink), or a seekable
        buffered reader over an object (ranged GETs, so a part of a big object is read without
        downloading the rest).

        Raises:
            RejectedInput: The file cannot be opened (for an object: deleted since it was listed,
                or access denied).
        """
        if not self.remote:
            try:  # a file swapped for a symlink since discovery is refused, not followed
                return open(self.uri(rel), "rb", opener=lambda p, _flags: guard.open_nofollow(p))
            except OSError as e:
                raise RejectedInput(f"unreadable file: {e.strerror or e}") from None
        return io.BufferedReader(self.open_random(rel), buffer_size=1 << 20)  # type: ignore[arg-type]

    def open_random(self, rel: str) -> Any:
        """What Parquet reads from: the local path, or a random-access file over the object.

        Raises:
            RejectedInput: The object cannot be opened.
        """
        if not self.remote:  # pyarrow opens (and reports on) a local file itself
            return self.uri(rel)
        fs, base = self._fs
        try:
            return fs.open_input_file(f"{base}/{rel}")
        except OSError as e:
            raise RejectedInput(self._object_reason(e)) from None

    # ----------------------------------------------------------------------- errors

    def _source_error(self, e: BaseException) -> SourceError:
        reason, _ = objectstore.explain(e)
        message = f"cannot read source={self.root}: {reason}"
        return SourceError(objectstore.redact(message, objectstore.secrets_of(self.settings.s3)))

    def _object_reason(self, e: OSError) -> str:
        if isinstance(e, FileNotFoundError):
            return "unreadable file: the object no longer exists (deleted after it was listed?)"
        reason = objectstore.redact(objectstore.explain(e)[0], objectstore.secrets_of(self.settings.s3))
        return f"unreadable file: {reason}"
