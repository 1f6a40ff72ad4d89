"""Bytes to clean text: decoding, control characters and the visible text of HTML (plain Python).

Nothing here raises for bad input other than :class:`~embedpipe.errors.RejectedInput`, whose message
becomes the reject reason of the file.
"""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser

from embedpipe.errors import RejectedInput

_BINARY_SNIFF = 8192
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
