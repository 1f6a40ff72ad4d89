"""Issue 13 repros through the sync flow: real Prefect (test harness), real LanceDB, the fake model.

No document can erase another's rows (doc_ids are unique by construction; a duplicate is a
reject), the one-time id change of file names with '#' or '%' is told, and nothing outside the
source folder reaches the table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from embedpipe.flows.sync import sync
from embedpipe.schemas import C
from embedpipe.store import Store
from tests.helpers import make_settings, write

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(src: Path, settings):
    state = sync([str(src)], settings, return_state=True)
    return state.result(raise_on_failure=False)


def texts_by_id(settings) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in Store(settings.store).open_table().to_arrow().select([C.DOC_ID, C.TEXT]).to_pylist():
        out.setdefault(r[C.DOC_ID], set()).add(r[C.TEXT])
    return out


def test_editing_a_file_named_like_a_record_keeps_the_records_rows(tmp_path: Path) -> None:
    """Issue 13 repro: editing ``ids.jsonl#x.txt`` removed the rows of record ``x.txt`` of ``ids.jsonl``."""
    src = tmp_path / "src"
    write(src / "ids.jsonl", json.dumps({"id": "x.txt", "text": "the record about apples"}) + "\n")
    write(src / "ids.jsonl#x.txt", "the file about pears")
    settings = make_settings(tmp_path)

    s1 = run(src, settings)
    assert (s1.status, s1.docs_new, s1.docs_rejected) == ("completed", 2, 0)
    write(src / "ids.jsonl#x.txt", "the file, edited, about plums")
    s2 = run(src, settings)

    assert (s2.docs_changed, s2.docs_unchanged, s2.docs_deleted) == (1, 1, 0)
    assert texts_by_id(settings) == {
        "ids.jsonl#x.txt": {"the record about apples"},
        "ids.jsonl%23x.txt": {"the file, edited, about plums"},
    }
    s3 = run(src, settings)
    assert (s3.docs_new, s3.docs_unchanged, s3.table_version) == (0, 2, None)


def test_legacy_ids_of_names_with_hash_change_once_and_the_run_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    write(src / "a#b.txt", "a file whose name has a hash")
    write(src / "plain.txt", "a plain file")
    settings = make_settings(tmp_path)  # skip_unchanged_files: the stat shortcut must not hide it
    run(src, settings)
    # the table as an earlier release wrote it: the path unescaped in the doc_id
    table = Store(settings.store).open_table()
    table.update(where=f"{C.DOC_ID} = 'a%23b.txt'", values={C.DOC_ID: "a#b.txt"})
    assert set(texts_by_id(settings)) == {"a#b.txt", "plain.txt"}

    with caplog.at_level(logging.WARNING):
        s2 = run(src, settings)

    assert (s2.status, s2.docs_new, s2.docs_deleted, s2.docs_unchanged) == ("completed", 1, 1, 1)
    assert set(texts_by_id(settings)) == {"a%23b.txt", "plain.txt"}
    assert any("docs_renamed=1" in r.getMessage() for r in caplog.records), caplog.text


def test_symlink_out_of_the_source_folder_never_reaches_the_table(tmp_path: Path) -> None:
    """Issue 13 repro: ``ln -s /etc/passwd src/outside.txt`` put /etc/passwd in the table."""
    secret = write(tmp_path / "elsewhere" / "secret.txt", "root:x:0:0:root:/root:/bin/bash")
    src = tmp_path / "src"
    write(src / "ok.txt", "fine")
    (src / "outside.txt").symlink_to(secret)
    settings = make_settings(tmp_path)

    s1 = run(src, settings)

    assert s1.status == "completed" and s1.docs_rejected == 1
    assert [(r.path, "outside the source folder" in r.reason) for r in s1.rejects] == [("outside.txt", True)]
    assert set(texts_by_id(settings)) == {"ok.txt"}


def test_a_document_rejected_while_chunking_keeps_its_stored_rows(tmp_path: Path) -> None:
    """A reject never deletes: an indexed file that grows past chunk.max_chunks_per_doc is rejected
    with the reason, and the rows an earlier version stored for it stay served."""
    src = tmp_path / "src"
    write(src / "grows.txt", "a short first version about apples")
    write(src / "other.txt", "another document about pears")
    settings = make_settings(tmp_path, chunk={"max_chunks_per_doc": 3}, source={"max_reject_ratio": 1.0})
    s1 = run(src, settings)
    assert (s1.status, s1.docs_new) == ("completed", 2)

    write(src / "grows.txt", "\n\n".join(f"paragraph {i} " + "word " * 300 for i in range(10)))
    s2 = run(src, settings)

    assert s2.docs_rejected == 1
    rejects = Store(settings.store).open_table("rejects").to_arrow().to_pylist()
    assert any(r["path"] == "grows.txt" and "chunk.max_chunks_per_doc=3" in r["reason"] for r in rejects)
    assert texts_by_id(settings)["grows.txt"] == {"a short first version about apples"}
    assert s2.docs_deleted == 0
