"""Include/exclude globs: one table of (pattern, path, expected) pins what a pattern selects.

The table was run against the hand-written glob translation this project used before and against
the library that replaced it; both agree on every row. Paths are '/'-separated and relative to a
source root (a folder, or the prefix of an ``s3://`` source), as discovery passes them.
"""

from __future__ import annotations

import pytest

from embedpipe.config import SourceSettings
from embedpipe.sources.globs import PathFilter

GLOBS: list[tuple[str, str, bool]] = [
    # * : any characters within one folder, a leading dot included
    ("*.md", "a.md", True),
    ("*.md", "x/a.md", False),
    ("*.md", ".md", True),
    ("*", "a.md", True),
    ("*", "x/a.md", False),
    ("*", ".hidden", True),
    ("a*", "abc.txt", True),
    ("a*", "b/abc.txt", False),
    ("*.md", "notes.md/a.txt", False),  # a pattern names files, not the folders above them
    ("docs/*", "docs/a.md", True),
    ("docs/*", "docs/a/b.md", False),
    ("*/*.md", "x/a.md", True),
    ("*/*.md", "a.md", False),
    # ** : any depth, none included
    ("**/*.md", "a.md", True),
    ("**/*.md", "x/y/a.md", True),
    ("**/*.md", "x/y/a.mdx", False),
    ("**/*.md", "x.md/y.txt", False),
    ("**", "a.md", True),
    ("**", "x/y/z.md", True),
    ("**", ".hidden/x.md", True),
    ("docs/**", "docs/a/b.txt", True),
    ("docs/**", "docs/a.txt", True),
    ("docs/**", "other/docs/a.txt", False),
    ("docs/**", "docs", False),
    ("docs/**", "docsx/a.txt", False),
    ("**/drafts/**", "a/drafts/b.md", True),
    ("**/drafts/**", "drafts/b.md", True),
    ("**/drafts/**", "a/drafts.md", False),
    ("a/**/b.md", "a/b.md", True),
    ("a/**/b.md", "a/x/y/b.md", True),
    ("a/**/b.md", "ab.md", False),
    ("a/**/b.md", "x/a/b.md", False),
    ("**/x/*.md", "x/a.md", True),
    ("**/x/*.md", "x/y/a.md", False),
    ("**/x/*.md", "p/q/x/a.md", True),
    ("**/*.md", "a/b/c/d/e/f/g/h.md", True),
    # ** inside a name still reaches any depth
    ("**.md", "a.md", True),
    ("**.md", "x/y/a.md", True),
    ("**.md", "x/y/a.txt", False),
    ("docs**", "docs/a/b.txt", True),
    ("docs**", "docs.txt", True),
    ("docs**", "other/docs.txt", False),
    ("a**b.md", "a/x/yb.md", True),
    ("a**b.md", "ab.md", True),
    ("a**b.md", "x/ab.md", False),
    # ? : one character, never '/'
    ("file?.txt", "file1.txt", True),
    ("file?.txt", "file10.txt", False),
    ("file?.txt", "file/.txt", False),
    ("?.md", "a.md", True),
    ("?.md", ".md", False),
    ("??.md", "ab.md", True),
    ("a?b", "a/b", False),
    # character classes
    ("[ab].txt", "b.txt", True),
    ("[ab].txt", "c.txt", False),
    ("[!ab].txt", "b.txt", False),
    ("[!ab].txt", "c.txt", True),
    ("[^ab].txt", "c.txt", True),
    ("[^ab].txt", "a.txt", False),
    ("[a-c].txt", "b.txt", True),
    ("[a-c].txt", "d.txt", False),
    ("[a-].txt", "-.txt", True),
    ("[0-9][0-9].txt", "42.txt", True),
    ("[0-9][0-9].txt", "4x.txt", False),
    ("**/[!_]*.md", "a/_draft.md", False),
    ("**/[!_]*.md", "a/final.md", True),
    # everything else is literal: no regex, no braces, no negation, no extended globs, no escapes
    ("a+b(1).txt", "a+b(1).txt", True),
    ("a.b", "axb", False),
    ("a{b,c}.txt", "ab.txt", False),
    ("a{b,c}.txt", "a{b,c}.txt", True),
    ("$x^.txt", "$x^.txt", True),
    ("[unclosed.txt", "[unclosed.txt", True),
    ("!x.md", "!x.md", True),
    ("!x.md", "y.md", False),
    ("#x.md", "#x.md", True),
    ("a|b.md", "a|b.md", True),
    ("a|b.md", "a.md", False),
    ("@(a|b).md", "a.md", False),
    ("~/a.md", "~/a.md", True),
    ("a b.md", "a b.md", True),
    ("100%.md", "100%.md", True),
    ("ids.jsonl#x.txt", "ids.jsonl#x.txt", True),
    ("a\\b.md", "a\\b.md", True),
    ("a\\b.md", "ab.md", False),
    ("a\\*.md", "a\\x.md", True),
    ("a\\*.md", "a*.md", False),
    # a leading '/', './' or '../': the paths are relative, so the pattern names none of them
    ("/a.md", "a.md", False),
    ("/**/*.md", "a.md", False),
    ("./a.md", "a.md", False),
    ("../a.md", "a.md", False),
    # folders: a pattern names files; a folder's files are matched by folder/**
    ("docs/", "docs/a.md", False),
    ("docs", "docs/a.md", False),
    ("drafts", "drafts", True),
    ("", "a.md", False),
    # dotfiles and hidden folders (the default exclude)
    ("**/.*", ".hidden", True),
    ("**/.*", "dir/.hidden", True),
    ("**/.*", "dir/visible", False),
    ("**/.*", ".git/config", False),
    ("**/.*/**", ".git/config", True),
    ("**/.*/**", "a/.git/objects/x", True),
    ("**/.*/**", "a/b.md", False),
    ("**/.*/**", ".hidden", False),
    ("**/*.md", ".hidden/a.md", True),
    ("**/*.md", "a/.hidden.md", True),
    # case is ignored
    ("**/*.TXT", "dir/Note.txt", True),
    ("*.MD", "x.md", True),
    ("**/*.md", "README.MD", True),
    ("Docs/**", "docs/a.md", True),
    ("[A-C].txt", "b.txt", True),
    ("ÄRGER.md", "ärger.md", True),
    # nested folders and object keys (relative to the s3:// prefix)
    ("2024/**/*.jsonl", "2024/01/02/part-0001.jsonl", True),
    ("2024/**/*.jsonl", "2023/01/part-0001.jsonl", False),
    ("**/*.parquet", "year=2024/month=01/data.parquet", True),
    ("logs/*/*.json", "logs/app/x.json", True),
    ("logs/*/*.json", "logs/app/deep/x.json", False),
    ("**/part-*.jsonl", "exports/part-0001.jsonl", True),
    ("**/*.md", "a//b.md", True),  # an object key with an empty segment: listed, then rejected
    ("**/*.md", "/b.md", True),
    # the documented defaults name every supported extension
    ("**/*.markdown", "notes/a.markdown", True),
    ("**/*.ndjson", "a.ndjson", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOBS)
def test_include_glob(pattern: str, path: str, expected: bool) -> None:
    assert PathFilter([pattern], [])(path) is expected


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOBS)
def test_exclude_glob(pattern: str, path: str, expected: bool) -> None:
    # "**" selects every path of the table, so the exclude alone decides
    assert PathFilter(["**"], [pattern])(path) is not expected


def test_exclude_wins_over_include() -> None:
    keep = PathFilter(["**/*.md", "**/*.txt"], ["private/**", "**/*.tmp.md"])
    assert keep("a/b.md")
    assert keep("b.txt")
    assert not keep("private/b.md")
    assert not keep("a/x.tmp.md")
    assert not keep("a/b.html")
    assert not PathFilter([], [])("a.md")
    assert not PathFilter([], ["**"])("a.md")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.md", True),
        ("docs/a/b.ndjson", True),
        ("docs/.draft.md", False),
        (".git/config.json", False),
        ("a/.cache/x.txt", False),
        ("a/b.pdf", False),
        ("a/b.MD", True),
        ("a/b.tar.parquet", True),
    ],
)
def test_default_globs(path: str, expected: bool) -> None:
    settings = SourceSettings()
    assert PathFilter(settings.include, settings.exclude)(path) is expected


@pytest.mark.parametrize(
    ("exclude", "folder", "expected"),
    [
        (["**/.*", "**/.*/**"], ".git", True),
        (["**/.*", "**/.*/**"], "a/.cache", True),
        (["**/.*", "**/.*/**"], "a/cache", False),
        (["private/**"], "private", True),
        (["private/**"], "private/deeper", True),
        (["private/**"], "public", False),
        (["private"], "private", True),
        ([], "anything", False),
    ],
)
def test_excludes_folder(exclude: list[str], folder: str, expected: bool) -> None:
    assert PathFilter(["**"], exclude).excludes_folder(folder) is expected
