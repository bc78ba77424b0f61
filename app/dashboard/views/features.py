"""Feature browser (Neuronpedia-like): search SAE features by index, by the token they fire on,
by top logit token or by a prompt; per feature its density, activation histogram, contexts,
logit effects, neighbours, correlated features, a live test-your-text and steering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.dashboard import common
from app.dashboard.tokens_html import contexts_html, hover_lines
from saes.features import browse
from workbench.errors import WorkbenchError

FEATURE_KEY = "feature-index"
CORRELATION_TOKENS = 16384


# -- cached computations (keyed by artifact name + created time) -------------------------------
@st.cache_data(show_spinner=False, max_entries=256)
def _logit_values(sae_name: str, sae_stamp: float, model_spec: str, model_stamp: float,
                  feature: int) -> np.ndarray:
    return browse.logit_effect_values(common.sae(sae_name), common.model(model_spec),
                                      feature).numpy()


@st.cache_data(show_spinner=False, max_entries=128)
def _encode(sae_name: str, sae_stamp: float, model_spec: str, model_stamp: float, hook: str,
            text: str):
    return browse.encode_text(common.sae(sae_name), common.model(model_spec), hook, text)


@st.cache_data(show_spinner=False, max_entries=256)
def _hover(model_spec: str, model_stamp: float, sae_name: str, sae_stamp: float, feature: int,
           kind: str) -> list[list[str]]:
    """Hover lines (the model's next-token predictions) of one feature's stored contexts."""
    top, quant = browse.feature_contexts(common.feature_tables(sae_name).contexts_of(feature))
    frame = top if kind == "top" else quant
    windows = [[int(i) for i in ids] for ids in frame.token_ids]
    return [hover_lines(p) for p in browse.window_predictions(common.model(model_spec), windows)]


@st.cache_resource(show_spinner="Encoding a sample of activations for correlations ...",
                   max_entries=4)
def _codes(root: str, sae_name: str, sae_stamp: float, acts_name: str, acts_stamp: float):
    from workbench.activations import open_activations

    store = open_activations(common.lab(), acts_name)
    n = min(CORRELATION_TOKENS, store.n_tokens)
    return browse.sample_codes(common.sae(sae_name), store.read, n)


@st.cache_data(show_spinner=False, max_entries=256)
def _correlated(root: str, sae_name: str, sae_stamp: float, acts_name: str, acts_stamp: float,
                feature: int) -> pd.DataFrame:
    codes = _codes(root, sae_name, sae_stamp, acts_name, acts_stamp)
    return browse.correlated_features(codes, feature)


@st.cache_data(show_spinner="Measuring the residual norm ...", max_entries=16)
def _resid_norm(model_spec: str, model_stamp: float, hook: str) -> float:
    """Mean residual norm at `hook` on the lab corpus: the unit of steering strength."""
    from steering.making import lab_resid_norm

    return lab_resid_norm(common.lab(), common.model(model_spec), model_spec, hook)


@st.cache_data(show_spinner="Generating ...", max_entries=64)
def _steer(sae_name: str, sae_stamp: float, model_spec: str, model_stamp: float, hook: str,
           feature: int, mode: str, amount: float, prompt: str, seed: int,
           tokens: int) -> dict:
    """Unsteered and steered continuations (same seed): mode "add" adds amount x resid_norm x
    the unit decoder direction (a steering.vectors vector); "clamp" holds the feature's
    activation at `amount` through the SAE splice."""
    from steering.generation import GenerationConfig, clamp_feature, side_by_side
    from steering.vectors import SteeringVector

    sae, model = common.sae(sae_name), common.model(model_spec)
    config = GenerationConfig(max_new_tokens=tokens, temperature=0.8, seed=seed)
    if mode == "clamp":
        row = side_by_side(model, [prompt], config=config,
                           steer=lambda: clamp_feature(model, sae, feature, amount))[0]
    else:
        norm = _resid_norm(model_spec, model_stamp, hook)
        vector = SteeringVector.from_feature(sae, feature, norm, source=sae_name,
                                             model=model_spec, hook=hook)
        row = side_by_side(model, [prompt], vector, strength=amount, config=config)[0]
    return row


# -- setting -------------------------------------------------------------------------------------
class Setting:
    """The chosen SAE with its model, hook, stored tables and activations."""

    def __init__(self, name: str, model: str, hook: str):
        lab = common.lab()
        self.art = lab.get(name, kind="sae")
        self.name, self.model, self.hook = name, model, hook
        self.sae_stamp, self.model_stamp = common.created(name), common.created(model)
        self.tables = common.feature_tables(name)
        self.d_sae = int(common.sae(name).W_dec.shape[0])
        self.acts = self._acts_name()

    def _acts_name(self) -> str | None:
        from saes.evaluation.lab_runs import activations_of_sae

        try:
            return activations_of_sae(common.lab(), self.art)
        except WorkbenchError:
            return None


def choose_setting() -> Setting | None:
    sae_arts = common.artifacts("sae")
    saes = [a.name for a in sae_arts]
    if not saes:
        common.missing("No SAEs in the lab yet; the feature browser needs one.",
                       "Build the default lab", ["lab", "build", "default"], key="features")
        return None
    cols = st.columns(3)
    params = st.query_params
    if params.get("sae") in saes:
        default = saes.index(params["sae"])
    else:  # the first SAE whose feature statistics exist (every panel has data), else the first
        with_stats = [i for i, a in enumerate(sae_arts)
                      if (a.path / "feature_stats.parquet").exists()]
        default = with_stats[0] if with_stats else 0
    name = cols[0].selectbox("SAE", saes, index=default, key="feature-sae")
    art = common.lab().get(name)
    model, hook = common.sae_model_and_hook(art)
    model = cols[1].text_input("Model", model or "", key=f"feature-model-{name}",
                               help="The model the SAE reads (a lab model or TransformerLens "
                                    "name); prefilled from the SAE.")
    hook = cols[2].text_input("Hook", hook or "", key=f"feature-hook-{name}")
    if not (model and hook):
        st.info("This SAE does not record its model and hook: name them above.")
        return None
    return Setting(name, model.strip(), hook.strip())


def stats_missing(s: Setting) -> None:
    """Feature statistics are not there: offer the job that computes them (with progress)."""
    lab = common.lab()
    from workbench.jobs import ACTIVE

    running = [j for j in lab.jobs(s.name, limit=5)
               if j["kind"] == "feature-stats" and j["status"] in ACTIVE]
    if running:
        st.info(f"Feature statistics of {s.name} are being computed (job {running[0]['id']}); "
                "this page fills in when they are done.")
        return
    acts = s.acts
    if acts is None:
        fitting = [a.name for a in common.artifacts("activations")
                   if a.manifest.get("hook") == s.hook]
        acts = st.selectbox("Activations to compute them on", fitting or ["(none)"],
                            key="stats-acts")
        if not fitting:
            common.missing(f"{s.name} has no feature statistics, and the lab holds no "
                           f"activations at {s.hook} to compute them on. Cache some first.",
                           "Cache activations", ["acts", "cache", "--model", s.model, "--hook",
                                                 s.hook, "--corpus", "default-corpus",
                                                 "--tokens", "200000"], key="stats-cache")
            return
    tokens = st.number_input("Tokens to read", 1024, 10_000_000, 50_000, step=1024,
                             key="stats-tokens")
    args = ["sae", "stats", s.name, "--tokens", str(int(tokens))]
    if s.acts is None:
        args += ["--acts", acts]
    common.missing(f"{s.name} has no feature statistics yet (top contexts, histograms, logit "
                   "effects). The search and feature pages need them; test-your-text and "
                   "steering below work already.", "Compute feature statistics", args,
                   [s.name], key=f"stats-{s.name}")


# -- search ----------------------------------------------------------------------------------
def _open(feature: int) -> None:
    st.session_state[FEATURE_KEY] = int(feature)


def _result_list(frame: pd.DataFrame, key: str) -> None:
    if frame.empty:
        st.caption("No features match.")
        return
    common.table(frame, column_config={"frequency": st.column_config.NumberColumn(
        format="%.2e")})
    choice = st.selectbox("Open feature", frame.feature.tolist(), key=f"open-{key}")
    st.button("Open", key=f"open-btn-{key}", on_click=_open, args=(choice,))


def search_section(s: Setting) -> None:
    by_token, by_logit, by_prompt = st.tabs(["Fires on token", "Top logit token", "Prompt"])
    features, contexts = (s.tables.features, s.tables.contexts) if s.tables else (None, None)
    with by_token:
        token = st.text_input("Token", key="search-token", placeholder="e.g. ' der' or 'the'")
        if token and features is not None:
            with common.guarded("the token search"):
                _result_list(browse.search_by_token(features, contexts, token), "token")
        elif token:
            st.caption("Needs the feature statistics.")
    with by_logit:
        token = st.text_input("Token", key="search-logit", placeholder="e.g. ' und'")
        if token and features is not None:
            with common.guarded("the logit search"):
                _result_list(browse.search_by_logit(features, token), "logit")
        elif token:
            st.caption("Needs the feature statistics.")
    with by_prompt:
        text = st.text_input("Prompt", key="search-prompt",
                             placeholder="which features fire on this text?")
        if text:
            with common.guarded("the prompt search"):
                enc = _encode(s.name, s.sae_stamp, s.model, s.model_stamp, s.hook, text)
                labels = ["all tokens (max)"] + [f"{i}: {t!r}" for i, t in
                                                 enumerate(enc.tokens)]
                pos = st.selectbox("Rank at", labels, key="prompt-pos")
                position = None if pos == labels[0] else labels.index(pos) - 1
                _result_list(browse.rank_on_text(enc.codes, position), "prompt")


# -- one feature -------------------------------------------------------------------------------
def summary_section(row: pd.Series) -> None:
    cols = st.columns(5)
    cols[0].metric("density", f"{row.frequency:.2e}", help="fraction of tokens it fires on")
    cols[1].metric("tokens fired on", f"{int(row.n_fired):,}")
    cols[2].metric("max activation", f"{row.max_act:.3g}")
    cols[3].metric("mean (when firing)", f"{row.mean_act:.3g}")
    lang = row.top_language or "-"
    cols[4].metric("top language", f"{lang} ({row.top_language_share:.0%})")


def histogram_figure(row: pd.Series) -> go.Figure:
    edges = np.asarray(row.hist_edges)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centres, y=row.hist_counts, marker={"color": "#F58518"}))
    fig.update_layout(title="Activation histogram (firing tokens)")
    return common.style(fig, 260, "activation", "tokens")


def logit_section(s: Setting, row: pd.Series, feature: int) -> None:
    left, right, hist = st.columns([1, 1, 2])
    left.markdown("**Promotes**")
    left.dataframe(pd.DataFrame({"token": [repr(t)[1:-1] for t in row.top_logit_tokens],
                                 "effect": row.top_logit_values}), hide_index=True,
                   width="stretch", height=320)
    right.markdown("**Suppresses**")
    right.dataframe(pd.DataFrame({"token": [repr(t)[1:-1] for t in row.bottom_logit_tokens],
                                  "effect": row.bottom_logit_values}), hide_index=True,
                    width="stretch", height=320)
    with hist, common.guarded("the logit histogram"):
        values = _logit_values(s.name, s.sae_stamp, s.model, s.model_stamp, feature)
        fig = go.Figure(go.Histogram(x=values, nbinsx=60, marker={"color": "#4C78A8"}))
        fig.update_layout(title="Effect on every logit")
        common.chart(common.style(fig, 300, "logit effect (W_dec · W_U)", "tokens"),
                     key="logit-hist")


def _context_rows(s: Setting, frame: pd.DataFrame, feature: int, kind: str,
                  hovers: list[list[str]] | None = None) -> list[dict]:
    if hovers is None:
        hovers = _hover(s.model, s.model_stamp, s.name, s.sae_stamp, feature, kind)
    return [{"tokens": list(r.tokens), "acts": [float(a) for a in r.acts],
             "centre": int(r.centre), "activation": float(r.activation), "hover": h}
            for r, h in zip(frame.itertuples(), hovers)]


def contexts_section(s: Setting, row: pd.Series, feature: int) -> None:
    top, quant = browse.feature_contexts(s.tables.contexts_of(feature))
    tab_top, tab_q = st.tabs(["Top activations", "Quantile bins"])
    with tab_top:
        if top.empty:
            st.caption("This feature never fired on the tokens read (a dead feature).")
        else:
            st.html(contexts_html(_context_rows(s, top, feature, "top"), float(row.max_act)))
            st.caption("Hover a token for its activation and the model's next-token "
                       "predictions; the outlined token is the example's centre.")
    with tab_q:
        edges = list(row.quantile_edges)
        hovers = _hover(s.model, s.model_stamp, s.name, s.sae_stamp, feature, "quantile")
        rows = _context_rows(s, quant, feature, "quantile", hovers)
        bins = quant["bin"].tolist()
        for b in sorted(set(bins), reverse=True):
            lo, hi = edges[int(b)], edges[int(b) + 1]
            st.markdown(f"**Bin {int(b) + 1}** (activation {lo:.3g} – {hi:.3g})")
            st.html(contexts_html([r for r, rb in zip(rows, bins) if rb == b],
                                  float(row.max_act)))
        if quant.empty:
            st.caption("No quantile examples.")


def neighbours_section(s: Setting, row: pd.Series, feature: int) -> None:
    left, right = st.columns(2)
    left.markdown("**Nearest by decoder cosine**")
    near = pd.DataFrame({"feature": list(row.neighbors), "cosine": list(row.neighbor_cosines)})
    left.dataframe(near, hide_index=True, width="stretch")
    right.markdown("**Most correlated**", help=f"Pearson correlation of the activations over "
                   f"the first {CORRELATION_TOKENS:,} tokens of the SAE's activations")
    if s.acts is None:
        right.caption("Needs the SAE's activations.")
        return
    with right, common.guarded("the correlations"):
        corr = _correlated(str(common.lab().root), s.name, s.sae_stamp, s.acts,
                           common.created(s.acts), feature)
        st.dataframe(corr, hide_index=True, width="stretch")


def test_text_section(s: Setting, feature: int, max_act: float) -> None:
    text = st.text_area("Your text", "Der Hund schläft im Garten, und die Katze auch.",
                        key="test-text", height=80)
    if not st.button("Run", key="test-run") and not st.session_state.get("test-ran"):
        return
    st.session_state["test-ran"] = True
    with common.guarded("test your text"):
        enc = _encode(s.name, s.sae_stamp, s.model, s.model_stamp, s.hook, text)
        acts = enc.codes[:, feature].tolist()
        peak = max(acts[1:], default=0.0)
        st.html(contexts_html([{"tokens": enc.tokens[1:], "acts": acts[1:], "centre": None,
                                "activation": peak}], max_act or peak or 1.0))
        fig = go.Figure(go.Bar(x=[f"{i}:{repr(t)[1:-1]}" for i, t in enumerate(enc.tokens)],
                               y=acts, marker={"color": "#F58518"}))
        fig.update_layout(title=f"Feature {feature} on your text (max {peak:.3g})")
        common.chart(common.style(fig, 280, "token", "activation"), key="test-bars")


def steer_section(s: Setting, feature: int, max_act: float) -> None:
    st.caption("Add: strength x resid_norm (the mean residual norm at the SAE's hook on the lab "
               "corpus) x the feature's unit decoder direction on every position, the same units "
               "as `workbench steer` and stored steering vectors. Clamp: hold the feature's "
               "activation at a value through the SAE splice (error term kept). Both "
               "continuations use the same seed.")
    cols = st.columns([3, 1, 2, 1, 1])
    prompt = cols[0].text_input("Prompt", "Der Hund", key="steer-prompt")
    mode = cols[1].radio("Mode", ["add", "clamp"], horizontal=True, key="steer-mode")
    if mode == "clamp":
        top = float(max(max_act, 1.0))
        amount = cols[2].slider("Clamp activation to", 0.0, 4 * top, 2 * top, top / 20,
                                key="steer-clamp")
    else:
        amount = cols[2].slider("Strength (x resid_norm)", -10.0, 10.0, 2.0, 0.25,
                                key="steer-strength")
    seed = cols[3].number_input("Seed", 0, 10_000, 0, key="steer-seed")
    tokens = cols[4].number_input("Tokens", 1, 100, 25, key="steer-tokens")
    if st.button("Generate", key="steer-run", type="primary"):
        st.session_state["steer-ran"] = True
    if not st.session_state.get("steer-ran"):
        return
    with common.guarded("steering"):
        row = _steer(s.name, s.sae_stamp, s.model, s.model_stamp, s.hook, feature, mode,
                     float(amount), prompt, int(seed), int(tokens))
        left, right = st.columns(2)
        left.markdown("**Unsteered**")
        left.code(prompt + row["unsteered"], language=None, wrap_lines=True)
        what = f"clamped to {amount:.3g}" if mode == "clamp" else f"strength {amount:+g}"
        right.markdown(f"**Steered** (feature {feature}, {what})")
        right.code(prompt + row["steered"], language=None, wrap_lines=True)


def feature_section(s: Setting) -> None:
    params = st.query_params
    if FEATURE_KEY not in st.session_state:
        start = params.get("feature", "0")
        st.session_state[FEATURE_KEY] = int(start) if str(start).isdigit() else 0
    if not 0 <= int(st.session_state[FEATURE_KEY]) < s.d_sae:  # another SAE was chosen
        st.session_state[FEATURE_KEY] = 0
    feature = st.number_input(f"Feature (0 – {s.d_sae - 1})", 0, s.d_sae - 1, key=FEATURE_KEY)
    feature = int(feature)
    st.query_params.update({"sae": s.name, "feature": str(feature)})
    max_act = 0.0
    if s.tables is not None:
        row = s.tables.row(feature)
        max_act = float(row.max_act)
        summary_section(row)
        left, right = st.columns([4, 5])
        with left:
            common.chart(histogram_figure(row), key="act-hist")
        with right:
            neighbours_section(s, row, feature)
        st.subheader("Examples")
        contexts_section(s, row, feature)
        st.subheader("Logit effects")
        if len(row.top_logit_tokens):
            logit_section(s, row, feature)
        else:
            st.caption("No logit effects: the SAE does not read the residual stream's width.")
    st.subheader("Test your own text")
    test_text_section(s, feature, max_act)
    st.subheader("Steer with this feature")
    steer_section(s, feature, max_act)


@common.page
def main() -> None:
    """The feature browser."""
    st.title("Feature browser")
    s = choose_setting()
    if s is None:
        return
    if s.tables is None:
        stats_missing(s)
    with st.expander("Search features", expanded=s.tables is not None):
        search_section(s)
    feature_section(s)


main()
