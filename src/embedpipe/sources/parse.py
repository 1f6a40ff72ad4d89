"""Parsing: a shard of file refs into an Arrow table of documents (plain Python, no Prefect).

Each kind of file (:mod:`embedpipe.sources.kinds`) has its parser here: text and Markdown are read
whole, HTML through :func:`~embedpipe.sources.text.html_to_text`, and JSON, JSONL, CSV and Parquet
as records keyed by ``source.id_field`` (or their row number). Anything that cannot be used becomes
a :class:`~embedpipe.schemas.Reject` with a reason; nothing raises out of a read for bad input.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.config import SourceSettings
from embedpipe.errors import RejectedInput
from embedpipe.hashing import sha256_text
from embedpipe.schemas import C, Reject, docs_schema
from embedpipe.sources.docids import make_doc_id
from embedpipe.sources.files import FileRef, SourceFS
from embedpipe.sources.text import clean_text, decode_text, html_to_text

READER_VERSION = 1
"""Raised whenever a change to the parsers changes the documents a record file yields."""


def reader_identity(settings: SourceSettings) -> dict[str, Any]:
    """What a record file's documents depend on besides its bytes: the parsers and their fields.

    A run skips an unchanged JSON/JSONL/CSV/Parquet file only while this equals what the table
    records for the file's source (:func:`reader_map`).
    """
    return {"version": READER_VERSION, "text_field": settings.text_field, "id_field": settings.id_field}


def reader_map(raw: str | None) -> dict[str, dict[str, Any]]:
    """The table's record of which reader settings each source root was last read with in full.

    Anything unreadable counts as no record (every record file is then read).
    """
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, dict)}


def updated_reader_map(
    stored: dict[str, dict[str, Any]], scopes: Sequence[tuple[str, bool]], identity: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """``stored`` after a run that read ``scopes`` ((root, whole root?)) with ``identity``.

    A whole root was read in full with these settings (its unchanged files were read with them
    earlier): it records them. A run over single files of a root with other settings leaves the
    root's other files as they were: its record is dropped, so the next run reads them all.
    """
    out = dict(stored)
    for root, whole in scopes:
        if whole:
            out[root] = identity
        elif out.get(root) != identity:
            out.pop(root, None)
    return out


# --------------------------------------------------------------------------- records

Record = tuple[str | None, str, dict[str, Any] | None]
"""(record key or None for whole-file documents, text, other fields)."""


def _record(obj: Any, where: str, settings: SourceSettings, row: int) -> Record:
    if not isinstance(obj, dict):
        raise RejectedInput(
            f"{where}: expected an object with field {settings.text_field!r}, got {type(obj).__name__}"
        )
    text = obj.get(settings.text_field)
    if text is None:
        raise RejectedInput(f"{where}: no field {settings.text_field!r} (source.text_field)")
    if not isinstance(text, str):
        raise RejectedInput(
            f"{where}: field {settings.text_field!r} is {type(text).__name__}, expected a string"
        )
    text = clean_text(text)
    if not text.strip():
        raise RejectedInput(f"{where}: field {settings.text_field!r} is empty")
    rid = obj.get(settings.id_field)
    key = (
        str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) != "" else str(row)
    )
    meta = {k: v for k, v in obj.items() if k != settings.text_field}
    try:  # JSON escapes can carry lone surrogates, which no UTF-8 column can hold
        text.encode("utf-8")
        json.dumps(meta, ensure_ascii=False, default=str).encode("utf-8")
        key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RejectedInput(f"{where}: invalid Unicode (lone surrogate at position {e.start})") from None
    return key, text, meta


def iter_records(ref: FileRef, settings: SourceSettings) -> Iterator[Record | Reject]:
    """Parse one file (or part) into records; per-record problems come out as rejects.

    Raises:
        RejectedInput: The whole file is unusable.
    """
    if ref.kind == "parquet":
        yield from _parquet_records(ref, settings)
        return
    if ref.kind == "jsonl":
        yield from _jsonl_records(ref, settings)
        return
    try:
        with SourceFS(ref.source, settings).open(ref.path) as fh:
            data = fh.read()
    except OSError as e:
        raise RejectedInput(f"unreadable file: {e.strerror or e}") from None
    if not data or data.isspace():  # no stripped copy of a big file
        raise RejectedInput("empty file")
    text = decode_text(data)
    del data  # the bytes are not needed while the text is being used
    if ref.kind == "text":
        yield None, text, None
    elif ref.kind == "html":
        yield None, html_to_text(text), None
    elif ref.kind == "json":
        yield from _json_records(ref, text, settings)
    elif ref.kind == "csv":
        yield from _csv_records(ref, text, settings)
    else:  # pragma: no cover - discovery only emits known kinds
        raise RejectedInput(f"unsupported kind {ref.kind}")


def _json_records(ref: FileRef, text: str, settings: SourceSettings) -> Iterator[Record | Reject]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RejectedInput(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise RejectedInput("invalid JSON: nested too deeply") from None
    if isinstance(obj, dict):
        _, body, meta = _record(obj, "document", settings, 1)
        yield None, body, meta
    elif isinstance(obj, list):
        if not obj:
            raise RejectedInput("empty JSON array")
        for row, item in enumerate(obj, start=1):
            try:
                yield _record(item, f"item {row}", settings, row)
            except RejectedInput as e:
                yield Reject(path=make_doc_id(ref.path, str(row)), reason=str(e), source=ref.source)
    else:
        raise RejectedInput(
            f"JSON top level is {type(obj).__name__}; expected an object or an array of objects"
        )


def _jsonl_records(ref: FileRef, settings: SourceSettings) -> Iterator[Record | Reject]:
    start, stop, row = ref.part if ref.part else (0, ref.size, 1)
    fh = SourceFS(ref.source, settings).open(ref.path)  # closed below, also on early exit
    any_line = False
    with fh:
        fh.seek(start)
        pos = start
        while pos < stop:
            raw = fh.readline()
            if not raw:
                break
            pos += len(raw)
            line_no, row = row, row + 1
            if not raw.strip():
                continue
            any_line = True
            where = f"line {line_no}"
            try:
                if b"\x00" in raw:
                    raise RejectedInput(f"{where}: binary data (NUL bytes)")
                try:
                    line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise RejectedInput(f"{where}: invalid UTF-8 at byte {e.start} of the line") from None
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RejectedInput(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
                except RecursionError:
                    raise RejectedInput(f"{where}: invalid JSON: nested too deeply") from None
                yield _record(obj, where, settings, line_no)
            except RejectedInput as e:
                yield Reject(path=make_doc_id(ref.path, str(line_no)), reason=str(e), source=ref.source)
    if not any_line and ref.part is None:
        raise RejectedInput("empty file")


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their newlines, one slice at a time (``io.StringIO`` would hold
    a second, four-bytes-per-character copy of the whole file)."""
    i, n = 0, len(text)
    while i < n:
        j = text.find("\n", i)
        j = n if j < 0 else j + 1
        yield text[i:j]
        i = j


def _csv_records(ref: FileRef, text: str, settings: SourceSettings) -> Iterator[Record | Reject]:
    csv.field_size_limit(max(1 << 20, int(settings.max_file_mb * 1024 * 1024)))
    reader = csv.reader(_lines(text), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise RejectedInput("empty CSV") from None
    except csv.Error as e:
        raise RejectedInput(f"malformed CSV header: {e}") from None
    header = [h.strip() for h in header]
    if settings.text_field not in header:
        raise RejectedInput(
            f"CSV has no column {settings.text_field!r} (source.text_field); "
            f"columns: {', '.join(header)[:200]}"
        )
    row = 0
    while True:
        row += 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield Reject(
                path=make_doc_id(ref.path, str(row)),
                reason=f"row {row}: malformed CSV: {e}",
                source=ref.source,
            )
            continue
        if not values or all(not v.strip() for v in values):
            row -= 1
            continue
        if len(values) != len(header):
            yield Reject(
                path=make_doc_id(ref.path, str(row)),
                reason=f"row {row} (line {reader.line_num}): expected {len(header)} fields, "
                f"got {len(values)}",
                source=ref.source,
            )
            continue
        try:
            yield _record(dict(zip(header, values, strict=True)), f"row {row}", settings, row)
        except RejectedInput as e:
            yield Reject(path=make_doc_id(ref.path, str(row)), reason=str(e), source=ref.source)
    if row == 1:
        raise RejectedInput("CSV has a header but no rows")


def _parquet_records(ref: FileRef, settings: SourceSettings) -> Iterator[Record | Reject]:
    source = SourceFS(ref.source, settings).open_random(ref.path)
    try:
        pf = pq.ParquetFile(source)
        names = pf.schema_arrow.names
    except Exception as e:
        raise RejectedInput(f"not a readable Parquet file: {type(e).__name__}: {e}") from None
    if settings.text_field not in names:
        raise RejectedInput(
            f"Parquet file has no column {settings.text_field!r} (source.text_field); "
            f"columns: {', '.join(names)[:200]}"
        )
    first_rg, stop_rg, row = ref.part if ref.part else (0, pf.metadata.num_row_groups, 1)
    for rg in range(first_rg, stop_rg):
        try:
            table = pf.read_row_group(rg)
        except Exception as e:
            raise RejectedInput(f"corrupt Parquet row group {rg}: {type(e).__name__}: {e}") from None
        for batch in table.to_batches(max_chunksize=4096):
            for obj in batch.to_pylist():
                try:
                    yield _record(obj, f"row {row}", settings, row)
                except RejectedInput as e:
                    yield Reject(path=make_doc_id(ref.path, str(row)), reason=str(e), source=ref.source)
                row += 1


# --------------------------------------------------------------------------- documents


def read_documents(refs: Sequence[FileRef], settings: SourceSettings) -> tuple[pa.Table, list[Reject], int]:
    """Read a shard of files into a documents table.

    Args:
        refs: Files (or parts) to read.
        settings: Text and id fields.

    Returns:
        ``(documents, rejects, docs_seen)``: the table follows :func:`docs_schema`; ``docs_seen``
        counts every document or record met, rejected ones included.
    """
    cols: dict[str, list[Any]] = {f.name: [] for f in docs_schema()}
    rejects: list[Reject] = []
    seen = 0
    keys_by_file: dict[tuple[str, str], set[str]] = {}
    for ref in refs:
        mtime = datetime.fromtimestamp(ref.mtime_ns / 1e9, tz=UTC)
        keys = keys_by_file.setdefault((ref.source, ref.path), set())
        try:
            for item in iter_records(ref, settings):
                seen += 1
                if isinstance(item, Reject):
                    rejects.append(item)
                    continue
                key, text, meta = item
                doc_id = make_doc_id(ref.path, key)
                if key is not None and key in keys:
                    rejects.append(
                        Reject(path=doc_id, reason=f"duplicate id {key!r} in this file", source=ref.source)
                    )
                    continue
                if not text.strip():
                    rejects.append(Reject(path=doc_id, reason="no text content", source=ref.source))
                    continue
                if key is not None:
                    keys.add(key)
                cols[C.DOC_ID].append(doc_id)
                cols[C.SOURCE].append(ref.source)
                cols[C.PATH].append(ref.path)
                cols[C.TEXT].append(text)
                cols[C.SIZE].append(ref.size)
                cols[C.MTIME].append(mtime)
                cols[C.DOC_HASH].append(sha256_text(text))
                cols[C.METADATA].append(
                    None
                    if meta is None
                    else json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)
                )
        except RejectedInput as e:
            seen += 1
            rejects.append(Reject(path=ref.path, reason=str(e), source=ref.source))
        except (OSError, ValueError, RecursionError, MemoryError) as e:
            seen += 1
            rejects.append(
                Reject(path=ref.path, reason=f"unreadable: {type(e).__name__}: {e}", source=ref.source)
            )
    return pa.table(cols, schema=docs_schema()), rejects, seen
