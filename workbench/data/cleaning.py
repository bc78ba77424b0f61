"""Cleaning a corpus: normalization, filters, deduplication, language ID, balancing, splits.

Each step is a small function over `Document`s so that it can be tested on its own:

- `normalize_text`: NFC, control characters removed, whitespace collapsed inside paragraphs
  (hard-wrapped lines joined), paragraphs kept as single newlines;
- `passes_filters`: length bounds and a minimum share of letters (drops ASCII art, tables);
- `Deduplicator`: exact deduplication of normalized texts (across sources and languages);
- `LanguageFilter`: keeps a document only if py3langid, restricted to the corpus languages,
  assigns it the language its source claims;
- `shuffled` + `take_within_budget`: deterministic balancing to a character cap per language;
- `assign_splits`: deterministic train/validation split by document (a hash of the text).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from workbench.data.language_id import LanguageDetector
from workbench.data.sources import Document
from workbench.errors import InvalidInputError

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# control and format characters other than newline and tab (which become spaces)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff]")


@dataclass
class CleaningConfig:
    """Filters applied to every document.

    min_chars / max_chars: bounds on the normalized length (characters).
    min_letter_fraction: minimum share of letters among non-space characters.
    language_filter: drop documents whose detected language differs from their label.
    language_id_among: languages the language ID chooses among (default: the corpus
        languages; for a one-language corpus give more, else the filter cannot reject anything).
    deduplicate: drop exact duplicates (after normalization).
    """

    min_chars: int = 20
    max_chars: int = 4000
    min_letter_fraction: float = 0.6
    language_filter: bool = True
    language_id_among: list[str] | None = None
    deduplicate: bool = True

    def __post_init__(self) -> None:
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise InvalidInputError(
                f"cleaning needs 1 <= min_chars <= max_chars; got {self.min_chars}, {self.max_chars}"
            )
        if not 0.0 <= self.min_letter_fraction <= 1.0:
            raise InvalidInputError("cleaning min_letter_fraction must lie in [0, 1]")


def normalize_text(text: str) -> str:
    """Unicode NFC, no control characters, one space between words, paragraphs on own lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text.replace("\t", " "))
    paragraphs = (" ".join(p.split()) for p in _PARAGRAPH_BREAK.split(text))
    return "\n".join(p for p in paragraphs if p)


def letter_fraction(text: str) -> float:
    """Share of letters among the non-whitespace characters (0 for empty text)."""
    visible = len(text) - sum(map(str.isspace, text))
    return sum(map(str.isalpha, text)) / visible if visible else 0.0


def passes_filters(text: str, config: CleaningConfig) -> bool:
    """Length within [min_chars, max_chars] and enough letters."""
    return (
        config.min_chars <= len(text) <= config.max_chars
        and letter_fraction(text) >= config.min_letter_fraction
    )


class Deduplicator:
    """Remembers texts seen so far; `is_new(text)` is True the first time only."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def is_new(self, text: str) -> bool:
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


@dataclass
class CleaningStats:
    """Counts of one cleaning pass: documents read, dropped per reason, and the clean rest."""

    read: int = 0
    dropped_filters: int = 0
    dropped_duplicates: int = 0
    clean: int = 0
    clean_chars: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def clean_documents(
    docs: Iterable[Document], config: CleaningConfig, dedup: Deduplicator | None = None
) -> tuple[list[Document], CleaningStats]:
    """Normalize, filter and (if `dedup` is given) deduplicate documents, keeping their order."""
    stats = CleaningStats()
    out = []
    for doc in docs:
        stats.read += 1
        text = normalize_text(doc.text)
        if not passes_filters(text, config):
            stats.dropped_filters += 1
            continue
        if dedup is not None and config.deduplicate and not dedup.is_new(text):
            stats.dropped_duplicates += 1
            continue
        out.append(Document(text, doc.language, doc.source, doc.origin))
        stats.clean += 1
        stats.clean_chars += len(text)
    return out, stats


class LanguageFilter:
    """Keeps documents whose detected language (among `languages`) equals their label."""

    def __init__(self, languages: Sequence[str]):
        try:
            self.detector = LanguageDetector(languages)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{exc}; or turn the language-ID filter off (recipe cleaning.language_filter: "
                "false)"
            ) from exc

    def __call__(self, doc: Document) -> bool:
        return self.detector.detect(doc.text)[0] == doc.language


def shuffled(docs: Sequence[Document], seed: int, key: str) -> list[Document]:
    """A copy of `docs` in a random order fixed by (`seed`, `key`)."""
    rng = random.Random(f"{seed}/{key}")
    out = list(docs)
    rng.shuffle(out)
    return out


@dataclass
class BudgetResult:
    """What `take_within_budget` kept, and what it rejected by `accept` (per source label)."""

    kept: list[Document] = field(default_factory=list)
    chars: int = 0
    rejected: Counter = field(default_factory=Counter)


def take_within_budget(
    docs: Iterable[Document],
    max_chars: int | None,
    accept: Callable[[Document], bool] | None = None,
    min_chars: int = 1,
) -> BudgetResult:
    """Take documents in order while their total length stays within `max_chars`.

    A document that would overflow the budget is skipped (a shorter later one may still fit);
    the scan stops once fewer than `min_chars` characters are left. `accept` (for example a
    `LanguageFilter`) is only asked about documents that fit, so expensive checks run on about
    `max_chars` characters, not on the whole source. `max_chars=None` takes everything accepted.
    """
    result = BudgetResult()
    for doc in docs:
        if max_chars is not None:
            if max_chars - result.chars < min_chars:
                break
            if result.chars + len(doc.text) > max_chars:
                continue
        if accept is not None and not accept(doc):
            result.rejected[doc.source] += 1
            continue
        result.kept.append(doc)
        result.chars += len(doc.text)
    return result


def split_of(text: str, seed: int, validation_fraction: float) -> str:
    """'validation' for a fixed `validation_fraction` of texts (by hash), else 'train'."""
    return "validation" if seeded_rank(text, seed) / 2**64 < validation_fraction else "train"


def assign_splits(
    docs: Sequence[Document], seed: int, validation_fraction: float
) -> list[str]:
    """Split label per document: by text hash, so a document's split never depends on which
    other documents were selected. Each language with at least two documents gets at least one
    validation document (the one with the smallest hash) when `validation_fraction > 0`."""
    if not 0.0 <= validation_fraction < 1.0:
        raise InvalidInputError(f"validation_fraction must lie in [0, 1); got {validation_fraction}")
    splits = [split_of(d.text, seed, validation_fraction) for d in docs]
    if validation_fraction > 0:
        by_language: dict[str, list[int]] = {}
        for i, doc in enumerate(docs):
            by_language.setdefault(doc.language, []).append(i)
        for indices in by_language.values():
            if len(indices) >= 2 and all(splits[i] == "train" for i in indices):
                first = min(indices, key=lambda i: seeded_rank(docs[i].text, seed))
                splits[first] = "validation"
    return splits


def seeded_rank(text: str, seed: int) -> int:
    """A 64-bit number fixed by (`seed`, `text`), uniform over texts."""
    return int.from_bytes(
        hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest(), "big"
    )
