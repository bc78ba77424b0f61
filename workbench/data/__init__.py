"""Corpora: sources, cleaning, recipes, building and reading corpus artifacts.

    from workbench.data import build_corpus, load_corpus
    corpus = build_corpus(lab, "default")            # artifact `default-corpus`
    corpus.texts("train", language="fr")
"""

from workbench.data.build import AssembledCorpus, assemble_corpus, build_corpus, count_documents
from workbench.data.cleaning import (
    CleaningConfig,
    Deduplicator,
    LanguageFilter,
    assign_splits,
    clean_documents,
    normalize_text,
    take_within_budget,
)
from workbench.data.language_id import LanguageDetector
from workbench.data.parallel import ParallelConfig, ParallelSet, build_parallel_set
from workbench.data.recipe import CorpusRecipe, available_recipes, load_recipe
from workbench.data.sources import (
    Document,
    FortuneSource,
    HFDatasetSource,
    InstallationGuideSource,
    LocalTextSource,
    Source,
    make_source,
    parse_source_spec,
)
from workbench.data.store import SPLITS, Corpus, load_corpus, write_split

__all__ = [
    "SPLITS",
    "AssembledCorpus",
    "CleaningConfig",
    "Corpus",
    "CorpusRecipe",
    "Deduplicator",
    "Document",
    "FortuneSource",
    "HFDatasetSource",
    "InstallationGuideSource",
    "LanguageDetector",
    "LanguageFilter",
    "LocalTextSource",
    "ParallelConfig",
    "ParallelSet",
    "Source",
    "assemble_corpus",
    "assign_splits",
    "available_recipes",
    "build_corpus",
    "build_parallel_set",
    "clean_documents",
    "count_documents",
    "load_corpus",
    "load_recipe",
    "make_source",
    "normalize_text",
    "parse_source_spec",
    "take_within_budget",
    "write_split",
]
