"""Corpus recipes: which sources, languages, budget, cleaning and parallel set make a corpus.

Recipes are JSON files in `data/recipes/` of the repository (`default.json` builds the default
multilingual corpus) or any JSON file given by path, or `CorpusRecipe` objects built in Python.

Sources are listed in priority order: for each language the earlier sources fill its character
budget first and later ones top it up (so the installation guide listed after the fortunes only
tops up languages whose fortunes fall short, and is the only source for French).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.data.cleaning import CleaningConfig
from workbench.data.parallel import ParallelConfig
from workbench.errors import InvalidInputError, NotFoundError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "data" / "recipes"


@dataclass
class CorpusRecipe:
    """Everything that defines a corpus build.

    sources: recipe entries for `workbench.data.sources.make_source`, in priority order.
    languages: ISO 639-1 codes to keep (empty: every language the sources provide).
    chars_per_language: character budget per language (None: no cap).
    validation_fraction: share of documents in the validation split (by document).
    corpus_name: default artifact name (else `<name>-corpus`).
    """

    name: str
    sources: list[dict[str, Any]]
    languages: list[str] = field(default_factory=list)
    chars_per_language: int | None = 250_000
    validation_fraction: float = 0.05
    seed: int = 0
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    parallel: ParallelConfig | None = None
    corpus_name: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.sources:
            raise InvalidInputError(f"recipe {self.name!r} lists no sources")
        if self.chars_per_language is not None and self.chars_per_language < 1:
            raise InvalidInputError("chars_per_language must be a positive number of characters")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise InvalidInputError("validation_fraction must lie in [0, 1)")

    @property
    def artifact_name(self) -> str:
        return self.corpus_name or f"{self.name}-corpus"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusRecipe:
        if not isinstance(data, dict):
            raise InvalidInputError("a recipe must be a JSON object")
        data = dict(data)
        try:
            cleaning = CleaningConfig(**(data.pop("cleaning", None) or {}))
            parallel = data.pop("parallel", None)
            parallel = ParallelConfig(**parallel) if parallel else None
            return cls(**data, cleaning=cleaning, parallel=parallel)
        except TypeError as exc:
            raise InvalidInputError(f"bad recipe field: {exc}") from exc


def available_recipes() -> list[str]:
    """Names of the recipes in `data/recipes/`."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json")) if RECIPES_DIR.is_dir() else []


def load_recipe(recipe: str | Path | dict | CorpusRecipe) -> CorpusRecipe:
    """A recipe from a name in `data/recipes/`, a JSON file path, a dict, or a recipe itself."""
    if isinstance(recipe, CorpusRecipe):
        return recipe
    if isinstance(recipe, dict):
        return CorpusRecipe.from_dict(recipe)
    path = Path(recipe)
    if path.suffix != ".json":
        path = RECIPES_DIR / f"{recipe}.json"
    if not path.is_file():
        raise NotFoundError(
            f"no corpus recipe {str(recipe)!r}; available: "
            f"{', '.join(available_recipes()) or 'none'} (or give a path to a .json recipe)"
        )
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"recipe file {path} is not valid JSON ({exc})") from exc
    data.setdefault("name", path.stem)
    return CorpusRecipe.from_dict(data)
