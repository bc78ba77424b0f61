"""Forms for the steering jobs (run LangFIR, make a vector, evaluate steering), drawn on the
Lab page's "Start a job" tab and on the LangFIR and steering page where data is missing. The
values go through `job_forms.plan` (which validates them); a valid plan starts as a background
job through `common.start_job`."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.dashboard import common

KINDS = ("langfir", "steer-make", "steer-eval")
METHOD_HELP = ("langfir: kept features' decoder directions weighted by mean activation; "
               "langfir_eq: equal weights; diffmean: mean residual on the language minus the "
               "other languages'; saediff: the SAE features with the largest mean-activation "
               "difference")


def _names(kind: str) -> list[str]:
    return [a.name for a in common.artifacts(kind)]


def _index(options: list[str], value: str | None) -> int:
    return options.index(value) if value in options else 0


def _langfir_defaults() -> dict[str, str]:
    """The SAE at the deepest block (LangFIR wants a block output >= 1), its model and corpus."""
    from workbench.models.hooks import hook_layer

    saes = common.artifacts("sae")
    if not saes:
        return {}
    sae = max(saes, key=lambda a: (hook_layer(a.manifest.get("hook") or "") or 0,
                                   a.name == "default-topk"))
    model = sae.manifest.get("model") or ""
    corpus = ""
    lab = common.lab()
    if model and lab.exists(model):
        corpus = next((p for p in lab.get(model).parents
                       if lab.exists(p) and lab.get(p).kind == "corpus"), "")
    return {"sae": sae.name, "model": model, "corpus": corpus}


def _langfir_fields(key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    base = {**_langfir_defaults(), **defaults}
    saes, models, corpora = _names("sae"), _names("model"), _names("corpus")
    cols = st.columns(3)
    values = {
        "sae": cols[0].selectbox("SAE", saes, index=_index(saes, base.get("sae")),
                                 key=f"{key}-sae"),
        "model": cols[1].selectbox("Model (the SAE's)", models,
                                   index=_index(models, base.get("model")), key=f"{key}-model"),
        "corpus": cols[2].selectbox("Corpus", corpora, index=_index(corpora, base.get("corpus")),
                                    key=f"{key}-corpus"),
    }
    cols = st.columns([2, 2, 1, 1])
    values["name"] = cols[0].text_input("Name of the report", base.get("name", "my-langfir"),
                                        key=f"{key}-name")
    values["languages"] = cols[1].text_input("Languages (comma list; empty: all)", "",
                                             key=f"{key}-languages")
    values["tau"] = cols[2].number_input("tau", 0.01, 1.0, 0.3, 0.05, key=f"{key}-tau",
                                         help="a kept feature fires on at least this share "
                                              "of its language's tokens")
    values["tau_r"] = cols[3].number_input("tau_r", 0.01, 1.0, 0.1, 0.01, key=f"{key}-tau-r",
                                           help="... and on less than this share of random "
                                                "tokens")
    st.caption("Also stores the steering vectors `<name>-<language>-<method>`.")
    return values


def _make_fields(key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    from steering.making import METHODS
    from steering.vectors import DEFAULT_STRENGTH

    reports = _names("langfir")
    cols = st.columns([2, 1, 1, 2, 1])
    report = cols[0].selectbox("LangFIR report", reports,
                               index=_index(reports, defaults.get("report")), key=f"{key}-report")
    langs = ([str(x) for x in common.lab().get(report).manifest.get("languages", [])]
             if report else [])
    language = cols[1].selectbox("Language", langs, index=_index(langs, defaults.get("language")),
                                 key=f"{key}-language")
    method = cols[2].selectbox("Method", METHODS, index=_index(list(METHODS),
                                                               defaults.get("method")),
                               key=f"{key}-method", help=METHOD_HELP)
    name = cols[3].text_input("Name (empty: <report>-<language>-<method>)", "",
                              key=f"{key}-name")
    strength = cols[4].number_input("Default strength (x resid_norm)", -100.0, 100.0,
                                    float(defaults.get("strength", DEFAULT_STRENGTH)), 0.5,
                                    key=f"{key}-strength")
    return {"report": report, "language": language, "method": method, "name": name,
            "strength": strength}


def _eval_fields(key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    from steering.making import METHODS

    reports = _names("langfir")
    cols = st.columns([2, 2, 2])
    report = cols[0].selectbox("LangFIR report", reports,
                               index=_index(reports, defaults.get("report")), key=f"{key}-report")
    methods = cols[1].multiselect("Methods", METHODS, ["langfir", "diffmean"],
                                  key=f"{key}-methods", help=METHOD_HELP)
    strengths = cols[2].text_input("Strengths (x resid_norm; 0 = unsteered)", "0,2,4,8",
                                   key=f"{key}-strengths")
    cols = st.columns([2, 2, 1, 1])
    name = cols[0].text_input("Name (empty: <report>-eval)", "", key=f"{key}-name")
    targets = cols[1].text_input("Target languages (comma list; empty: all)", "",
                                 key=f"{key}-targets")
    prompts = cols[2].number_input("Prompts per language", 1, 100, 4, key=f"{key}-prompts")
    tokens = cols[3].number_input("Tokens per continuation", 1, 500, 24, key=f"{key}-tokens")
    return {"report": report, "methods": methods, "strengths": strengths, "name": name,
            "targets": targets, "prompts": prompts, "tokens": tokens}


FIELDS = {"langfir": _langfir_fields, "steer-make": _make_fields, "steer-eval": _eval_fields}
LABELS = {"langfir": "Run LangFIR", "steer-make": "Make the vector",
          "steer-eval": "Evaluate steering"}


def job_form(kind: str, key: str = "", defaults: dict[str, Any] | None = None) -> None:
    """Draw the form of steering job `kind` (a KINDS entry); on submit, validate and start it."""
    form_key = f"{key or 'steer'}-{kind}"
    with st.form(f"form-{form_key}"):
        values = FIELDS[kind](form_key, defaults or {})
        submitted = st.form_submit_button(LABELS[kind], type="primary")
    if submitted:
        common.start_planned_job(kind, values)
