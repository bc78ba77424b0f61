"""Reading and writing corpus artifacts.

A corpus artifact folder holds:

    train.parquet, validation.parquet   columns: doc_id (int64), text (str), language (str,
                                        ISO 639-1 code), source (str)
    parallel.parquet (optional)         columns: group_id (str), language, text, source:
                                        the same paragraph in several languages
    manifest.json                       languages, counts per language/source/split
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Artifact, Lab

SPLITS = ("train", "validation")
CORPUS_COLUMNS = ("doc_id", "text", "language", "source")


@dataclass
class Corpus:
    """A stored corpus: documents per split, plus an optional parallel evaluation set."""

    artifact: Artifact

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def languages(self) -> list[str]:
        return list(self.artifact.manifest.get("languages", []))

    def frame(self, split: str = "train") -> pd.DataFrame:
        """All documents of a split as a DataFrame with CORPUS_COLUMNS."""
        if split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}; use one of {SPLITS}")
        return _read_parquet(self.path / f"{split}.parquet", f"split {split!r} of corpus {self.name!r}")

    def texts(self, split: str = "train", language: str | None = None) -> list[str]:
        df = self.frame(split)
        if language is not None:
            df = df[df.language == language]
        return df.text.tolist()

    def parallel(self) -> pd.DataFrame | None:
        """The parallel evaluation set (group_id, language, text, source), if the corpus has one."""
        file = self.path / "parallel.parquet"
        if not file.exists():
            return None
        return _read_parquet(file, f"parallel set of corpus {self.name!r}")


def load_corpus(lab: Lab, name: str) -> Corpus:
    return Corpus(lab.get(name, kind="corpus"))


def write_split(folder: Path, split: str, frame: pd.DataFrame) -> None:
    """Write one split (must have CORPUS_COLUMNS) into an artifact folder being built."""
    missing = [c for c in CORPUS_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"corpus split {split!r} lacks columns {missing}")
    frame.loc[:, list(CORPUS_COLUMNS)].reset_index(drop=True).to_parquet(
        folder / f"{split}.parquet", index=False
    )


def _read_parquet(file: Path, what: str) -> pd.DataFrame:
    if not file.exists():
        raise NotFoundError(f"{what} is missing ({file}); rebuild the corpus")
    try:
        return pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several unrelated types for damaged files
        raise InvalidInputError(f"{what} ({file}) is corrupt ({exc}); rebuild the corpus") from exc
