"""MkDocs hook: what a page written for a forge's Markdown needs to read the same in the built site.

- Links to repository files outside ``docs/`` (``../deploy/prefect.yaml``) open the file on a forge; the
  site has no copy of it, so MkDocs would report it as not found. The hook checks that the file exists
  in the repository (a warning otherwise, which ``--strict`` turns into a failure) and keeps only the
  link's text in the site. Links inside ``docs/`` are left to MkDocs' own validation.
- A pipe inside a code span of a table row is written ``\\|`` for GitHub; Python-Markdown already
  ignores pipes inside code spans and would show the backslash, so the hook drops it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.repo_links")

_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_TABLE_ROW = re.compile(r"^\|.*$", re.M)
_CODE_SPAN = re.compile(r"`[^`\n]+`")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each link that leaves ``docs/`` by its text, after checking that its target exists, and
    unescape pipes in the code spans of table rows.

    Args:
        markdown: the page's Markdown source.
        page: the MkDocs page being built.
        config: the MkDocs configuration.
        files: the documentation files (unused).

    Returns:
        The Markdown with links to repository files reduced to their text.
    """
    docs = Path(config["docs_dir"]).resolve()
    repo = Path(config["config_file_path"]).resolve().parent
    here = (docs / page.file.src_path).parent

    def fix(m: re.Match[str]) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return m.group(0)
        resolved = (here / target.split("#", 1)[0]).resolve()
        if resolved.is_relative_to(docs):
            return m.group(0)
        if not resolved.is_relative_to(repo) or not resolved.exists():
            log.warning(
                "Doc file '%s' links to '%s', which is not a file of the repository.",
                page.file.src_path,
                target,
            )
            return m.group(0)
        return label

    def unescape_pipes(row: re.Match[str]) -> str:
        return _CODE_SPAN.sub(lambda span: span.group(0).replace("\\|", "|"), row.group(0))

    def prose(text: str) -> str:
        return _TABLE_ROW.sub(unescape_pipes, _LINK.sub(fix, text))

    # Code blocks are kept as they are: their brackets are not links, their pipes not cells.
    pieces, last = [], 0
    for block in _FENCE.finditer(markdown):
        pieces += [prose(markdown[last : block.start()]), block.group(0)]
        last = block.end()
    pieces.append(prose(markdown[last:]))
    return "".join(pieces)
