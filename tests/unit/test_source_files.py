"""SourceFS on a local folder: listing through the globs, the size limit, and opening without links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedpipe.config import SourceSettings
from embedpipe.errors import RejectedInput
from embedpipe.schemas import Reject
from embedpipe.sources.files import FileRef, SourceFS, normalize_source
from embedpipe.sources.globs import PathFilter


def test_lists_stats_and_opens_a_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("alpha")
    (tmp_path / "big.txt").write_bytes(b"x" * 2048)
    (tmp_path / ".hidden.md").write_text("skipped")
    settings = SourceSettings(max_file_mb=1 / 1024)  # 1 KiB
    root = SourceFS(normalize_source(str(tmp_path)), settings)
    rejects: list[Reject] = []
    found = dict(root.files(None, PathFilter(settings.include, settings.exclude), rejects))
    assert sorted(found) == ["big.txt", "sub/a.md"] and rejects == []
    big, ref = found["big.txt"], found["sub/a.md"]
    assert isinstance(big, Reject) and "file too large" in big.reason
    assert isinstance(ref, FileRef) and (ref.size, ref.kind) == (5, "text")
    assert ref.mtime_ns == os.stat(tmp_path / "sub" / "a.md").st_mtime_ns
    assert ref.abspath == root.uri("sub/a.md") == str(tmp_path.resolve() / "sub" / "a.md")
    with root.open("sub/a.md") as fh:
        assert fh.read() == b"alpha"


def test_open_refuses_a_file_swapped_for_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").symlink_to(secret)
    root = SourceFS(normalize_source(str(tmp_path / "src")), SourceSettings())
    with pytest.raises(RejectedInput, match="unreadable file"):
        root.open("a.txt")
