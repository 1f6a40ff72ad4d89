"""Discovery and parsing of source files into documents (plain Python, no Prefect).

Discovery walks each source root (a folder, a file, or an ``s3://bucket/prefix``) through
:class:`~embedpipe.sources.files.SourceFS`, the one place where local and object-storage files
differ, and returns small :class:`FileRef` records; large JSONL and Parquet files are split into
parts so that no shard has to hold a whole big file.
Reading turns a shard of refs into an Arrow table of documents. Anything that cannot be used becomes a
:class:`~embedpipe.schemas.Reject` with a reason; nothing raises out of a read for bad input.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedpipe.config import SourceSettings
from embedpipe.docids import make_doc_id
from embedpipe.errors import RejectedInput
from embedpipe.hashing import sha256_text
from embedpipe.schemas import C, Reject, docs_schema
from embedpipe.sources.files import FileRef, SourceFS, normalize_source, source_scope
from embedpipe.sources.globs import PathFilter
from embedpipe.sources.kinds import KINDS, SPLITTABLE

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "SPLITTABLE",
    "FileRef",
    "PathFilter",
    "SourceFS",
    "clean_text",
    "decode_text",
    "discover",
    "html_to_text",
    "iter_records",
    "normalize_source",
    "open_binary",
    "plan_shards",
    "read_documents",
    "sha256_text",
    "source_scope",
]

_BINARY_SNIFF = 8192
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# --------------------------------------------------------------------------- discovery


def discover(
    sources: Sequence[str], settings: SourceSettings, split_bytes: int
) -> tuple[list[FileRef], list[Reject]]:
    """List the files to read under each source, in a stable order.

    Args:
        sources: Folders or single files.
        settings: Include/exclude globs and the size limit.
        split_bytes: JSONL/Parquet files larger than this are split into parts of about this size.

    Returns:
        The file refs, and rejects for files that cannot be read at all (too large, unreadable,
        unsupported type).

    Raises:
        SourceError: A source does not exist.
    """
    refs: list[FileRef] = []
    rejects: list[Reject] = []
    keep = PathFilter(settings.include, settings.exclude)
    seen_roots: set[tuple[str, tuple[str, ...]]] = set()
    seen_files: set[tuple[str, str]] = set()  # a file under two given sources is read once
    for raw in sources:
        root, names = source_scope(raw, settings)
        key = (root, tuple(names or ()))
        if key in seen_roots:  # the same source given twice is read once
            continue
        seen_roots.add(key)
        for rel, ref_or_reject in SourceFS(root, settings).files(names, keep, rejects):
            if ref_or_reject is None or (root, rel) in seen_files:
                continue
            seen_files.add((root, rel))
            if isinstance(ref_or_reject, Reject):
                rejects.append(ref_or_reject)
                continue
            if ref_or_reject.kind in SPLITTABLE and ref_or_reject.size > split_bytes:
                refs.extend(_split(ref_or_reject, split_bytes, settings))
            else:
                refs.append(ref_or_reject)
    return refs, rejects


def _split(ref: FileRef, split_bytes: int, settings: SourceSettings) -> list[FileRef]:
    """Split a big JSONL file at line boundaries, or a Parquet file at row groups."""
    parts: list[FileRef] = []
    try:
        if ref.kind == "jsonl":
            start, line_no = 0, 1
            with open_binary(ref, settings) as fh:
                while start < ref.size:
                    fh.seek(start)
                    stop, lines = start, 0
                    while stop - start < split_bytes:
                        block = fh.read(min(1 << 20, split_bytes - (stop - start)))
                        if not block:
                            break
                        lines += block.count(b"\n")
                        stop += len(block)
                    if stop < ref.size:  # extend to the end of the current line
                        rest = fh.readline()
                        stop += len(rest)
                        lines += rest.count(b"\n")
                    parts.append(_part(ref, start, stop, line_no, stop - start))
                    line_no += lines
                    start = stop
        else:
            md = pq.ParquetFile(SourceFS(ref.source, settings).open_random(ref.path)).metadata
            row, acc, first_rg, first_row = 1, 0, 0, 1
            for rg in range(md.num_row_groups):
                acc += md.row_group(rg).total_byte_size
                if acc >= split_bytes or rg == md.num_row_groups - 1:
                    parts.append(_part(ref, first_rg, rg + 1, first_row, acc))
                    row += sum(md.row_group(i).num_rows for i in range(first_rg, rg + 1))
                    first_rg, first_row, acc = rg + 1, row, 0
    except Exception as e:  # unreadable or not Parquet: read it whole and let the reader reject it
        log.debug("cannot split path=%s: %s", ref.path, e)
        return [ref]
    return parts or [ref]


def open_binary(ref: FileRef, settings: SourceSettings) -> IO[bytes]:
    """Open a source file (or object) for reading bytes; see :meth:`SourceFS.open`.

    Raises:
        RejectedInput: The file cannot be opened.
    """
    return SourceFS(ref.source, settings).open(ref.path)


def _part(ref: FileRef, start: int, stop: int, first_row: int, nbytes: int) -> FileRef:
    return FileRef(ref.source, ref.path, ref.size, ref.mtime_ns, ref.kind, (start, stop, first_row), nbytes)


def plan_shards(
    refs: Sequence[FileRef], shard_bytes: int, shard_files: int, ramp: int = 0
) -> list[list[FileRef]]:
    """Group file refs into shards of about ``shard_bytes`` and at most ``shard_files`` files.

    With ``ramp`` > 0 the first ``ramp`` shards are smaller (``shard_bytes / 2**ramp``, then
    doubling), so the model gets its first chunks early while later shards are read and chunked
    behind it.
    """
    shards: list[list[FileRef]] = []
    cur: list[FileRef] = []
    weight = 0
    for ref in refs:
        k = len(shards)
        limit = shard_bytes >> (ramp - k) if k < ramp else shard_bytes
        if cur and (weight + ref.weight > max(1, limit) or len(cur) >= shard_files):
            shards.append(cur)
            cur, weight = [], 0
        cur.append(ref)
        weight += ref.weight
    if cur:
        shards.append(cur)
    return shards


# --------------------------------------------------------------------------- decoding


def decode_text(data: bytes) -> str:
    """Decode file bytes as text: UTF-8 (BOM optional) or UTF-16/32 with a BOM.

    Raises:
        RejectedInput: The bytes look binary or are not valid in the detected encoding.
    """
    encoding = "utf-8"
    for bom, enc in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            encoding = enc
            break
    else:
        if b"\x00" in data[:_BINARY_SNIFF]:
            raise RejectedInput("binary file (NUL bytes in the first 8 KiB); not text")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise RejectedInput(
            f"invalid {encoding.upper().replace('-SIG', '')} at byte {e.start}: {e.reason}; "
            "re-encode the file as UTF-8"
        ) from None
    return clean_text(text)


def clean_text(text: str) -> str:
    """Normalise line ends and drop control characters other than tab and newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


class _VisibleText(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object"})
    BLOCK = frozenset(
        {
            "address",
            "article",
            "aside",
            "blockquote",
            "dd",
            "div",
            "dl",
            "dt",
            "fieldset",
            "figcaption",
            "figure",
            "footer",
            "form",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "header",
            "hr",
            "li",
            "main",
            "nav",
            "ol",
            "p",
            "pre",
            "section",
            "table",
            "tbody",
            "thead",
            "tfoot",
            "tr",
            "td",
            "th",
            "ul",
            "title",
            "caption",
            "details",
            "summary",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML page: no script, style or template content; blocks become paragraphs."""
    parser = _VisibleText()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError as e:  # html.parser asserts on some malformed markup (e.g. "<![foo]>")
        raise RejectedInput(f"malformed HTML: {e}") from None
    raw = "".join(parser.parts)
    paragraphs = []
    for para in re.split(r"\n\s*\n", raw):
        lines = [" ".join(line.split()) for line in para.split("\n")]
        joined = "\n".join(line for line in lines if line)
        if joined:
            paragraphs.append(joined)
    return "\n\n".join(paragraphs)


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
        with open_binary(ref, settings) as fh:
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
    fh = open_binary(ref, settings)  # closed below, also on early exit
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
