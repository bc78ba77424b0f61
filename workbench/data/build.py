"""Building a corpus artifact from a recipe.

`assemble_corpus(recipe)` does the work without touching a lab: it reads the sources, cleans
and deduplicates their documents, fills each language's character budget from the sources in
recipe order (language-ID filtering only the documents it considers, so a build reads whole
sources but identifies only about the budget), splits train/validation by document and counts
everything for the manifest. `build_corpus(lab, recipe, ...)` runs it as a catalogued job and
writes the artifact atomically (train.parquet, validation.parquet, parallel.parquet,
manifest.json; see `workbench.data.store`).

Manifest keys added by a build:
    languages            the corpus languages, in recipe order
    counts               docs and chars: total, per_language, per_source, per_split,
                         per_language_split, per_language_source
    availability         per language and source: read, dropped_filters, dropped_duplicates,
                         clean (+ clean_chars: what was available after cleaning),
                         dropped_language_id (among the documents considered for the budget),
                         selected (+ selected_chars)
    shortfall_chars      languages whose sources ran out before their budget: chars missing
    parallel             parallel-set counts (groups, rows_per_language, held_out) or null
    language_id_among    the labels the language-ID filter chose among (null: filter off)
    build_seconds
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.data.cleaning import (
    Deduplicator,
    LanguageFilter,
    assign_splits,
    clean_documents,
    shuffled,
    take_within_budget,
)
from workbench.data.parallel import ParallelSet, build_parallel_set
from workbench.data.recipe import CorpusRecipe, load_recipe
from workbench.data.sources import Document, InstallationGuideSource, Source, make_source
from workbench.data.store import SPLITS, Corpus, load_corpus, write_split
from workbench.errors import InvalidInputError
from workbench.lab import Lab, validate_name

ProgressFn = Callable[[str, int, int], None]
"""progress(stage, done, total): called as each stage of a build finishes."""


@dataclass
class AssembledCorpus:
    """A built corpus before it is stored: documents (doc_id, text, language, source, split),
    the optional parallel set, and the manifest report (counts and availability)."""

    documents: pd.DataFrame
    parallel: ParallelSet | None
    report: dict[str, Any]


def assemble_corpus(recipe: CorpusRecipe, progress: ProgressFn | None = None) -> AssembledCorpus:
    """Read, clean, balance and split the documents a recipe describes (see module docstring)."""
    started = time.perf_counter()
    detect_among = recipe.languages or recipe.cleaning.language_id_among or None
    sources = [make_source(spec, detect_among) for spec in recipe.sources]
    for source in sources:
        source.check()
    languages = _corpus_languages(recipe, sources)
    total_steps = len(languages) + 1 + (recipe.parallel is not None)
    step = 0

    def advance(stage: str) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(stage, step, total_steps)

    parallel = None
    if recipe.parallel is not None:
        parallel = build_parallel_set(recipe.parallel, recipe.cleaning, recipe.seed, languages)
        for source in sources:
            if isinstance(source, InstallationGuideSource):
                source.held_out |= parallel.held_out
        advance("parallel set")

    among = sorted(set(recipe.cleaning.language_id_among or ()) | set(languages))
    accept = LanguageFilter(among) if recipe.cleaning.language_filter else None
    dedup = Deduplicator()
    selected: list[Document] = []
    availability: dict[str, dict[str, dict[str, int]]] = {}
    for language in languages:
        docs, availability[language] = _select_language(recipe, sources, language, dedup, accept)
        if not docs:
            raise InvalidInputError(_empty_language_message(language, availability[language]))
        selected.extend(docs)
        advance(f"language {language}")

    splits = assign_splits(selected, recipe.seed, recipe.validation_fraction)
    documents = pd.DataFrame(
        {
            "doc_id": pd.Series(range(len(selected)), dtype="int64"),
            "text": [d.text for d in selected],
            "language": [d.language for d in selected],
            "source": [d.source for d in selected],
            "split": splits,
        }
    )
    report = {
        "recipe": recipe.name,
        "languages": languages,
        "chars_per_language": recipe.chars_per_language,
        "language_id_among": among if accept is not None else None,
        "counts": count_documents(documents),
        "availability": availability,
        "shortfall_chars": _shortfall(documents, recipe),
        "parallel": parallel.stats if parallel is not None else None,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    advance("split and count")
    return AssembledCorpus(documents, parallel, report)


def _shortfall(documents: pd.DataFrame, recipe: CorpusRecipe) -> dict[str, int]:
    """Characters missing from each language's budget (languages whose sources ran out)."""
    if recipe.chars_per_language is None:
        return {}
    chars = documents.text.str.len().groupby(documents.language).sum()
    missing = {lang: recipe.chars_per_language - int(n) for lang, n in chars.items()}
    return {lang: n for lang, n in missing.items() if n >= recipe.cleaning.min_chars}


def _corpus_languages(recipe: CorpusRecipe, sources: list[Source]) -> list[str]:
    provided = {lang for source in sources for lang in source.languages()}
    if not recipe.languages:
        if not provided:
            raise InvalidInputError(f"the sources of recipe {recipe.name!r} provide no language")
        return sorted(provided)
    missing = [lang for lang in recipe.languages if lang not in provided]
    if missing:
        raise InvalidInputError(
            f"no source of recipe {recipe.name!r} provides language(s) {missing}; add a source "
            f"for them or drop them from `languages` (sources provide {sorted(provided)})"
        )
    return list(recipe.languages)


def _select_language(
    recipe: CorpusRecipe,
    sources: list[Source],
    language: str,
    dedup: Deduplicator,
    accept: LanguageFilter | None,
) -> tuple[list[Document], dict[str, dict[str, int]]]:
    """Fill one language's budget from the sources in recipe order; per-source availability."""
    candidates: list[Document] = []
    availability: dict[str, dict[str, int]] = {}
    for source in sources:
        raw = source.documents(language)
        if not raw:
            continue
        cleaned, stats = clean_documents(raw, recipe.cleaning, dedup)
        entry = availability.setdefault(source.label, Counter())
        entry.update(stats.to_dict())
        candidates.extend(shuffled(cleaned, recipe.seed, f"{language}/{source.label}"))
    taken = take_within_budget(
        candidates, recipe.chars_per_language, accept, min_chars=recipe.cleaning.min_chars
    )
    kept = Counter(d.source for d in taken.kept)
    kept_chars = Counter()
    for doc in taken.kept:
        kept_chars[doc.source] += len(doc.text)
    for label, entry in availability.items():
        entry["dropped_language_id"] = taken.rejected[label]
        entry["selected"] = kept[label]
        entry["selected_chars"] = kept_chars[label]
    return taken.kept, {label: dict(entry) for label, entry in availability.items()}


def _empty_language_message(language: str, availability: dict[str, dict[str, int]]) -> str:
    detail = "; ".join(
        f"{label}: {e.get('read', 0)} read, {e.get('dropped_filters', 0)} too short/long or not "
        f"text, {e.get('dropped_duplicates', 0)} duplicates, {e.get('dropped_language_id', 0)} "
        "identified as another language"
        for label, e in availability.items()
    ) or "no source has documents in it"
    return (
        f"no documents left for language {language!r} ({detail}); check the source's language "
        "label, or relax the cleaning settings of the recipe"
    )


def count_documents(documents: pd.DataFrame) -> dict[str, Any]:
    """Docs and characters per language, per source, per split and per language x split."""
    chars = documents.text.str.len()

    def counts(by: str | list[str]) -> dict[str, dict[str, int]]:
        grouped = documents.assign(chars=chars).groupby(by)
        table = grouped.agg(docs=("text", "size"), chars=("chars", "sum"))
        out: dict[str, Any] = defaultdict(dict)
        for key, row in table.iterrows():
            if isinstance(key, tuple):
                out[key[0]][key[1]] = {"docs": int(row.docs), "chars": int(row.chars)}
            else:
                out[key] = {"docs": int(row.docs), "chars": int(row.chars)}
        return dict(out)

    return {
        "total": {"docs": len(documents), "chars": int(chars.sum())},
        "per_language": counts("language"),
        "per_source": counts("source"),
        "per_split": counts("split"),
        "per_language_split": counts(["language", "split"]),
        "per_language_source": counts(["language", "source"]),
    }


def build_corpus(
    lab: Lab,
    recipe: str | Path | dict | CorpusRecipe = "default",
    name: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    chars_per_language: int | None = None,
) -> Corpus:
    """Build a corpus artifact (kind `corpus`) from a recipe and return it.

    `recipe`: a name in data/recipes/ (`default`), a JSON path, a dict or a CorpusRecipe.
    `name`: artifact name (default: the recipe's `corpus_name`, e.g. `default-corpus`).
    `chars_per_language` overrides the recipe's character budget per language.
    """
    recipe = load_recipe(recipe)
    if chars_per_language is not None:
        recipe = dataclasses.replace(recipe, chars_per_language=chars_per_language)
    name = validate_name(name or recipe.artifact_name)
    if lab.exists(name) and not overwrite:
        raise InvalidInputError(
            f"artifact {name!r} already exists in {lab.root}; pick another --name, pass "
            f"--overwrite, or remove it with `workbench lab rm {name}`"
        )
    config = recipe.to_dict()
    with lab.job("corpus", name, config, total=0) as job:

        def report(stage: str, done: int, total: int) -> None:
            job.update(done, total=total, force=True, stage=stage)
            if progress is not None:
                progress(stage, done, total)

        built = assemble_corpus(recipe, report)
        with lab.new_artifact("corpus", name, config=config, overwrite=overwrite) as art:
            for split in SPLITS:
                part = built.documents[built.documents.split == split]
                write_split(art.path, split, part.drop(columns="split"))
            if built.parallel is not None:
                built.parallel.frame.to_parquet(art.path / "parallel.parquet", index=False)
            art.manifest.update(built.report)
            totals = built.report["counts"]
            art.metrics.update(
                n_docs=totals["total"]["docs"],
                n_chars=totals["total"]["chars"],
                n_languages=len(built.report["languages"]),
                n_parallel_groups=(built.parallel.stats["groups"] if built.parallel else 0),
                build_seconds=built.report["build_seconds"],
            )
    return load_corpus(lab, name)
