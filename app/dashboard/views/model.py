"""Model page: tokens, next-token predictions and activations at any hook of a model."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from app.dashboard import common
from workbench.models.hooks import active_hooks
from workbench.models.inspect import inspect_text, top_units

DEFAULT_TEXT = "The dog sleeps in the garden. Der Hund schläft im Garten."


@st.cache_data(show_spinner="Running the model ...", max_entries=32)
def _inspect(root: str, spec: str, stamp: float, text: str, hook: str, k: int):
    return inspect_text(common.model(spec), text, hook=hook or None, k=k)


@st.cache_data(show_spinner=False, max_entries=8)
def _hooks(root: str, spec: str, stamp: float) -> list[str]:
    return active_hooks(common.model(spec))


def choose_model() -> str | None:
    names = [a.name for a in common.artifacts("model")]
    options = names + ["Other (TransformerLens or Hugging Face name) ..."]
    choice = st.selectbox("Model", options, key="model-choice")
    if choice == options[-1]:
        spec = st.text_input("Model name", placeholder="gpt2, tl:pythia-70m, hf:/path/to/folder",
                             help="Loaded through TransformerLens; a hub name needs the network "
                                  "or the Hugging Face cache.")
        return spec.strip() or None
    return choice


def predictions_table(view) -> pd.DataFrame:
    rows = []
    for pos, (tok, tops, probs) in enumerate(zip(view.tokens, view.top_tokens,
                                                 view.top_probs.tolist())):
        row = {"pos": pos, "token": repr(tok)[1:-1]}
        actual = view.tokens[pos + 1] if pos + 1 < len(view.tokens) else None
        for i, (t, p) in enumerate(zip(tops, probs)):
            row[f"#{i + 1}"] = f"{repr(t)[1:-1]} ({p:.0%})"
        row["next in text"] = repr(actual)[1:-1] if actual is not None else ""
        rows.append(row)
    return pd.DataFrame(rows)


def activations_view(view) -> None:
    acts = view.acts
    n_units = acts.shape[1]
    st.caption(f"{len(view.tokens)} tokens x {n_units} units (unit = {view.unit_labels})")
    if n_units > 256:
        first = st.slider("First unit shown", 0, n_units - 256, 0, step=64)
        shown = acts[:, first:first + 256]
    else:
        first, shown = 0, acts
    labels = [f"{i}:{repr(t)[1:-1]}" for i, t in enumerate(view.tokens)]
    fig = px.imshow(shown.numpy(), aspect="auto", color_continuous_scale="RdBu_r",
                    color_continuous_midpoint=0.0, labels={"x": "unit", "y": "token",
                                                          "color": "activation"},
                    x=list(range(first, first + shown.shape[1])), y=labels)
    common.chart(common.style(fig, height=max(300, 22 * len(labels) + 80)), key="heatmap")
    ids, values = top_units(acts, 5)
    rows = [{"pos": i, "token": repr(t)[1:-1],
             **{f"unit #{r + 1}": f"{u} ({v:.2f})" for r, (u, v) in enumerate(zip(iu, iv))}}
            for i, (t, iu, iv) in enumerate(zip(view.tokens, ids.tolist(), values.tolist()))]
    st.markdown("**Top units per token**")
    common.table(pd.DataFrame(rows))


@common.page
def main() -> None:
    """The Model page."""
    st.title("Model")
    spec = choose_model()
    if not spec:
        common.missing("There is no model in the lab yet. Train one (Lab page > Start a job), "
                       "or name a TransformerLens model above.",
                       "Build the default lab", ["lab", "build", "default"], key="model")
        return
    root = str(common.lab().root)
    stamp = common.created(spec)
    hooks = _hooks(root, spec, stamp)
    default_hook = next((h for h in hooks if h.endswith("hook_resid_post")), hooks[0])
    text = st.text_area("Text", DEFAULT_TEXT, height=90, key="model-text")
    left, right = st.columns([3, 1])
    hook = left.selectbox("Hook", hooks, index=hooks.index(default_hook), key="model-hook")
    k = right.number_input("Predictions per token", 1, 20, 5, key="model-k")
    view = _inspect(root, spec, stamp, text, hook, int(k))
    st.markdown("**Tokens**")
    st.markdown(" ".join(f"`{repr(t)[1:-1]}`" for t in view.tokens))
    tab_pred, tab_acts = st.tabs(["Next-token predictions", f"Activations at {hook}"])
    with tab_pred:
        common.table(predictions_table(view))
    with tab_acts:
        activations_view(view)


main()
