"""Prose paragraphs from DocBook-generated HTML (the Debian installation guide).

`html_paragraphs(html)` returns every `<p>` element (including empty ones, so that paragraph
indices line up between translations of a page) with all markup removed and entities decoded. Code and layout blocks (`<pre>`, `<table>`, screens, program listings,
navigation bars, tables of contents) are dropped with everything inside them. Inline code
(`<code>`, `<tt>`) stays as words of its sentence and is counted, so that `prose_paragraphs` can
drop paragraphs that are mostly code (command descriptions, not prose).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

# elements removed with their whole content
SKIPPED_TAGS = frozenset(
    {"pre", "table", "script", "style", "head", "title", "kbd", "samp", "xmp", "listing"}
)
# class names (DocBook roles) whose element is removed with its whole content
SKIPPED_CLASSES = frozenset(
    {"screen", "programlisting", "synopsis", "literallayout", "navheader", "navfooter", "toc",
     "informalexample", "example", "cmdsynopsis", "funcsynopsis", "informaltable", "table"}
)
INLINE_CODE_TAGS = frozenset({"code", "tt"})
VOID_TAGS = frozenset(
    {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source", "embed"}
)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class HtmlParagraph:
    """One `<p>` element: its plain text and the share of its characters inside inline code."""

    text: str
    code_fraction: float

    def is_prose(self, max_code_fraction: float = 0.3) -> bool:
        return bool(self.text) and self.code_fraction <= max_code_fraction


class _ParagraphCollector(HTMLParser):
    """Streams HTML; collects an HtmlParagraph for each <p> outside skipped blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        # open elements: (tag, starts a skipped block, opens a collected paragraph)
        self._open: list[tuple[str, bool, bool]] = []
        self._skip_depth = 0
        self._code_depth = 0
        self._para_depth = 0
        self._parts: list[str] = []
        self._code_chars = 0
        self.paragraphs: list[HtmlParagraph] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_TAGS:
            if tag == "br" and self._para_depth and not self._skip_depth:
                self._parts.append(" ")
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in SKIPPED_TAGS or bool(classes & SKIPPED_CLASSES)
        if skip:
            self._skip_depth += 1
        if tag in INLINE_CODE_TAGS:
            self._code_depth += 1
        para = tag == "p" and not self._skip_depth
        if para:
            if self._para_depth == 0:
                self._parts, self._code_chars = [], 0
            self._para_depth += 1
        self._open.append((tag, skip, para))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" and self._para_depth and not self._skip_depth:
            self._parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or not any(t == tag for t, _, _ in self._open):
            return  # stray end tag
        while self._open:  # close implicitly-ended children too
            open_tag, skip, para = self._open.pop()
            if skip:
                self._skip_depth -= 1
            if open_tag in INLINE_CODE_TAGS:
                self._code_depth -= 1
            if para:
                self._para_depth -= 1
                if self._para_depth == 0:
                    self._finish_paragraph()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._para_depth and not self._skip_depth:
            self._parts.append(data)
            if self._code_depth:
                self._code_chars += len("".join(data.split()))

    def _finish_paragraph(self) -> None:
        text = _SPACES.sub(" ", "".join(self._parts)).strip()
        visible = len(text.replace(" ", ""))
        fraction = min(1.0, self._code_chars / visible) if visible else 0.0
        self.paragraphs.append(HtmlParagraph(text, fraction))
        self._parts, self._code_chars = [], 0


def html_paragraphs(html: str) -> list[HtmlParagraph]:
    """Every `<p>` of an HTML page outside skipped blocks, in document order (empty ones too)."""
    parser = _ParagraphCollector()
    parser.feed(html)
    parser.close()
    return parser.paragraphs


def prose_paragraphs(html: str, max_code_fraction: float = 0.3) -> list[str]:
    """Texts of the non-empty paragraphs of a page that are not mostly inline code."""
    return [p.text for p in html_paragraphs(html) if p.is_prose(max_code_fraction)]
