"""SAEs page: training curves, the evaluation table, the NMSE-vs-L0 frontier, the feature
density histogram and the ZF plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.dashboard import common

EVAL_COLUMNS = {  # catalog metric -> column title
    "nmse": "NMSE", "fvu": "FVU", "l0": "L0", "eval_dead_fraction": "dead",
    "ce_loss_score": "CE score", "delta_lm_loss": "delta loss", "kl_div_score": "KL score",
    "eps_lbo_scaled_median": "eps_LBO x (h-1), median", "cossim": "cos sim",
}


def eval_table(arts) -> pd.DataFrame:
    rows = []
    for a in arts:
        row = {"SAE": a.name, "arch": a.manifest.get("arch") or a.config.get("arch") or "?",
               "latents": a.manifest.get("d_sae")}
        for key, title in EVAL_COLUMNS.items():
            value = a.metrics.get(key)
            row[title] = float(value) if isinstance(value, (int, float)) else None
        rows.append(row)
    return pd.DataFrame(rows)


def frontier_figure(table: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    done = table.dropna(subset=["NMSE", "L0"])
    for arch, group in done.groupby("arch"):
        group = group.sort_values("L0")
        fig.add_trace(go.Scatter(x=group["L0"], y=group["NMSE"], mode="lines+markers+text",
                                 name=arch, text=group["SAE"], textposition="top center",
                                 marker={"size": 11}))
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return common.style(fig, 380, "L0 (active latents per token, log)",
                        "NMSE (held-out, log; lower is better)")


def curves_section(arts) -> None:
    lab = common.lab()
    histories = {}
    for a in arts:
        jobs = [j for j in lab.jobs(a.name, limit=20) if j["kind"] == "sae-train"]
        points = []
        for job in reversed(jobs):  # oldest first: a resumed run continues the curve
            points += lab.job_history(job["id"])
        if points:
            histories[a.name] = pd.DataFrame(points)
    if not histories:
        st.info("No training curves recorded for these SAEs (the catalog keeps curves of SAEs "
                "trained from now on). Train one on the Lab page > Start a job.")
        return
    metrics = sorted({c for h in histories.values() for c in h.columns
                      if c not in ("step", "time") and pd.api.types.is_numeric_dtype(h[c])})
    default = metrics.index("fvu") if "fvu" in metrics else 0
    metric = st.selectbox("Metric", metrics, index=default, key="curve-metric")
    fig = go.Figure()
    for name, h in histories.items():
        if metric in h:
            fig.add_trace(go.Scatter(x=h["step"], y=h[metric], mode="lines", name=name))
    common.chart(common.style(fig, 340, "training step", metric), key="curves")
    missing = [a.name for a in arts if a.name not in histories]
    if missing:
        st.caption(f"No curve recorded for: {', '.join(missing)}")


def density_figure(evals: dict[str, dict]) -> go.Figure:
    fig = go.Figure()
    for name, e in evals.items():
        hist = e.get("density_histogram") or {}
        edges, counts = hist.get("log10_edges"), hist.get("counts")
        if edges and counts:
            centres = (np.array(edges[:-1]) + np.array(edges[1:])) / 2
            fig.add_trace(go.Bar(x=centres, y=counts, name=f"{name} ({hist.get('n_dead', 0)} "
                                 "dead)", opacity=0.65))
    fig.update_layout(barmode="overlay")
    return common.style(fig, 340, "log10 firing frequency (fraction of tokens)",
                        "latents")


def zf_figure(name: str, zf: dict) -> go.Figure:
    z, f = np.array(zf["norm_z"]), np.array(zf["norm_f_tilde"])
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=z, y=f, mode="markers", name="tokens",
                               marker={"size": 4, "opacity": 0.5, "color": zf.get("eps_lbo"),
                                       "colorscale": "Viridis", "showscale": True,
                                       "colorbar": {"title": "eps_LBO"}}))
    top = float(max(z.max(initial=1.0), f.max(initial=1.0))) * 1.05
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="||f~|| = ||z||",
                             line={"color": "black", "dash": "dot"}))
    for band in zf.get("bands", []):
        for slope in (band["lower_slope"], band["upper_slope"]):
            if slope:
                fig.add_trace(go.Scatter(x=[0, top], y=[0, slope * top], mode="lines",
                                         name=f"c = {band['c']}", showlegend=slope ==
                                         band["lower_slope"], line={"width": 1}))
    fig.update_xaxes(range=[0, top])
    fig.update_yaxes(range=[0, top])
    fig.update_layout(title=f"ZF plot of {name} (h = {zf.get('h')})")
    return common.style(fig, 420, "||z|| (SAE input norm)", "||f~|| (scaled code norm)")


@common.page
def main() -> None:
    """The SAEs page."""
    st.title("Sparse autoencoders")
    arts = common.artifacts("sae")
    if not arts:
        acts = [a.name for a in common.artifacts("activations")]
        if acts:
            common.missing(f"No SAEs yet. Train one on the activations {acts[0]!r}.",
                           "Train an SAE", ["sae", "train", "--acts", acts[0], "--name",
                                            f"{acts[0]}-topk", "--latents", "2048", "--k", "32"],
                           [f"{acts[0]}-topk"], key="sae")
        else:
            common.missing("No SAEs and no activations yet: build the default lab (it trains "
                           "two SAEs and evaluates them).", "Build the default lab",
                           ["lab", "build", "default"], key="sae-lab")
        return
    table = eval_table(arts)
    evals = {a.name: e for a in arts if (e := common.artifact_json(a, "eval.json"))}
    st.subheader("Evaluation")
    common.table(table, column_config={c: st.column_config.NumberColumn(format="%.4g")
                                       for c in EVAL_COLUMNS.values()})
    unevaluated = [a.name for a in arts if a.name not in evals]
    if unevaluated:
        name = st.selectbox("Not evaluated yet", unevaluated, key="uneval")
        common.missing(f"{len(unevaluated)} SAE(s) have no evaluation.", f"Evaluate {name}",
                       ["sae", "eval", name], [name], key=f"eval-{name}")
    left, right = st.columns(2)
    with left:
        st.subheader("NMSE vs L0")
        if table[["NMSE", "L0"]].dropna().empty:
            st.caption("The frontier appears once SAEs are evaluated.")
        else:
            common.chart(frontier_figure(table), key="frontier")
    with right:
        st.subheader("Feature density")
        if evals:
            common.chart(density_figure(evals), key="density")
        else:
            st.caption("Density histograms come with the evaluation.")
    st.subheader("Training curves")
    curves_section(arts)
    st.subheader("ZF plot (quasi-orthogonality)")
    with_zf = [n for n, e in evals.items() if e.get("zf_plot")]
    if with_zf:
        name = st.selectbox("SAE", with_zf, key="zf-sae")
        common.chart(zf_figure(name, evals[name]["zf_plot"]), key="zf")
        e = evals[name]
        st.caption(f"median eps_LBO x (h-1) = {e.get('eps_lbo_scaled_median', float('nan')):.3g}; "
                   f"share of tokens within c = 1: {e.get('frac_within_c1.0', float('nan')):.1%}")
    else:
        st.caption("The ZF plot comes with the evaluation.")


main()
