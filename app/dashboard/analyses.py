"""Shared pieces of the analysis pages (sparsity laws, attention sparsity, depth utilization):
the lab's analysis artifacts of one kind, their tables (cached by file time), and the forms
that start the analysis jobs (validated by `job_forms.plan`, run through the CLI in the
background). The Lab page draws the same form fields for these job kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app.dashboard import common
from workbench.lab import Artifact


# -- artifacts and tables ----------------------------------------------------------------------
def analyses(analysis: str) -> list[Artifact]:
    """The lab's `analysis` artifacts made by `analysis` ("sparsity-law", "attention", "depth"),
    newest first."""
    arts = [a for a in common.artifacts("analysis") if a.manifest.get("analysis") == analysis]
    return sorted(arts, key=lambda a: a.created, reverse=True)


def choose_analysis(arts: list[Artifact], label: str, key: str) -> Artifact:
    """A selectbox over analysis artifacts (shown only when there is a choice)."""
    if len(arts) == 1:
        st.caption(f"Analysis artifact `{arts[0].name}`")
        return arts[0]
    names = [a.name for a in arts]
    name = st.selectbox(label, names, key=key)
    return arts[names.index(name)]


@st.cache_data(show_spinner=False, max_entries=64)
def _parquet(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_parquet(path)


def table(art: Artifact, name: str) -> pd.DataFrame | None:
    """Table `name` of an analysis artifact (cached by the file's time); None if not stored."""
    path = art.path / f"{name}.parquet"
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return _parquet(str(path), mtime)


def summary(art: Artifact) -> dict[str, Any]:
    return art.manifest.get("summary") or common.artifact_json(art, "summary.json") or {}


def checkpointed_models() -> list[str]:
    """Lab models that keep at least two checkpoints (what a sparsity-law analysis needs)."""
    from workbench.models.model_io import list_checkpoints

    return [a.name for a in common.artifacts("model") if len(list_checkpoints(Path(a.path))) >= 2]


# -- job forms ---------------------------------------------------------------------------------
def job_fields(kind: str, key: str = "", model: str | None = None) -> dict[str, Any]:
    """Draw the inputs of an analysis job (inside a form) and return their values."""
    values: dict[str, Any] = {}
    models = [a.name for a in common.artifacts("model")]
    if kind == "sparsity-law-lab":
        values["quick"] = st.checkbox(
            "Quick: a miniature lab (own small corpus, two tiny models, a few steps)",
            key=f"{key}-quick")
    elif kind == "sparsity-law":
        ready = checkpointed_models()
        values["models"] = st.multiselect("Models with kept checkpoints", ready, ready[:2],
                                          key=f"{key}-models")
        values["tokens"] = st.number_input("Evaluation tokens per checkpoint", 256, 1_000_000,
                                           16384, step=1024, key=f"{key}-tokens")
        values["corpus"] = _corpus_field(key)
        values["name"] = st.text_input("Name of the analysis", "", key=f"{key}-name",
                                       placeholder="default: sparsity-law-<first model>")
    elif kind in ("attention", "depth"):
        index = models.index(model) if model in models else 0
        values["model"] = st.selectbox("Model", models, index=index, key=f"{key}-model")
        values["tokens"] = st.number_input("Evaluation tokens", 256, 10_000_000, 32768,
                                           step=1024, key=f"{key}-tokens")
        values["corpus"] = _corpus_field(key)
        if kind == "attention":
            values["whatif"] = st.checkbox("Also measure the loss under sparse attention "
                                           "(block top-k, vertical-slash, BLASST)", True,
                                           key=f"{key}-whatif")
        else:
            values["fit_tokens"] = st.number_input(
                "Tokens the affine replacements are fitted on", 256, 1_000_000, 8192,
                step=1024, key=f"{key}-fit")
        values["name"] = st.text_input("Name of the analysis", "", key=f"{key}-name",
                                       placeholder=f"default: {kind}-<model>")
    return values


def _corpus_field(key: str) -> str:
    return st.selectbox("Corpus of the evaluation tokens",
                        [""] + [a.name for a in common.artifacts("corpus")],
                        format_func=lambda c: c or "the model's training corpus",
                        key=f"{key}-corpus")


def job_form(kind: str, button: str, key: str, model: str | None = None) -> None:
    """A form for analysis job `kind`; on submit the plan is checked and started (or its
    problems shown)."""
    with st.form(f"form-{key}"):
        values = job_fields(kind, key, model)
        submitted = st.form_submit_button(button, type="primary")
    if submitted:
        common.start_planned_job(kind, values)


def offer_default_lab(what: str, key: str) -> None:
    """The notice for a lab without models: build the default lab."""
    common.missing(f"{what} The lab has no language model yet: build the default lab first "
                   "(a corpus, a small LM, its activations and two SAEs).",
                   "Build the default lab", ["lab", "build", "default"], key=key)
