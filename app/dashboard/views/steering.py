"""LangFIR and steering: a LangFIR report's kept features per language, their selectivity, the
stability of the kept sets, the directional-ablation matrix and the register check; a steering
playground (unsteered vs steered, same seed); the stored steering evaluations; and exports of a
vector as safetensors, GGUF or Neuronpedia JSON."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.dashboard import common, steer_forms
from steering import report_views as views
from workbench.errors import InvalidInputError, WorkbenchError
from workbench.lab import Lab

REPORT_KEY = "steer-report"
METHOD_TITLES = {"langfir": "LangFIR (mean-weighted)", "langfir_eq": "LangFIR (equal weights)",
                 "diffmean": "DiffMean", "saediff": "SAE mean-difference"}
FORMAT_TITLES = {"safetensors": "safetensors pair", "gguf": "llama.cpp GGUF control vector",
                 "neuronpedia": "Neuronpedia steering JSON"}
FORMAT_NOTES = {
    "safetensors": "Unit directions keyed by hook plus the JSON sidecar (resid_norm, default "
                   "strength, features); `SteeringVector.load` reads it back.",
    "gguf": "`llama-cli --control-vector FILE`: holds strength x resid_norm x direction per "
            "block output.",
    "neuronpedia": "A steering request body: `vectors: [{steering_vector, strength, hook}]` "
                   "and the SAE features.",
}
MIME = {".safetensors": "application/octet-stream", ".gguf": "application/octet-stream",
        ".json": "application/json"}
PERCENT = st.column_config.NumberColumn(format="%.3f")


# -- cached reads (keyed by artifact name + created time) -----------------------------------------
@st.cache_resource(show_spinner="Reading the LangFIR report ...", max_entries=8)
def _report(root: str, name: str, stamp: float):
    from steering.langfir import load_report

    return load_report(Lab(root), name)


def report(name: str):
    """The stored LangFIR report `name` (shared, read-only)."""
    return _report(str(common.lab().root), name, common.created(name))


@st.cache_data(show_spinner=False, max_entries=16)
def _tables(root: str, name: str, stamp: float) -> dict[str, pd.DataFrame]:
    rep = _report(root, name, stamp)
    return {"kept": views.kept_summary(rep), "selectivity": views.selectivity_table(rep),
            "stability_n": views.stability_pivot(rep, "n_kept"),
            "stability_j": views.stability_pivot(rep, "jaccard_to_largest"),
            "ablation": views.ablation_pivot(rep), "dominance": views.dominance_table(rep),
            "register": views.register_matrix(rep), "register_check": views.register_check(rep)}


def _spec_stamp(spec: tuple) -> float:
    return common.created(spec[1])


@st.cache_resource(show_spinner="Making the steering vector ...", max_entries=64)
def _vector(root: str, spec: tuple, stamp: float):
    """spec ("stored", name) or ("report", report, language, method)."""
    from steering.vectors import SteeringVector

    if spec[0] == "stored":
        return SteeringVector.from_lab(Lab(root), spec[1])
    from steering.making import vector_from_report

    _, name, language, method = spec
    rep = _report(root, name, stamp)
    sae = common.sae(rep.meta["sae"]) if method != "diffmean" else None
    return vector_from_report(rep, language, method, sae)


def vector(spec: tuple):
    return _vector(str(common.lab().root), spec, _spec_stamp(spec))


@st.cache_data(show_spinner="Generating ...", max_entries=64)
def _generate(root: str, spec: tuple, stamp: float, model_spec: str, model_stamp: float,
              strength: float, positions: str, prompt: str, seed: int, tokens: int,
              temperature: float, languages: tuple[str, ...]) -> dict:
    """Unsteered and steered continuations (same seed), with the language py3langid hears in
    each (among `languages`, when given)."""
    from steering.generation import GenerationConfig, side_by_side

    vec = _vector(root, spec, stamp)
    config = GenerationConfig(max_new_tokens=tokens, temperature=temperature, seed=seed)
    row = side_by_side(common.model(model_spec), [prompt], vec, strength=strength,
                       positions=positions, config=config)[0]
    if languages:
        from workbench.data.language_id import LanguageDetector

        try:
            detector = LanguageDetector(list(languages))
        except InvalidInputError:  # a language py3langid does not know: no verdict
            return row
        for key in ("unsteered", "steered"):
            text = row[key].strip()
            row[f"lid_{key}"] = detector.detect(text) if text else ("", 0.0)
    return row


@st.cache_data(show_spinner=False, max_entries=64)
def _export(root: str, spec: tuple, stamp: float, fmt: str, strength: float,
            stem: str) -> dict[str, bytes]:
    from steering.export import export_files, lab_model_shape

    vec = _vector(root, spec, stamp)
    return export_files(vec, fmt, stem, strength=strength,
                        model=lab_model_shape(Lab(root), vec.model))


@st.cache_data(show_spinner=False, max_entries=16)
def _evaluation(root: str, name: str, stamp: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    from steering.evaluation import load_steer_eval

    ev = load_steer_eval(Lab(root), name)
    return ev.summary, ev.best


# -- the report -----------------------------------------------------------------------------------
def choose_report(reports: list[str]) -> str:
    params = st.query_params
    if params.get("report") in reports:
        default = reports.index(params["report"])
    else:
        default = reports.index("default-langfir") if "default-langfir" in reports else 0
    name = st.selectbox("LangFIR report", reports, index=default, key=REPORT_KEY)
    st.query_params["report"] = name
    return name


def _format_features(features: list[int]) -> str:
    return ", ".join(str(i) for i in features) if features else "(none)"


def report_header(rep) -> None:
    meta, cfg, summary = rep.meta, rep.meta["config"], rep.meta["summary"]
    st.caption(f"SAE `{meta['sae']}` at `{meta['hook']}` of `{meta['model']}`, corpus "
               f"`{meta.get('corpus')}`: tau {cfg['tau']:g} (a kept feature fires on at least "
               f"this share of its language's tokens), tau_r {cfg['tau_r']:g} (and on less than "
               f"this share of random tokens), {cfg['n_docs']} documents per language, "
               f"{summary.get('random_tokens', 0):,} random tokens; resid_norm "
               f"{meta['resid_norm']:.3g}; LangFIR took "
               f"{meta.get('timings', {}).get('total_s', 0):.1f} s.")
    langs = rep.languages
    with_features = summary.get("languages_with_features", [])
    dom = summary.get("ablation_dominance", {}) or {}
    cols = st.columns(4)
    cols[0].metric("with features", f"{len(with_features)}/{len(langs)}",
                   help="languages for which LangFIR kept at least one feature")
    cols[1].metric("kept features", f"{len(rep.features)}", help="over all languages")
    cols[2].metric("5x selective", f"{len(summary.get('languages_all_selective_5x', []))}"
                   f"/{len(with_features)}",
                   help="languages whose every kept feature fires at least 5x more often on "
                        "its own language than on any other")
    cols[3].metric("dominant ablation",
                   f"{len(dom.get('passing', []))}/{len(dom.get('ratio', {}))}",
                   help="languages whose own-language CE increase (kept directions projected "
                        "out) is at least 3x the mean increase on the others")


def _heatmap(z: pd.DataFrame, title: str, x_title: str, y_title: str, colorscale: str,
             zmid: float | None = None, text_format: str = ".2f", height: int | None = None,
             colorbar: str = "", x_on_top: bool = False,
             zmin: float | None = None) -> go.Figure:
    rows = len(z.index)
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(dtype=float), x=[str(c) for c in z.columns], y=[str(i) for i in z.index],
        colorscale=colorscale, zmid=zmid, zmin=zmin,
        texttemplate=f"%{{z:{text_format}}}" if rows <= 60 else None, textfont={"size": 11},
        colorbar={"title": {"text": colorbar, "side": "right"}},
        hovertemplate=f"{y_title}: %{{y}}<br>{x_title}: %{{x}}<br>%{{z:.4f}}<extra></extra>"))
    fig.update_layout(title=title)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="top" if x_on_top else "bottom")
    fig = common.style(fig, height or max(300, 28 * rows + 140), x_title, y_title)
    if x_on_top:  # a tall map: the column labels stay in view under the title
        fig.update_layout(margin={"t": 100}, title={"y": 0.99, "yanchor": "top"})
    return fig


def kept_tab(rep, tables: dict) -> None:
    kept = tables["kept"].assign(features=tables["kept"].features.map(_format_features))
    common.table(kept, column_config={
        "language": st.column_config.TextColumn("language", width="small"),
        "n_kept": st.column_config.NumberColumn("kept", width="small"),
        "features": st.column_config.TextColumn("kept features", width="medium"),
        "min_selectivity": st.column_config.NumberColumn(
            "min selectivity", format="%.1f",
            help="p on its language / highest p on another language (worst kept feature)"),
        "max_p_random": st.column_config.NumberColumn(
            "max p random", format="%.3f", help="highest frequency on random tokens"),
        "max_guide_p_other": st.column_config.NumberColumn(
            "max p others' guide", format="%.3f",
            help="highest frequency on another language's installation-guide text")})
    left, right = st.columns([3, 2])
    with left:
        fig = go.Figure(go.Bar(x=kept.language.tolist(), y=kept.n_kept.tolist(),
                               marker={"color": "#4C78A8"}, text=kept.n_kept.tolist(),
                               textposition="outside"))
        fig.update_layout(title="Kept features per language")
        common.chart(common.style(fig, 280, "language", "kept features"), key="kept-bars")
    with right:
        features = rep.features
        if len(features):
            labels = [f"{r.language} · feature {int(r.feature)}" for r in features.itertuples()]
            choice = st.selectbox("Open a kept feature in the feature browser", labels,
                                  key="kept-open")
            row = features.iloc[labels.index(choice)]
            st.page_link("views/features.py", label=f"Open feature {int(row.feature)} of "
                         f"{rep.meta['sae']} →",
                         query_params={"sae": rep.meta["sae"], "feature": str(int(row.feature))})


def selectivity_tab(rep, tables: dict) -> None:
    sel = tables["selectivity"]
    if sel.empty:
        st.info("LangFIR kept no feature for any language: lower tau or raise tau_r "
                "(Run LangFIR below).")
        return
    langs = rep.languages
    z = sel[[f"p_{lang}" for lang in langs] + ["p_random"]]
    z.columns = [*langs, "random"]
    z.index = [f"{r.language} · {int(r.feature)}" for r in sel.itertuples()]
    common.chart(_heatmap(z, "Firing frequency of each kept feature on every language and on "
                          "random tokens", "text the feature is measured on",
                          "kept feature (language · index)", "Blues", colorbar="share of tokens",
                          x_on_top=True, zmin=0.0),
                 key="selectivity-map")
    st.caption("Each row is a kept feature: it should fire on its own language's tokens (the "
               "bright cell) and stay quiet on the other languages and on random tokens.")
    common.table(sel, column_config={
        "selectivity": st.column_config.NumberColumn(format="%.1f"),
        **{c: PERCENT for c in sel.columns if c.startswith("p_")}})


def stability_tab(rep, tables: dict) -> None:
    n_kept, jaccard = tables["stability_n"], tables["stability_j"]
    left, right = st.columns(2)
    for col, frame, title, y, key in (
            (left, n_kept, "Kept features vs documents", "kept features", "stab-n"),
            (right, jaccard, "Agreement with the largest sample's kept set", "Jaccard similarity",
             "stab-j")):
        fig = go.Figure()
        for lang in frame.index:
            fig.add_trace(go.Scatter(x=list(frame.columns), y=frame.loc[lang].tolist(), name=lang,
                                     mode="lines+markers"))
        fig.update_xaxes(type="log", tickvals=list(frame.columns))
        fig.update_layout(title=title)
        with col:
            common.chart(common.style(fig, 340, "monolingual documents (log)", y), key=key)
    used = rep.stability[rep.stability.docs_used < rep.stability.n_docs]
    if len(used):
        short = sorted(set(used.language))
        st.caption(f"{', '.join(short)}: fewer documents than asked for at the largest sizes; "
                   "those points use every document there is.")
    common.table(n_kept.reset_index().rename(columns=str))


def ablation_tab(rep, tables: dict) -> None:
    matrix = tables["ablation"]
    if matrix.empty:
        st.info("No ablation matrix: no language kept any feature.")
        return
    common.chart(_heatmap(matrix, "CE increase with a language's kept directions projected out",
                          "evaluated language", "ablated language", "RdBu_r", zmid=0.0,
                          text_format=".2f", colorbar="CE increase (nats)"),
                 key="ablation-map")
    st.caption("Rows: the language whose kept features' decoder directions are projected out at "
               f"`{rep.meta['hook']}`; columns: the language the next-token CE is measured on. "
               "A language feature should hurt its own language most (a bright diagonal).")
    common.table(tables["dominance"], column_config={
        "own_increase": st.column_config.NumberColumn("own CE increase", format="%.3f"),
        "mean_other_increase": st.column_config.NumberColumn("mean on the others",
                                                             format="%.3f"),
        "ratio": st.column_config.NumberColumn("ratio", format="%.1f"),
        "dominant": st.column_config.CheckboxColumn(f"ratio >= {views.DOMINANCE_FACTOR:g}")})


def register_tab(rep, tables: dict) -> None:
    matrix, check = tables["register"], tables["register_check"]
    if matrix.empty or not len(matrix.columns):
        st.info("No register check: the corpus has no installation-guide (parallel) text, or no "
                "language kept a feature.")
        return
    st.caption("French text comes from the Debian installation guide (a technical register) "
               "while most languages also have fortunes. Language features must stay quiet on "
               "the other languages' installation-guide text; a register feature would light "
               "up a whole row.")
    common.chart(_heatmap(matrix, "Mean firing frequency of a language's kept features on each "
                          "language's installation-guide text", "guide text of",
                          "kept features of", "Blues", colorbar="share of tokens", zmin=0.0),
                 key="register-map")
    common.table(check, column_config={
        "n_kept": st.column_config.NumberColumn("kept"),
        "p_own": st.column_config.NumberColumn("p on own text", format="%.3f"),
        "guide_p_own": st.column_config.NumberColumn("p on own guide", format="%.3f"),
        "max_guide_p_other": st.column_config.NumberColumn("max p on others' guide",
                                                           format="%.3f"),
        "loudest_on": st.column_config.TextColumn("loudest on"),
        "min_ratio": st.column_config.NumberColumn("min ratio", format="%.1f"),
        "passes": st.column_config.CheckboxColumn(f"ratio >= {views.REGISTER_FACTOR:g}")})


def report_section(name: str) -> None:
    rep = report(name)
    tables = _tables(str(common.lab().root), name, common.created(name))
    report_header(rep)
    tabs = st.tabs(["Kept features", "Selectivity", "Stability", "Ablation matrix",
                    "Register check"])
    for tab, draw, where in zip(tabs, (kept_tab, selectivity_tab, stability_tab, ablation_tab,
                                       register_tab),
                                ("the kept features", "the selectivity table", "the stability",
                                 "the ablation matrix", "the register check")):
        with tab, common.guarded(where):
            draw(rep, tables)


# -- the playground -------------------------------------------------------------------------------
def _describe(vec) -> str:
    norms = ", ".join(f"{h} (resid_norm {n:.3g})" for h, n in vec.resid_norm.items())
    what = METHOD_TITLES.get(vec.method, vec.method)
    lang = f" to {vec.language}" if vec.language else ""
    feats = f", {len(vec.features)} SAE features" if vec.features else ""
    return f"{what}{lang} at {norms} of `{vec.model}`{feats}; default strength {vec.strength:g}."


def choose_vector(rep_name: str | None, vectors: list[str]) -> tuple | None:
    """The playground's vector: a target language + method of the report, or a stored vector."""
    from steering.making import METHODS

    sources = (["a target language of the report"] if rep_name else []) + \
        (["a stored steering vector"] if vectors else [])
    source = st.radio("Steer with", sources, horizontal=True, key="play-source") \
        if len(sources) > 1 else sources[0]
    lab = common.lab()
    if source == "a stored steering vector":
        default = next((i for i, v in enumerate(vectors) if v.endswith("-diffmean")), 0)
        return ("stored", st.selectbox("Vector", vectors, index=default, key="play-vector"))
    rep = report(rep_name)
    kept = {lang: len(rep.kept(lang)) for lang in rep.languages}
    langs = rep.languages
    default = next((i for i, lang in enumerate(langs) if lang != "en" and kept[lang]), 0)
    cols = st.columns(2)
    lang = cols[0].selectbox("Target language", langs, index=default, key="play-language",
                             format_func=lambda x: f"{x} ({kept[x]} kept features)")
    method = cols[1].selectbox("Method", METHODS, key="play-method",
                               format_func=lambda m: METHOD_TITLES.get(m, m),
                               help=steer_forms.METHOD_HELP)
    stored = f"{rep_name}-{lang}-{method}"
    if lab.exists(stored) and lab.get(stored).kind == "steering":
        return ("stored", stored)
    if method.startswith("langfir") and not kept[lang]:
        st.warning(f"LangFIR kept no features for {lang!r}, so there is no {method} vector: "
                   "choose DiffMean or SAE mean-difference, or rerun LangFIR with a lower tau.")
        return None
    st.caption(f"`{stored}` is not stored; the page makes it from the report (the same "
               "vector `workbench steer make` would store).")
    with st.expander("Store this vector"):
        steer_forms.job_form("steer-make", key="play",
                             defaults={"report": rep_name, "language": lang, "method": method})
    return ("report", rep_name, lang, method)


def playground(rep_name: str | None, vectors: list[str]) -> tuple | None:
    from steering.vectors import DEFAULT_STRENGTH, POSITIONS

    spec = choose_vector(rep_name, vectors)
    if spec is None:
        return None
    try:
        vec = vector(spec)
    except WorkbenchError as exc:
        st.warning(f"This vector cannot be used: {exc}")
        return None
    st.caption(_describe(vec) + " Steering adds strength x resid_norm x the unit direction at "
               "the chosen positions (the units of `--strength` in every `workbench steer` "
               "command).")
    cols = st.columns([3, 2])
    prompt = cols[0].text_input("Prompt", "The weather today is", key="play-prompt")
    strength = cols[1].slider("Strength (x resid_norm)", -10.0, 10.0, float(DEFAULT_STRENGTH),
                              0.25, key="play-strength")
    cols = st.columns(4)
    positions = cols[0].selectbox("Positions", POSITIONS, key="play-positions",
                                  help="all positions, only the prompt's, or only the "
                                       "generated tokens")
    temperature = cols[1].number_input("Temperature", 0.0, 2.0, 0.8, 0.1, key="play-temp",
                                       help="0: greedy")
    seed = cols[2].number_input("Seed", 0, 10_000, 0, key="play-seed",
                                help="both continuations sample with this seed")
    tokens = cols[3].number_input("Tokens", 1, 100, 30, key="play-tokens")
    if st.button("Generate", key="play-run", type="primary"):
        st.session_state["play-ran"] = True
    if not st.session_state.get("play-ran"):
        return spec
    if not prompt.strip():
        st.info("Type a prompt to generate from.")
        return spec
    with common.guarded("steering"):
        langs = tuple(report(rep_name).languages) if rep_name else ()
        row = _generate(str(common.lab().root), spec, _spec_stamp(spec), vec.model,
                        common.created(vec.model), float(strength), positions, prompt,
                        int(seed), int(tokens), float(temperature), langs)
        left, right = st.columns(2)
        target = f" to {vec.language}" if vec.language else ""
        steered = (f"**Steered**: {METHOD_TITLES.get(vec.method, vec.method)}{target}, "
                   f"strength {strength:+g}")
        for col, key, title in ((left, "unsteered", "**Unsteered**"),
                                (right, "steered", steered)):
            col.markdown(title)
            col.code(prompt + row[key], language=None, wrap_lines=True)
            if f"lid_{key}" in row and row[f"lid_{key}"][0]:
                heard, prob = row[f"lid_{key}"]
                col.caption(f"py3langid hears **{heard}** ({prob:.0%}) in the continuation")
    return spec


# -- the evaluation -------------------------------------------------------------------------------
def _strength_chart(curve: pd.DataFrame, column: str, title: str, y: str, key: str) -> None:
    fig = go.Figure()
    for method, rows in curve.groupby("method"):
        fig.add_trace(go.Scatter(x=rows.strength.tolist(), y=rows[column].tolist(),
                                 mode="lines+markers",
                                 name=METHOD_TITLES.get(method, method)))
    fig.update_layout(title=title)
    if column == "accuracy":
        fig.update_yaxes(range=[-0.03, 1.03], tickformat=".0%")
    common.chart(common.style(fig, 340, "strength (x resid_norm)", y), key=key)


def evaluation_section(rep_name: str | None) -> None:
    from steering.evaluation import accuracy_by_strength, steer_evals

    if rep_name is None:
        st.info("Steering evaluations belong to a LangFIR report; run LangFIR first.")
        return
    lab = common.lab()
    evals = [a.name for a in steer_evals(lab, rep_name)]
    if not evals:
        st.info(f"No steering evaluation of {rep_name} yet: prompts of every language steered "
                "to each target language, scored by target-language accuracy (py3langid), "
                "fluency (CE under the unsteered model) and BLEU. Start one here (a few minutes "
                "on the default lab's CPU).")
        steer_forms.job_form("steer-eval", key="eval", defaults={"report": rep_name})
        return
    name = st.selectbox("Evaluation", evals, key="eval-choice") if len(evals) > 1 else evals[0]
    summary, best = _evaluation(str(lab.root), name, common.created(name))
    numbers = {"accuracy": st.column_config.NumberColumn(format="%.2f"),
               "accuracy_langdetect": st.column_config.NumberColumn("accuracy (langdetect)",
                                                                    format="%.2f"),
               "fluency_ce": st.column_config.NumberColumn("fluency CE", format="%.2f",
                                                           help="lower is more fluent"),
               "bleu": st.column_config.NumberColumn("BLEU", format="%.1f"),
               "acc_x_bleu": st.column_config.NumberColumn("acc x BLEU", format="%.1f")}
    targets = sorted(summary.target.unique())
    choice = st.selectbox("Target language", ["all targets (mean)", *targets], key="eval-target")
    curve = accuracy_by_strength(summary, None if choice.startswith("all") else choice)
    left, right = st.columns(2)
    with left:
        _strength_chart(curve, "accuracy", "Target-language accuracy vs strength",
                        "accuracy (py3langid)", "eval-acc")
    with right:
        _strength_chart(curve, "fluency_ce", "Fluency (CE under the unsteered model)",
                        "fluency CE (lower is better)", "eval-ce")
    st.markdown("**Best strength per method and target** (highest accuracy, lowest CE on ties)")
    common.table(best.drop(columns=["n"], errors="ignore"), column_config=numbers)
    with st.expander("Every method x target x strength"):
        common.table(summary.sort_values(["method", "target", "strength"]),
                     column_config=numbers)
    with st.expander("Run another evaluation"):
        steer_forms.job_form("steer-eval", key="eval-more", defaults={"report": rep_name})


# -- exports --------------------------------------------------------------------------------------
def export_section(play_spec: tuple | None, vectors: list[str]) -> None:
    from steering.export import FORMATS

    options: list[tuple] = []
    if play_spec is not None and play_spec[0] == "report":
        options.append(play_spec)
    options += [("stored", v) for v in vectors]
    if play_spec in options:
        default = options.index(play_spec)
    else:
        default = 0
    if not options:
        st.caption("Choose a vector in the playground to export it.")
        return

    def label(spec: tuple) -> str:
        return spec[1] if spec[0] == "stored" else \
            f"{spec[1]}-{spec[2]}-{spec[3]} (the playground's, not stored)"

    cols = st.columns([3, 1])
    # keyed by the playground's vector: choosing another one there brings it here
    spec = cols[0].selectbox("Vector to export", options, index=default, format_func=label,
                             key=f"export-vector-{'-'.join(map(str, play_spec or ()))}")
    try:
        vec = vector(spec)
    except WorkbenchError as exc:
        st.warning(f"This vector cannot be exported: {exc}")
        return
    strength = cols[1].number_input("Strength (x resid_norm)", -100.0, 100.0, float(vec.strength),
                                    0.5, key=f"export-strength-{label(spec)}",
                                    help="stored as the default strength (safetensors), baked "
                                         "into the GGUF directions, the request's strength "
                                         "(Neuronpedia)")
    stem = spec[1] if spec[0] == "stored" else f"{spec[1]}-{spec[2]}-{spec[3]}"
    for col, fmt in zip(st.columns(len(FORMATS)), FORMATS):
        with col:
            st.markdown(f"**{FORMAT_TITLES[fmt]}**")
            st.caption(FORMAT_NOTES[fmt])
            try:
                files = _export(str(common.lab().root), spec, _spec_stamp(spec), fmt,
                                float(strength), stem)
            except ImportError as exc:
                st.warning(f"Not available here: the {fmt} writer needs a package that is not "
                           f"installed ({exc}).")
                continue
            except InvalidInputError as exc:
                st.warning(f"Not available for this vector: {exc}")
                continue
            for file, data in files.items():
                ending = file[len(stem):]  # .safetensors, .json, .gguf, .neuronpedia.json
                st.download_button(f"Download {ending}", data, file_name=file,
                                   mime=MIME.get("." + file.rsplit(".", 1)[-1],
                                                 "application/octet-stream"),
                                   key=f"download-{fmt}-{ending}", on_click="ignore",
                                   help=f"saves {file} ({len(data):,} bytes)")


# -- the page -------------------------------------------------------------------------------------
def nothing_yet() -> None:
    """No report and no vectors: offer the job that makes them."""
    if not common.artifacts("sae"):
        common.missing("This lab has no SAE yet, so there is no LangFIR report and no steering "
                       "vector. The default lab builds a multilingual corpus, a small LM, its "
                       "SAEs, the LangFIR report `default-langfir` and its steering vectors.",
                       "Build the default lab", ["lab", "build", "default"], key="steering")
        return
    st.info("No LangFIR report and no steering vector in the lab yet. Run LangFIR on an SAE "
            "(it also stores the report's steering vectors):")
    steer_forms.job_form("langfir", key="first")


@common.page
def main() -> None:
    """The LangFIR and steering page."""
    st.title("LangFIR and steering")
    reports = [a.name for a in common.artifacts("langfir")]
    vectors = [a.name for a in common.artifacts("steering")]
    if not reports and not vectors:
        nothing_yet()
        return
    rep_name = None
    if reports:
        rep_name = choose_report(reports)
        with common.guarded("the LangFIR report"):
            report_section(rep_name)
    else:
        st.info("No LangFIR report in the lab yet (the playground below uses the stored "
                "vectors). Run LangFIR on an SAE:")
        steer_forms.job_form("langfir", key="no-report")
    if reports:
        with st.expander("Run LangFIR on another SAE"):
            steer_forms.job_form("langfir", key="more")
    st.subheader("Steering playground")
    play_spec = None
    with common.guarded("the steering playground"):
        play_spec = playground(rep_name, vectors)
    st.subheader("Steering evaluation")
    with common.guarded("the steering evaluation"):
        evaluation_section(rep_name)
    st.subheader("Export")
    with common.guarded("the export"):
        export_section(play_spec, vectors)


main()
