"""Depth utilization page: the angular-distance matrix between residual streams, layer removal
and usefulness bars, per-layer variance and causal scores of a stored analysis (`workbench
analyze depth`; a comparison across models when it holds several)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.dashboard import analyses, common

VARIANCES = {"resid_var": "residual stream", "attn_var": "attention output",
             "mlp_var": "MLP output"}


def angular_figure(angular: pd.DataFrame, column: str) -> go.Figure:
    """d(l, l + n) as a matrix: rows the starting residual stream l, columns the distance n."""
    grid = angular.pivot(index="layer", columns="n", values=column).sort_index()
    z = grid.to_numpy()
    targets = [[f"x{l + n}" for n in grid.columns] for l in grid.index]
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"n = {n}" for n in grid.columns],
        y=[f"x{l} (input of block {l})" for l in grid.index], customdata=targets,
        colorscale="Viridis", zmin=0, zmax=float(np.nanmax(z)) if np.isfinite(z).any() else 1,
        text=np.where(np.isfinite(z), np.round(z, 3).astype(str), ""), texttemplate="%{text}",
        colorbar={"title": "distance"},
        hovertemplate="from %{y} to %{customdata}<br>angular distance %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return common.style(fig, max(300, 55 * len(grid) + 120),
                        "n (blocks from x_l to x_(l+n); x_L is the final residual stream)",
                        "from residual stream x_l")


def removal_figure(layers: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Bar(x=[f"block {l}" for l in layers.layer], y=layers.skip_delta,
                           marker_color="#d62728", text=[f"{v:+.3f}" for v in layers.skip_delta],
                           textposition="outside",
                           hovertemplate="%{x}<br>loss +%{y:.4f} nats when skipped"
                                         "<extra></extra>"))
    fig.update_yaxes(rangemode="tozero")
    return common.style(fig, 330, None, "loss increase when the block is skipped (nats)")


def usefulness_figure(layers: pd.DataFrame, ratio: float) -> go.Figure:
    colors = ["#2ca02c" if u else "#7f7f7f" for u in layers.useful]
    fig = go.Figure(go.Bar(x=[f"block {l}" for l in layers.layer], y=layers.affine_ratio,
                           marker_color=colors, text=[f"{v:.3f}" for v in layers.affine_ratio],
                           textposition="outside",
                           customdata=layers.affine_fit_r2,
                           hovertemplate="%{x}<br>loss ratio %{y:.4f}<br>affine fit R² "
                                         "%{customdata:.3f}<extra></extra>"))
    line = {"color": "black", "dash": "dash"}
    fig.add_hline(y=ratio, line=line)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=line,  # its legend entry
                             name=f"useful above x{ratio:g} (green bars)"))
    fig.update_traces(selector={"type": "bar"}, showlegend=False)
    top = float(max(layers.affine_ratio.max(), ratio)) * 1.08
    low = float(min(layers.affine_ratio.min(), 1.0)) * 0.97
    fig.update_yaxes(range=[low, top])
    return common.style(fig, 330, None, "loss ratio, block replaced by an affine map")


def variance_figure(layers: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for column, label in VARIANCES.items():
        values = layers[column]
        if values.notna().any():
            fig.add_trace(go.Scatter(x=layers.layer, y=values, mode="lines+markers",
                                     name=label))
    fig.update_yaxes(type="log", dtick=1)
    fig.update_xaxes(dtick=1)
    return common.style(fig, 330, "block", "output variance (log scale)")


def causal_figure(causal: pd.DataFrame) -> go.Figure:
    grid = causal.pivot(index="skipped", columns="layer", values="score").sort_index()
    z = grid.to_numpy()
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"block {t}" for t in grid.columns], y=[f"skip {s}" for s in grid.index],
        colorscale="Viridis", colorbar={"title": "score"}, zmin=0,
        text=np.where(np.isfinite(z), np.round(z, 2).astype(str), ""), texttemplate="%{text}",
        hovertemplate="%{y}: %{x}'s update changes by %{z:.3f} (relative)<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return common.style(fig, max(260, 50 * len(grid) + 120), "later block t",
                        "skipped block s")


def missing_section() -> None:
    st.info("No depth analysis in the lab yet. It measures how much each block changes the "
            "residual stream (angular distance), the loss without each block, whether an "
            "affine map could replace it (usefulness), and per-layer output variance.")
    analyses.job_form("depth", "Start the depth analysis", "depth-job")


def model_view(art, model: str | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                                 dict]:
    """The angular, layers and causal tables (of `model` in a comparison) and its summary."""
    info = analyses.summary(art)
    frames = [analyses.table(art, t) for t in ("angular", "layers", "causal")]
    if model is not None:
        frames = [f[f.model == model] if f is not None and "model" in f else f for f in frames]
        info = next((s for s in info.get("per_model", []) if s.get("model") == model), info)
    return (*frames, info)


@common.page
def main() -> None:
    """The Depth utilization page."""
    st.title("Depth utilization")
    if not common.artifacts("model"):
        analyses.offer_default_lab("The depth analysis needs a model.", "depth-lab")
        return
    arts = analyses.analyses("depth")
    if not arts:
        missing_section()
        return
    art = analyses.choose_analysis(arts, "Analysis", "depth-art")
    comparison = analyses.table(art, "comparison")
    model = None
    if comparison is not None and not comparison.empty:
        st.subheader("Comparison across models")
        common.table(comparison, column_config={
            c: st.column_config.NumberColumn(format="%.4g") for c in
            ("loss_base", "global_usefulness", "mean_adjacent_distance", "max_skip_delta",
             "mean_skip_delta", "resid_var_growth")})
        model = st.selectbox("Model", comparison.model.tolist(), key="depth-model")
    angular, layers, causal, info = model_view(art, model)
    if layers is None or layers.empty or angular is None:
        st.warning(f"Analysis {art.name!r} lacks its per-layer tables; run it again with "
                   f"`workbench analyze depth --name {art.name} --overwrite`.")
        return
    ratio = float(info.get("useful_ratio", 1.1))
    c = st.columns(4)
    c[0].metric("model", str(info.get("model", model or "?")))
    c[1].metric("loss (nats)", f"{info.get('loss_base', float('nan')):.3f}")
    c[2].metric("global usefulness", f"{info.get('global_usefulness', float('nan')):.2f}",
                help=f"share of blocks whose affine replacement raises the loss by more than "
                     f"x{ratio:g}")
    c[3].metric("tokens", f"{info.get('n_tokens', 0):,}")
    st.subheader("Angular distance between residual streams")
    last = st.toggle("Last token only (ShortGPT)", key="depth-last")
    common.chart(angular_figure(angular, "distance_last_token" if last else "distance"),
                 key="depth-angular")
    st.caption("d(x_l, x_{l+n}) = arccos(cos(x_l, x_{l+n})) / pi, averaged over tokens: small "
               "values mean the n blocks after x_l barely change the residual stream.")
    left, right = st.columns(2)
    with left:
        st.subheader("Layer removal")
        common.chart(removal_figure(layers), key="depth-removal")
    with right:
        st.subheader("Usefulness")
        common.chart(usefulness_figure(layers, ratio), key="depth-useful")
    left, right = st.columns(2)
    with left:
        st.subheader("Per-layer variance")
        common.chart(variance_figure(layers), key="depth-variance")
    with right:
        st.subheader("Causal scores")
        if causal is not None and not causal.empty:
            common.chart(causal_figure(causal), key="depth-causal")
            st.caption("How much skipping block s changes the update of each later block t "
                       "(||u_t' - u_t|| / ||u_t||).")
        else:
            st.caption("Causal scores need at least two blocks.")


main()
