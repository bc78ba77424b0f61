"""Language identification with py3langid, restricted to the languages of a corpus.

Restricting the label set (`set_languages`) matters: among nine candidate languages a short
German sentence is recognised far more reliably than among py3langid's 97.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import lru_cache

from workbench.errors import InvalidInputError


@lru_cache(maxsize=1)
def _all_labels() -> frozenset[str]:
    return frozenset(_load_identifier().nb_classes)


@lru_cache(maxsize=1)
def _load_identifier():
    """py3langid's bundled model with normalised probabilities (loaded once, about 1 s)."""
    from py3langid import langid

    cls = langid.LanguageIdentifier
    # py3langid >= 0.4 loads with from_model_file; older releases with from_pickled_model
    loader = cls.from_model_file if hasattr(cls, "from_model_file") else cls.from_pickled_model
    return loader(langid.MODEL_FILE, norm_probs=True)


def supported_languages() -> list[str]:
    """ISO 639-1 codes py3langid can recognise."""
    return sorted(_all_labels())


class LanguageDetector:
    """`detect(text) -> (language, probability)` among `languages` (all of py3langid's if None)."""

    def __init__(self, languages: Sequence[str] | None = None):
        self.languages = sorted(set(languages)) if languages else None
        if self.languages:
            unknown = sorted(set(self.languages) - _all_labels())
            if unknown:
                raise InvalidInputError(
                    f"language-ID cannot recognise {unknown}; use ISO 639-1 codes among "
                    f"{', '.join(supported_languages())}"
                )
        self._identifier = _identifier_for(tuple(self.languages or ()))

    def detect(self, text: str) -> tuple[str, float]:
        language, probability = self._identifier.classify(text)
        return str(language), float(probability)


@lru_cache(maxsize=8)
def _identifier_for(languages: tuple[str, ...]):
    identifier = copy.copy(_load_identifier())  # set_languages rebinds attributes: copy is safe
    if languages:
        identifier.set_languages(list(languages))
    return identifier
