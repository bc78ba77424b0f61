"""Cleaning steps: normalization, filters, dedup, language ID, balancing, splits."""

from __future__ import annotations

import pytest

from workbench.data.cleaning import (
    CleaningConfig,
    Deduplicator,
    LanguageFilter,
    assign_splits,
    clean_documents,
    normalize_text,
    passes_filters,
    shuffled,
    take_within_budget,
)
from workbench.data.sources import Document
from workbench.errors import InvalidInputError


def doc(text: str, language: str = "en", source: str = "test") -> Document:
    return Document(text, language, source, "test")


def test_normalize_text_whitespace():
    raw = "  Hard-wrapped\tline\r\ncontinues   here.\n\n\n  Second\u200b paragraph.  \n"
    assert normalize_text(raw) == "Hard-wrapped line continues here.\nSecond paragraph."


def test_filters_drop_short_long_and_non_text():
    config = CleaningConfig(min_chars=10, max_chars=60)
    assert passes_filters("A perfectly normal sentence.", config)
    assert not passes_filters("Too short", config)
    assert not passes_filters("word " * 20, config)
    assert not passes_filters("|__|  /\\  |__|  /\\  ||| --- ### 1234", config)


def test_exact_dedup_after_normalization():
    docs = [doc("Same  text here, twice."), doc("Same text\nhere, twice."),
            doc("Same text here,   twice. "), doc("A different sentence entirely.")]
    dedup = Deduplicator()
    kept, stats = clean_documents(docs, CleaningConfig(min_chars=5), dedup)
    assert [d.text for d in kept] == ["Same text here, twice.", "A different sentence entirely."]
    assert stats.dropped_duplicates == 2 and stats.clean == 2
    again, stats = clean_documents([doc("A different sentence entirely.", "de")],
                                   CleaningConfig(min_chars=5), dedup)
    assert again == [] and stats.dropped_duplicates == 1  # shared across sources and languages


def test_language_filter_drops_wrong_language_paragraph():
    accept = LanguageFilter(["en", "de", "fr"])
    assert accept(doc("The weather is lovely today and we are going for a walk in the park."))
    assert not accept(doc("Das Wetter ist heute schön und wir gehen im Park spazieren."))
    assert accept(doc("Das Wetter ist heute schön und wir gehen im Park spazieren.", "de"))


def test_balancing_caps_characters_deterministically():
    docs = [doc(f"document number {i} " + "x" * (i % 37)) for i in range(300)]
    first = take_within_budget(shuffled(docs, seed=1, key="en"), max_chars=2000)
    again = take_within_budget(shuffled(docs, seed=1, key="en"), max_chars=2000)
    other = take_within_budget(shuffled(docs, seed=2, key="en"), max_chars=2000)
    assert first.chars == sum(len(d.text) for d in first.kept) <= 2000
    assert first.chars > 2000 - 20  # filled up to the last document that fits
    assert [d.text for d in first.kept] == [d.text for d in again.kept]
    assert [d.text for d in first.kept] != [d.text for d in other.kept]
    everything = take_within_budget(docs, max_chars=None)
    assert len(everything.kept) == 300


def test_budget_asks_accept_only_about_documents_that_fit():
    asked = []

    def accept(d: Document) -> bool:
        asked.append(d.text)
        return "bad" not in d.text

    docs = [doc("good one"), doc("bad one!"), doc("good two"), doc("good three"), doc("good 4")]
    result = take_within_budget(docs, max_chars=16, accept=accept, min_chars=3)
    assert [d.text for d in result.kept] == ["good one", "good two"]
    assert result.rejected["test"] == 1
    assert asked == ["good one", "bad one!", "good two"]  # stopped once the budget was full


def test_split_is_deterministic_by_document():
    docs = [doc(f"sentence {i}", "en" if i % 2 else "de") for i in range(2000)]
    splits = assign_splits(docs, seed=0, validation_fraction=0.05)
    assert splits == assign_splits(docs, seed=0, validation_fraction=0.05)
    assert 0.03 < splits.count("validation") / len(docs) < 0.07
    # a document's split does not depend on which other documents were selected
    subset = docs[::3]
    assert assign_splits(subset, 0, 0.05) == splits[::3]
    assert assign_splits(docs, seed=1, validation_fraction=0.05) != splits
    # every language with two or more documents gets a validation document
    tiny = [doc("only one", "fr"), doc("two docs a", "it"), doc("two docs b", "it")]
    assert assign_splits(tiny, 0, 0.05).count("validation") == 1
    with pytest.raises(InvalidInputError):
        assign_splits(docs, 0, 1.5)
