"""Issue 13 repros as a user runs them: the ``embedpipe run`` command with the real bundled model.

A symlink to a file outside the source folder, a 50 MB one-line text file and a CSV field of
10,485,760 ``x`` characters (one token the tokenizer cannot split) in one source folder: the
link and the two oversized documents are rejected with their reasons, the rest is served.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from embedpipe.config import get_settings
from embedpipe.schemas import C
from embedpipe.store import Store
from tests.helpers import write
from tests.integration.test_cli import SAMPLE_CORPUS, cli_env, embedpipe

pytestmark = pytest.mark.slow

WORDS = "alpha beta gamma delta vector search index table model token chunk memory"


def test_outside_symlink_huge_line_and_giant_token_via_the_cli(tmp_path: Path, prefect_harness: str) -> None:
    secret = write(tmp_path / "elsewhere" / "secret.txt", "root:x:0:0:root:/root:/bin/bash")
    src = tmp_path / "src"
    write(src / "ok.txt", "A normal document about vector search.")
    for name in ("what-are-embeddings.md", "vector-similarity.txt"):  # real text beside the hostile files
        write(src / name, (SAMPLE_CORPUS / "basics" / name).read_text())
    (src / "outside.txt").symlink_to(secret)
    line = (WORDS + " ") * (50 * 1024 * 1024 // (len(WORDS) + 1))
    write(src / "big.txt", line)  # about 50 MB, one line, under source.max_file_mb=64
    field = "x" * 10_485_760
    write(src / "f.csv", f"id,text\n1,{field}\n2,hello world\n")
    db = tmp_path / "db"

    out = embedpipe("run", str(src), "--db", str(db), "--json", cwd=tmp_path, env=cli_env(prefect_harness))

    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    reasons = {r["path"]: r["reason"] for r in summary["rejects"]}
    assert set(reasons) == {"outside.txt", "big.txt", "f.csv#1"}
    assert "outside the source folder" in reasons["outside.txt"]
    assert "chunk.max_chunks_per_doc=10,000" in reasons["big.txt"]
    # the 10 MB field is one token the tokenizer cannot split: every piece of it would be a lone
    # [UNK] (one meaningless vector), so the record is rejected rather than stored as junk chunks
    assert "no text the model can read" in reasons["f.csv#1"]
    assert "10,485,760 characters" in reasons["f.csv#1"]
    assert summary["gate"] == "passed"
    table = Store(get_settings({"store": {"uri": str(db)}}).store).open_table().to_arrow()
    assert set(table.column(C.DOC_ID).to_pylist()) == {
        "ok.txt",
        "f.csv#2",
        "what-are-embeddings.md",
        "vector-similarity.txt",
    }
    assert "root:x" not in " ".join(table.column(C.TEXT).to_pylist())
    assert max(pc.utf8_length(table.column(C.TEXT)).to_pylist()) < 254 * 100
