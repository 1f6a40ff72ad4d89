"""Discovery stays inside its source root: symlinks, object keys, and files swapped after discovery.

Real files and symlinks under ``tmp_path``; every test checks both what is read and what is rejected.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedpipe.config import SourceSettings
from embedpipe.schemas import C
from embedpipe.sources.discover import discover
from embedpipe.sources.guard import OUTSIDE, bad_object_key, is_inside, link_target
from embedpipe.sources.parse import read_documents

BIG = 1 << 40


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def ingest(*sources: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(doc_id → text, reject path → reason) of discovering and reading ``sources``."""
    refs, found = discover([str(s) for s in sources], SourceSettings(), split_bytes=BIG)
    table, rejects, _ = read_documents(refs, SourceSettings())
    texts = dict(zip(table.column(C.DOC_ID).to_pylist(), table.column(C.TEXT).to_pylist(), strict=True))
    return texts, {r.path: r.reason for r in found + rejects}


def test_file_symlink_out_of_the_source_folder_is_rejected_not_read(tmp_path: Path) -> None:
    """Issue 13 repro: ``ln -s /etc/passwd src/outside.txt`` indexed /etc/passwd."""
    secret = put(tmp_path / "elsewhere" / "secret.txt", "root:x:0:0:root:/root:/bin/bash")
    src = tmp_path / "src"
    put(src / "ok.txt", "fine")
    (src / "outside.txt").symlink_to(secret)
    (src / "passwd.txt").symlink_to("/etc/passwd")
    (src / "rel.txt").symlink_to(Path("..") / "elsewhere" / "secret.txt")

    texts, reasons = ingest(src)

    assert texts == {"ok.txt": "fine"}
    assert set(reasons) == {"outside.txt", "passwd.txt", "rel.txt"}
    for reason in reasons.values():
        assert OUTSIDE in reason and "symlink to a file" in reason
        assert "/etc" not in reason and "elsewhere" not in reason  # the target is not disclosed


def test_folder_symlink_out_of_the_source_folder_is_rejected_not_followed(tmp_path: Path) -> None:
    put(tmp_path / "elsewhere" / "a.txt", "outside text")
    src = tmp_path / "src"
    put(src / "ok.txt", "fine")
    (src / "sub").mkdir()
    (src / "sub" / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (src / ".hidden-out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    texts, reasons = ingest(src)

    assert texts == {"ok.txt": "fine"}
    assert list(reasons) == ["sub/out"]  # the hidden one is excluded by the default globs
    assert OUTSIDE in reasons["sub/out"] and "not followed" in reasons["sub/out"]


def test_symlinks_inside_the_source_folder_are_read_once_at_their_target(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "docs" / "a.txt", "alpha")
    (src / "alias.txt").symlink_to(src / "docs" / "a.txt")
    (src / "relalias.txt").symlink_to(Path("docs") / "a.txt")
    (src / "docs-again").symlink_to(src / "docs", target_is_directory=True)

    texts, reasons = ingest(src)

    assert texts == {"docs/a.txt": "alpha"}
    assert reasons == {}


def test_symlinked_source_root_and_explicit_symlinked_file_are_the_users_choice(tmp_path: Path) -> None:
    real = tmp_path / "real"
    put(real / "a.txt", "alpha")
    (tmp_path / "root-link").symlink_to(real, target_is_directory=True)
    put(tmp_path / "elsewhere" / "b.txt", "beta")
    (tmp_path / "named.txt").symlink_to(tmp_path / "elsewhere" / "b.txt")

    texts, reasons = ingest(tmp_path / "root-link", tmp_path / "named.txt")

    assert texts == {"a.txt": "alpha", "b.txt": "beta"}
    assert reasons == {}


def test_file_given_as_source_and_under_a_given_folder_is_read_once(tmp_path: Path) -> None:
    put(tmp_path / "d" / "a.txt", "alpha")

    refs, _ = discover([str(tmp_path / "d"), str(tmp_path / "d" / "a.txt")], SourceSettings(), BIG)

    assert [(r.source, r.path) for r in refs] == [(str((tmp_path / "d").resolve()), "a.txt")]


def test_file_swapped_for_a_symlink_after_discovery_is_not_followed(tmp_path: Path) -> None:
    secret = put(tmp_path / "elsewhere" / "secret.txt", "secret")
    src = tmp_path / "src"
    put(src / "a.txt", "alpha")
    refs, _ = discover([str(src)], SourceSettings(), BIG)
    (src / "a.txt").unlink()
    (src / "a.txt").symlink_to(secret)

    table, rejects, _ = read_documents(refs, SourceSettings())

    assert table.num_rows == 0
    assert [r.path for r in rejects] == ["a.txt"]
    assert "unreadable file" in rejects[0].reason


def test_broken_symlink_pointing_outside_is_rejected_as_outside(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "ok.txt", "fine")
    (src / "gone.txt").symlink_to(tmp_path / "nowhere.txt")

    _, reasons = ingest(src)

    assert OUTSIDE in reasons["gone.txt"]


def test_link_target_and_is_inside(tmp_path: Path) -> None:
    root = str(tmp_path.resolve() / "r")
    os.makedirs(root)
    put(Path(root) / "x.txt", "x")
    os.symlink(os.path.join(root, "x.txt"), os.path.join(root, "in.txt"))
    os.symlink("/etc", os.path.join(root, "out"))

    assert link_target(root, os.path.join(root, "in.txt")) == ("inside", "x.txt")
    assert link_target(root, os.path.join(root, "out")) == ("outside", None)
    assert is_inside(root, root) and is_inside(root + "/a", root)
    assert not is_inside(root + "-sibling/a", root)  # a prefix of the name is not "inside"


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("a/b.txt", False),
        ("a..b.txt", False),
        ("..", True),
        ("../secret.txt", True),
        ("a/../../secret.txt", True),
        ("a/./b.txt", True),
        ("/abs.txt", True),
        ("a//b.txt", True),
    ],
)
def test_object_keys_that_could_leave_the_prefix_are_rejected(key: str, bad: bool) -> None:
    reason = bad_object_key(key)
    assert (reason is not None) == bad
    if bad:
        assert reason is not None and OUTSIDE in reason
