"""Sparsity laws page: the PPL-p% activation ratio of lab models along training, the fitted
laws ("Sparsing Law", Luo et al. 2024) with their parameters, and the limit ratio against
width/depth (`workbench analyze sparsity-law`, `workbench lab build sparsity-law`)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from app.dashboard import analyses, common

LAW_TEXT = {"relu": "A(D) = exp(-c D^alpha + b) + A0", "silu": "A(D) = -c D^(-alpha) + A0"}
PARAMS = ("c", "alpha", "b", "A0")


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def token_ticks(tokens: pd.Series) -> dict:
    """Log-axis ticks at 1, 2, 5 x 10^k tokens over the data, labelled 500, 1k, 2M, ..."""
    lo, hi = float(tokens.min()), float(tokens.max())
    if not (lo > 0 and hi > 0):
        return {}
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)),
                                          math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo / 1.6 <= t <= hi * 1.6]
    return {"tickvals": ticks, "ticktext": [_si(t) for t in ticks]}


def ratio_figure(ratios: pd.DataFrame, curves: pd.DataFrame, p: float) -> go.Figure:
    """Activation ratio per checkpoint (filled: used in the fit) and the fitted curves."""
    fig = go.Figure()
    colors = px.colors.qualitative.D3
    for i, (model, group) in enumerate(ratios.groupby("model", sort=False)):
        color = colors[i % len(colors)]
        group = group.sort_values("tokens")
        used = group.used_in_fit.astype(bool)
        fig.add_trace(go.Scatter(
            x=group.tokens, y=group.activation_ratio, mode="lines+markers", name=model,
            legendgroup=model, line={"color": color, "width": 1},
            marker={"size": 9, "color": [color if u else "white" for u in used],
                    "line": {"color": color, "width": 2}},
            customdata=group[["step", "ppl_ratio", "cett_target"]].to_numpy(),
            hovertemplate="step %{customdata[0]}<br>%{x:.3s} tokens<br>activation ratio "
                          "%{y:.4f}<br>PPL ratio %{customdata[1]:.4f}<br>CETT target "
                          "%{customdata[2]:.3g}<extra>" + model + "</extra>"))
        fit = curves[curves.model == model]
        if not fit.empty:
            fig.add_trace(go.Scatter(x=fit.D * 1e9, y=fit.fitted, mode="lines",
                                     name=f"{model} (fitted law)", legendgroup=model,
                                     line={"color": color, "dash": "dash", "width": 2},
                                     hovertemplate="fitted %{y:.4f}<extra></extra>"))
    fig.update_xaxes(type="log", **token_ticks(ratios.tokens))
    fig.update_layout(title=f"Activation ratio at PPL+{p:g}% along training (hollow markers: "
                            "left out of the fit)")
    return common.style(fig, 430, "training tokens (log scale)",
                        "activation ratio (share of active MLP neurons)")


def params_table(fits: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the law, each parameter as value ± standard error, R^2."""
    rows = []
    for model, fit in fits.groupby("model", sort=False):
        form = str(fit.form.iloc[0])
        row = {"model": model, "law": LAW_TEXT.get(form, form)}
        values = {r.param: (r.value, r.stderr) for r in fit.itertuples()}
        for param in PARAMS:
            if param in values:
                value, err = values[param]
                row[param] = f"{value:.4g} ± {err:.2g}"
            else:
                row[param] = ""
        row["R²"] = float(fit.r2.iloc[0])
        row["points"] = int(fit.n_points.iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def width_depth_figure(models: pd.DataFrame) -> go.Figure:
    """Limit ratio A0 (final ratio where no fit) against width/depth, per activation."""
    frame = models.assign(limit=models.limit_ratio.where(models.limit_ratio.between(0, 1),
                                                         models.final_ratio))
    fig = go.Figure()
    colors = px.colors.qualitative.D3
    for i, (act, group) in enumerate(frame.groupby("act_fn")):
        group = group.sort_values("width_depth")
        color = colors[i % len(colors)]
        hover = "%{text}<br>width/depth %{x:g}<br>%{y:.4f}<extra></extra>"
        fig.add_trace(go.Scatter(x=group.width_depth, y=group.limit, mode="lines+markers",
                                 name=f"{act}: limit ratio A0", text=group.model,
                                 hovertemplate=hover, line={"color": color},
                                 marker={"size": 11, "color": color}))
        fig.add_trace(go.Scatter(x=group.width_depth, y=group.final_ratio, mode="markers",
                                 name=f"{act}: final checkpoint", text=group.model,
                                 hovertemplate=hover,
                                 marker={"size": 9, "symbol": "x", "color": color}))
    fig.update_xaxes(type="log")
    return common.style(fig, 340, "width / depth (d_model / n_layers, log scale)",
                        "activation ratio")


def missing_section() -> None:
    st.info("No sparsity-law analysis in the lab yet. It measures the activation ratio at "
            "every kept checkpoint of lab models (trained with `--checkpoints geometric`) and "
            "fits the laws.")
    ready = analyses.checkpointed_models()
    if ready:
        st.markdown(f"**Analyse models with kept checkpoints** ({', '.join(ready)})")
        analyses.job_form("sparsity-law", "Start the analysis", "law-analyze")
    else:
        st.caption("No lab model keeps checkpoints yet: the sparsity-law lab trains ReLU and "
                   "SiLU models with checkpoints and analyses them.")
    st.markdown("**Build the sparsity-law lab**")
    analyses.job_form("sparsity-law-lab", "Build the sparsity-law lab", "law-lab")


@common.page
def main() -> None:
    """The Sparsity laws page."""
    st.title("Sparsity laws")
    arts = analyses.analyses("sparsity-law")
    if not arts:
        missing_section()
        return
    art = analyses.choose_analysis(arts, "Analysis", "law-artifact")
    ratios, fits = analyses.table(art, "ratios"), analyses.table(art, "fits")
    curves, models = analyses.table(art, "curves"), analyses.table(art, "models")
    if ratios is None or ratios.empty:
        st.warning(f"Analysis {art.name!r} holds no activation ratios; run it again "
                   f"(`workbench analyze sparsity-law ... --name {art.name} --overwrite`).")
        return
    info = analyses.summary(art)
    names = ratios.model.unique().tolist()
    chosen = st.multiselect("Models", names, names, key="law-models")
    if not chosen:
        st.caption("Choose at least one model.")
        return
    shown = ratios[ratios.model.isin(chosen)]
    common.chart(ratio_figure(shown, curves[curves.model.isin(chosen)] if curves is not None
                              else pd.DataFrame(columns=["model", "D", "fitted"]),
                              float(info.get("p", 1.0))), key="law-ratios")
    st.caption("Activation ratio = mean share of MLP neurons above their CETT threshold, the "
               "threshold chosen so the perplexity rises by p% (one CETT target per model, "
               f"searched on its last {info.get('joint_last', '?')} checkpoints). D in the laws "
               "is in billions of tokens.")
    st.subheader("Fitted laws")
    if fits is None or fits.empty:
        st.caption("No law could be fitted (too few checkpoints after the fit's first step).")
    else:
        common.table(params_table(fits[fits.model.isin(chosen)]),
                     column_config={"R²": st.column_config.NumberColumn(format="%.3f")})
    if models is not None and not models.empty:
        st.subheader("Limit ratio against width/depth")
        common.chart(width_depth_figure(models[models.model.isin(chosen)]), key="law-wd")
        cols = ["model", "act_fn", "n_layers", "d_model", "n_params", "width_depth",
                "final_ratio", "limit_ratio", "r2", "trend"]
        common.table(models[models.model.isin(chosen)][[c for c in cols if c in models]].rename(
            columns={"width_depth": "width/depth", "final_ratio": "final ratio",
                     "limit_ratio": "limit A0", "r2": "R²", "trend": "trend (rho)",
                     "n_params": "parameters"}),
            column_config={c: st.column_config.NumberColumn(format="%.4g")
                           for c in ("final ratio", "limit A0", "R²", "trend (rho)")})
    claims = info.get("claims") or []
    if claims:
        st.subheader("The paper's claims at this scale")
        for claim in claims:
            verdict = "held" if claim.get("held") else "not held"
            st.markdown(f"- **{claim.get('claim')}**: {verdict}. {claim.get('evidence', '')}")


main()
