"""Reading text files in unknown legacy encodings and cutting text into units.

Debian's text packages are mostly UTF-8 but older files can be Latin-1, Latin-2 or KOI8-R. A
file is decoded with the first encoding of a list that decodes it without error; single-byte
encodings (which accept any bytes) belong at the end of that list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from workbench.errors import InvalidInputError

DEFAULT_ENCODINGS = ("utf-8", "cp1252", "latin-1")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
_FORTUNE_SEPARATOR = re.compile(r"^%[ \t\r]*$", re.MULTILINE)


def decode_bytes(data: bytes, encodings: Sequence[str] = DEFAULT_ENCODINGS) -> str:
    """Decode `data` with the first encoding in `encodings` that succeeds (BOM removed)."""
    for encoding in encodings:
        try:
            return data.decode(encoding).lstrip("\ufeff")
        except (UnicodeDecodeError, LookupError):
            continue
    # the final fallback never fails: undecodable bytes become U+FFFD
    return data.decode("utf-8", errors="replace").lstrip("\ufeff")


def read_text(path: Path, encodings: Sequence[str] = DEFAULT_ENCODINGS) -> str:
    """Read a text file, trying `encodings` in order (see `decode_bytes`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    return decode_bytes(data, encodings)


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of `text`, stripped, empty ones dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]


def split_fortunes(text: str) -> list[str]:
    """Entries of a fortune file: text between lines that hold only `%` (stripped, non-empty)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [e.strip("\n") for e in _FORTUNE_SEPARATOR.split(text) if e.strip()]
