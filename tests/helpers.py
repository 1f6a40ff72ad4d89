"""Helpers shared by the test modules: paths, settings on a temporary database, writing documents.

Fixtures and hooks live in ``conftest.py``; plain functions and constants that modules import live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedpipe.config import Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = ROOT / "examples" / "corpus"


def make_settings(tmp_path: Path, **groups: dict[str, Any]) -> Settings:
    """Settings on a temporary database with the fake model unless ``model`` says otherwise."""
    # No full-text index unless a test asks (index={"fts": True}): building it is a table version of
    # its own, and most tests count versions. The vector index waits for index.min_rows anyway.
    overrides: dict[str, Any] = {
        "store": {"uri": str(tmp_path / "db")},
        "model": {"name": "fake:32"},
        "index": {"fts": False},
    }
    if str(groups.get("model", {}).get("name", "fake:")).startswith("fake:"):
        # The fake model is a bag of hashed words, not a semantic model: the bundled triplets and
        # scored pairs measure semantic quality, so tests of the fake model bring their own sets.
        overrides["checks"] = {"triplets": [], "pairs": []}
    for group, values in groups.items():
        overrides.setdefault(group, {}).update(values)
    return get_settings(overrides)


def chunked(
    tmp_path: Path,
    files: dict[str, str],
    *,
    model: str = "fake:16",
    budget: int = 20,
    src_name: str = "src",
    **groups: dict[str, Any],
) -> tuple[Settings, Any, Any, Any, str]:
    """Write ``files`` under ``tmp_path/src_name``, read and chunk them with the fake ``model``.

    Returns:
        The settings, the embedder, the chunks (Arrow), the table schema and the source root.
    """
    from embedpipe.chunking import chunk_documents
    from embedpipe.config import ModelSettings
    from embedpipe.sources.discover import discover
    from embedpipe.sources.parse import read_documents
    from embedpipe.tasks.embedding import table_schema
    from tests.fakes import FakeEmbedder

    settings = make_settings(tmp_path, model={"name": model}, **groups)
    src = tmp_path / src_name
    for name, body in files.items():
        write(src / name, body)
    refs, _ = discover([str(src)], settings.source, split_bytes=1 << 30)
    docs, rejects, _ = read_documents(refs, settings.source)
    assert not rejects
    embedder = FakeEmbedder(ModelSettings(name=model))
    chunks, _ = chunk_documents(docs, embedder.tokenizer, budget, 2)
    return settings, embedder, chunks, table_schema(embedder, settings), str(src.resolve())


def write(path: Path, content: str | bytes) -> Path:
    """Write a test document, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def commit_at_once(settings: Settings, staged: dict[str, list[Any]], schema: Any) -> list[BaseException]:
    """Commit each run's staged shards from its own thread, all released at the same moment.

    Returns the errors the commits raised (for the caller to assert on).
    """
    import threading

    from embedpipe.store import Store

    errors: list[BaseException] = []
    start = threading.Barrier(len(staged))

    def commit(rid: str) -> None:
        start.wait()
        try:
            Store(settings.store).commit(rid, staged[rid], schema)
        except BaseException as e:  # collected and returned
            errors.append(e)

    threads = [threading.Thread(target=commit, args=(r,)) for r in staged]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def python_json(code: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run ``python -c code args`` in a fresh process (offline); the JSON object it printed last."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        timeout=timeout,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
