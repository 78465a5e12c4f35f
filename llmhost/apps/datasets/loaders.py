"""Text out of a document's bytes, by format: txt, md, html, pdf, jsonl, csv.

Each loader returns the text that is chunked and searched; citations' offsets point into it. A file
that is not what its format says (undecodable text, a broken PDF, a bad JSON line) is a
:class:`~llmhost.errors.RequestError` naming the problem, so nothing is stored.
"""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Any

from pypdf import PdfReader
from pypdf.errors import PyPdfError

from llmhost.errors import RequestError

__all__ = ["FORMATS", "extract_text", "format_of"]

FORMATS = ("txt", "md", "html", "pdf", "jsonl", "csv")
_EXTENSIONS = {
    "txt": "txt",
    "text": "txt",
    "log": "txt",
    "md": "md",
    "markdown": "md",
    "html": "html",
    "htm": "html",
    "pdf": "pdf",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "csv": "csv",
}
_TEXT_FIELDS = ("text", "content", "body")


def format_of(name: str, given: str | None) -> str:
    """The document's format: ``given``, else from the name's extension, else ``txt``."""
    if given is not None:
        if given not in FORMATS:
            raise RequestError(f"format must be one of {', '.join(FORMATS)}", param="format")
        return given
    return _EXTENSIONS.get(PurePath(name).suffix.lower().lstrip("."), "txt")


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RequestError("the document is not UTF-8 text (give its format, or convert it)") from None
    if "\x00" in text:
        raise RequestError("the document holds NUL bytes: it is not text")
    return text


class _HTMLText(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "section",
            "article",
            "pre",
            "blockquote",
            "table",
            "ul",
            "ol",
            "title",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def _html(text: str) -> str:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    joined = "".join(parser.parts)
    return re.sub(r"\n\s*\n+", "\n\n", re.sub(r"[ \t\r\f\v]+", " ", joined)).strip()


def _pdf(data: bytes) -> str:
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise RequestError(f"the PDF cannot be read: {exc}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _jsonl(text: str) -> str:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise RequestError(f"line {n} of the JSON lines is not JSON") from None
        field = next(
            (value[f] for f in _TEXT_FIELDS if isinstance(value, dict) and isinstance(value.get(f), str)),
            None,
        )
        out.append(field if field is not None else "\n".join(_strings(value)))
    return "\n\n".join(s for s in out if s.strip())


def _csv(text: str) -> str:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise RequestError(f"the CSV cannot be read: {exc}") from None
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    if not body:  # one row: no header to name the values
        return ", ".join(header)
    lines = []
    for row in body:
        pairs = [f"{h.strip()}: {v.strip()}" for h, v in zip(header, row, strict=False) if v.strip()]
        lines.append("\n".join(pairs))
    return "\n\n".join(line for line in lines if line)


def extract_text(data: bytes, fmt: str) -> str:
    """The searchable text of a document; raises RequestError for an unreadable or empty one."""
    if fmt == "pdf":
        text = _pdf(data)
    else:
        decoded = _decode(data)
        text = {"html": _html, "jsonl": _jsonl, "csv": _csv}.get(fmt, lambda t: t)(decoded)
    if not text.strip():
        raise RequestError("the document has no text to index")
    return text
