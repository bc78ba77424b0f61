"""Attention sparsity page: per-head metrics of a stored analysis (`workbench analyze
attention`) as a table and a layer x head heatmap, the stored sparse-attention what-if, and a
live pattern map of one head on your text with a sparsity what-if slider (the budget is applied
at TransformerLens' hook_pattern by `workbench.analysis.attention_budget`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.dashboard import analyses, common

DEFAULT_TEXT = ("The dog sleeps in the garden. The cat sleeps in the house. Der Hund schläft "
                "im Garten. Die Katze schläft im Haus.")
METRICS = {  # heads-table column -> what it means
    "k90": "k@90%: fewest keys holding 90% of the mass, share of the context",
    "k99": "k@99%: fewest keys holding 99% of the mass, share of the context",
    "entropy": "entropy of the attention row (nats)",
    "eff_keys": "effective keys exp(entropy)",
    "sink_mass": "mass on the first tokens (sink)",
    "local_mass": "mass on the local window",
    "a_mass": "mass on sink + local window (A-shape)",
    "vs_coverage": "mass on the best columns + diagonals (vertical-slash)",
    "block_k90": "fewest key blocks holding 90%, share of causal blocks",
}
TABLE_COLUMNS = ["layer", "head", "pattern_class", "k90", "k99", "entropy", "eff_keys",
                 "sink_mass", "local_mass", "vs_coverage", "block_k90"]
BUDGETS = {"Keep the top fraction of each row": "top_fraction",
           "Block-sparse budget (key blocks per query block)": "block_topk"}


# -- cached computations -----------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def _tokens(root: str, spec: str, stamp: float, text: str) -> tuple[list[str], int]:
    """The text's tokens (cut to the model's context) and how many it has uncut."""
    from workbench.models.inspect import token_strings, tokenize

    model = common.model(spec)
    ids = tokenize(model, text, truncate=True)[0].tolist()
    return token_strings(model, ids), int(model.to_tokens(text, truncate=False).shape[1])


@st.cache_data(show_spinner="Running the text with and without the budget ...", max_entries=128)
def _whatif(root: str, spec: str, stamp: float, text: str, kind: str, value: float,
            block_size: int, only_layer: bool, layer: int, head: int):
    from workbench.analysis.attention_budget import AttentionBudget, text_whatif
    from workbench.models.inspect import tokenize

    model = common.model(spec)
    return text_whatif(model, tokenize(model, text, truncate=True),
                       AttentionBudget(kind, value, block_size),
                       layers=[layer] if only_layer else None, show=(layer, head))


# -- stored analysis ---------------------------------------------------------------------------
def head_heatmap(heads: pd.DataFrame, metric: str) -> go.Figure:
    grid = heads.pivot(index="layer", columns="head", values=metric).sort_index()
    classes = heads.pivot(index="layer", columns="head", values="pattern_class").loc[grid.index]
    text = [[f"{v:.2f}<br>{c}" for v, c in zip(row_v, row_c)]
            for row_v, row_c in zip(grid.to_numpy(), classes.to_numpy())]
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[f"head {h}" for h in grid.columns],
        y=[f"layer {l}" for l in grid.index], text=text, texttemplate="%{text}",
        colorscale="Viridis", colorbar={"title": metric},
        hovertemplate="%{y}, %{x}<br>" + metric + " %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=METRICS[metric])
    return common.style(fig, max(260, 70 * len(grid) + 110))


def stored_whatif_figure(whatif: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for method, group in whatif[whatif.method != "dense"].groupby("method", sort=False):
        group = group.sort_values("compute_sparsity")
        fig.add_trace(go.Scatter(x=group.compute_sparsity, y=group.ppl_ratio,
                                 mode="lines+markers", name=method, text=group.param,
                                 hovertemplate="%{text}<br>compute sparsity %{x:.1%}<br>PPL "
                                               "ratio %{y:.4f}<extra>" + method + "</extra>"))
    fig.add_hline(y=1.0, line={"color": "gray", "dash": "dot"})
    fig.update_xaxes(tickformat=".0%")
    return common.style(fig, 340, "compute sparsity (share of causal blocks skipped)",
                        "perplexity ratio (sparse / dense)")


def stored_section(art) -> str | None:
    """The per-head metrics (and stored what-if) of `art`; returns the analysed model."""
    heads = analyses.table(art, "heads")
    info = analyses.summary(art)
    if heads is None or heads.empty:
        st.warning(f"Analysis {art.name!r} has no per-head table; run it again with "
                   f"`workbench analyze attention --name {art.name} --overwrite`.")
        return info.get("model")
    counts = info.get("class_counts") or heads.pattern_class.value_counts().to_dict()
    cols = st.columns(len(counts) + 1)
    cols[0].metric("tokens analysed", f"{info.get('n_tokens', 0):,}")
    for col, (name, count) in zip(cols[1:], counts.items()):
        col.metric(f"{name} heads", int(count))
    metric = st.selectbox("Metric", list(METRICS), format_func=lambda m: f"{m}: {METRICS[m]}",
                          key="attn-metric")
    common.chart(head_heatmap(heads, metric), key="attn-heads")
    with st.expander("Per-head table", expanded=False):
        common.table(heads[[c for c in TABLE_COLUMNS if c in heads]],
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in TABLE_COLUMNS[3:]})
    whatif = analyses.table(art, "whatif")
    if whatif is not None and len(whatif) > 1:
        st.markdown("**Stored what-if: the model's loss with sparse attention in every layer** "
                    f"(on {info.get('n_tokens', 0):,} tokens)")
        common.chart(stored_whatif_figure(whatif), key="attn-stored-whatif")
    return info.get("model")


# -- live pattern map and what-if ---------------------------------------------------------------
def pattern_figure(result, tokens: list[str], title: str, budgeted: bool) -> go.Figure:
    """The shown head's pattern [T, T]: dense, or under the budget with the kept cells in blue
    (renormalized attention) and the dropped ones in red (the dense model's attention)."""
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    causal = np.tril(np.ones(result.kept.shape, dtype=bool))
    hover = "query %{y}<br>key %{x}<br>attention %{z:.4f}<extra>%{fullData.name}</extra>"
    fig = go.Figure()
    if budgeted:
        kept = np.where(result.kept, result.pattern_sparse, np.nan)
        dropped = np.where(causal & ~result.kept, result.pattern_dense, np.nan)
        fig.add_trace(go.Heatmap(z=kept, x=labels, y=labels, colorscale="Blues", zmin=0,
                                 zmax=1, name="kept (renormalized)", hovertemplate=hover,
                                 colorbar={"title": "kept", "x": 1.0, "len": 0.9}))
        top = float(np.nanmax(dropped)) if np.isfinite(dropped).any() else 1.0
        fig.add_trace(go.Heatmap(z=dropped, x=labels, y=labels, colorscale="Reds", zmin=0,
                                 zmax=max(top, 1e-6), name="dropped (dense attention)",
                                 hovertemplate=hover,
                                 colorbar={"title": "dropped", "x": 1.09, "len": 0.9}))
    else:
        fig.add_trace(go.Heatmap(z=np.where(causal, result.pattern_dense, np.nan), x=labels,
                                 y=labels, colorscale="Blues", zmin=0, name="dense",
                                 hovertemplate=hover, colorbar={"title": "attention"}))
    fig.update_yaxes(autorange="reversed", title_text="query token")
    fig.update_xaxes(tickangle=-60, title_text="key token")
    fig.update_layout(title=title)
    return common.style(fig, min(860, max(420, 12 * len(tokens) + 220)))


def token_effect_figure(result, tokens: list[str]) -> go.Figure:
    labels = [f"{i + 1}:{t}" for i, t in enumerate(tokens[1:])]
    fig = go.Figure(go.Bar(x=labels, y=result.kl, name="KL(dense || budgeted)",
                           hovertemplate="%{x}<br>KL %{y:.4f} nats<extra></extra>"))
    fig.update_xaxes(tickangle=-60)
    return common.style(fig, 300, "predicted token (position:token)",
                        "KL of the next-token distribution (nats)")


def live_section(default_model: str | None) -> None:
    models = [a.name for a in common.artifacts("model")]
    root = str(common.lab().root)
    c1, c2, c3 = st.columns([2, 1, 1])
    index = models.index(default_model) if default_model in models else 0
    spec = c1.selectbox("Model", models, index=index, key="attn-model")
    model = common.model(spec)
    layer = c2.selectbox("Layer", list(range(model.cfg.n_layers)), key="attn-layer")
    head = c3.selectbox("Head", list(range(model.cfg.n_heads)), key="attn-head")
    text = st.text_area("Text", DEFAULT_TEXT, height=80, key="attn-text")
    stamp = common.created(spec)
    tokens, n_full = _tokens(root, spec, stamp, text)
    if n_full > len(tokens):
        st.caption(f"The text has {n_full} tokens; the first {len(tokens)} (the model's "
                   "context) are used.")
    left, right = st.columns([3, 2])
    budget = BUDGETS[left.radio("What-if budget", list(BUDGETS), horizontal=True,
                                key="attn-budget")]
    only_layer = right.radio("Apply the budget to", ["every layer", "the chosen layer only"],
                             horizontal=True, key="attn-scope") != "every layer"
    block_size = 8
    if budget == "top_fraction":
        value = st.slider("Kept share of each attention row (the most attended keys)", 0.05,
                          1.0, 0.25, 0.05, key="attn-fraction",
                          help="Query q keeps ceil(share x (q + 1)) keys; the rest of its row "
                               "is dropped and the row renormalized.")
    else:
        b1, b2 = st.columns([1, 3])
        block_size = b1.selectbox("Block size (tokens)", [4, 8, 16], index=1, key="attn-bs")
        n_blocks = -(-len(tokens) // block_size)
        value = b2.slider("Key blocks kept per query block (first block and diagonal always "
                          "kept)", 1, max(2, n_blocks), min(2, n_blocks),
                          key=f"attn-blocks-{block_size}-{n_blocks}",
                          help="Blocks chosen by mean-pooled Q . K (sparse_ops."
                               "topk_block_index, MInference block-sparse).")
    result = _whatif(root, spec, stamp, text, budget, float(value), int(block_size),
                     only_layer, int(layer), int(head))
    m = st.columns(4)
    m[0].metric("loss on the text (nats)", f"{result.loss_sparse:.3f}",
                f"{result.loss_delta:+.3f} vs dense {result.loss_dense:.3f}",
                delta_color="inverse")
    m[1].metric("mean KL to the dense model", f"{result.mean_kl:.4f}")
    m[2].metric("top-1 prediction unchanged", f"{result.top1_agreement:.0%}")
    m[3].metric("compute sparsity", f"{result.compute_sparsity:.0%}",
                help="1 - kept / causal cells of the budgeted layers (tokens for the top "
                     "share, blocks for the block budget)")
    view = st.radio("Pattern map", ["under the budget: kept and dropped", "dense"],
                    horizontal=True, key="attn-view")
    scope = f"layer {layer}" if only_layer else "every layer"
    budgeted = view != "dense"
    title = (f"Layer {layer} head {head}: {result.budget.describe()} in {scope} (blue kept, "
             "red dropped)" if budgeted else f"Layer {layer} head {head}: dense attention")
    common.chart(pattern_figure(result, tokens, title, budgeted), key="attn-pattern")
    t1, t2 = st.columns([3, 1])
    with t1:
        common.chart(token_effect_figure(result, tokens), key="attn-kl")
    with t2:
        st.markdown("**Attention output error per layer**")
        common.table(result.per_layer.rename(columns={"compute_sparsity": "sparsity",
                                                      "output_error": "||z' - z|| / ||z||"}),
                     column_config={"sparsity": st.column_config.NumberColumn(format="%.2f"),
                                    "||z' - z|| / ||z||": st.column_config.NumberColumn(
                                        format="%.4f")})


@common.page
def main() -> None:
    """The Attention sparsity page."""
    st.title("Attention sparsity")
    if not common.artifacts("model"):
        analyses.offer_default_lab("The attention analysis and the pattern map need a model.",
                                   "attention-lab")
        return
    arts = analyses.analyses("attention")
    analysed = None
    st.subheader("Per-head metrics")
    if arts:
        with common.guarded("the stored attention analysis"):
            analysed = stored_section(analyses.choose_analysis(arts, "Analysis", "attn-art"))
    else:
        st.info("No attention analysis in the lab yet: the per-head metrics (k@p coverage, "
                "entropy, sink and local mass, pattern class) come from `workbench analyze "
                "attention`. The live pattern map below works without it.")
        with st.expander("Start the attention analysis (a background job; a minute or two on "
                         "the default lab's model)"):
            analyses.job_form("attention", "Start the attention analysis", "attn-job")
    st.subheader("Pattern map and sparsity what-if")
    with common.guarded("the pattern map"):
        live_section(analysed.partition("@")[0] if analysed else None)


main()
