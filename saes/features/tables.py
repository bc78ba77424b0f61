"""Feature statistics on disk: two Parquet tables in the SAE artifact folder.

`feature_stats.parquet` (one row per feature) and `feature_contexts.parquet` (one row per
example context); the columns are documented in `saes.feature_stats`. Both files are written
under temporary names first and renamed into place together, so readers never see half a file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

from workbench.errors import InvalidInputError, NotFoundError

FEATURES_FILE = "feature_stats.parquet"
CONTEXTS_FILE = "feature_contexts.parquet"


def write_tables(folder: Path, features: pd.DataFrame, contexts: pd.DataFrame) -> None:
    """Write both tables into `folder` (atomic per file; both renamed after both are written)."""
    folder = Path(folder)
    staged = []
    try:
        for frame, name in ((features, FEATURES_FILE), (contexts, CONTEXTS_FILE)):
            tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
            staged.append((tmp, folder / name))
            frame.to_parquet(tmp, index=False)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def read_tables(folder: Path, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, contexts) from `folder`; clear errors when missing or corrupt."""
    frames = []
    for name in (FEATURES_FILE, CONTEXTS_FILE):
        file = Path(folder) / name
        if not file.exists():
            raise NotFoundError(
                f"{what} has no feature statistics yet ({file} is missing); compute them with "
                "`workbench sae stats`"
            )
        try:
            frames.append(pd.read_parquet(file))
        except Exception as exc:  # pyarrow raises several unrelated types for damaged files
            raise InvalidInputError(
                f"the feature statistics of {what} ({file}) are corrupt ({exc}); recompute them "
                "with `workbench sae stats`"
            ) from exc
    return frames[0], frames[1]
