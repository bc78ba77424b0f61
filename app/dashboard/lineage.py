"""The lab's lineage graph as a plotly figure: artifacts in columns by depth (a parent is always
left of its children), coloured by kind, edges from parent to child."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.lab import Artifact

KIND_COLOURS = {
    "corpus": "#4C78A8", "tokenizer": "#72B7B2", "model": "#F58518", "activations": "#54A24B",
    "probe": "#B279A2", "sae": "#E45756", "steering": "#EECA3B", "analysis": "#9D755D",
}


def depths(arts: list[Artifact]) -> dict[str, int]:
    """Longest distance from a root (an artifact without parents in the lab) per name."""
    parents = {a.name: [p for p in a.parents if p] for a in arts}
    out: dict[str, int] = {}

    def depth(name: str, seen: frozenset = frozenset()) -> int:
        if name in out:
            return out[name]
        if name in seen or name not in parents:
            return -1
        value = 1 + max([depth(p, seen | {name}) for p in parents[name]], default=-1)
        out[name] = value
        return value

    for name in parents:
        depth(name)
    return out


def lineage_figure(arts: list[Artifact]) -> go.Figure:
    level = depths(arts)
    columns: dict[int, list[str]] = {}
    for a in sorted(arts, key=lambda a: (a.kind, a.name)):
        columns.setdefault(level[a.name], []).append(a.name)
    pos = {}
    for x, names in columns.items():
        for i, name in enumerate(names):
            pos[name] = (x, -(i - (len(names) - 1) / 2))
    fig = go.Figure()
    ex, ey = [], []
    for a in arts:
        for p in a.parents:
            if p in pos:
                ex += [pos[p][0], pos[a.name][0], None]
                ey += [pos[p][1], pos[a.name][1], None]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line={"color": "#bbb", "width": 1.5},
                             hoverinfo="skip", showlegend=False))
    by_kind: dict[str, list[Artifact]] = {}
    for a in arts:
        by_kind.setdefault(a.kind, []).append(a)
    for kind, items in by_kind.items():
        fig.add_trace(go.Scatter(
            x=[pos[a.name][0] for a in items], y=[pos[a.name][1] for a in items],
            mode="markers+text", name=kind, text=[a.name for a in items],
            textposition="top center", marker={"size": 16, "color": KIND_COLOURS.get(kind)},
            hovertext=[f"{a.name} ({a.kind})<br>parents: {', '.join(a.parents) or 'none'}"
                       for a in items], hoverinfo="text",
        ))
    n_rows = max((len(v) for v in columns.values()), default=1)
    fig.update_xaxes(visible=False, range=[-0.6, max(columns, default=0) + 0.6])
    fig.update_yaxes(visible=False, range=[-(n_rows / 2) - 0.3, n_rows / 2 + 0.3])
    fig.update_layout(height=max(260, 90 * n_rows), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      legend={"orientation": "h", "y": -0.05})
    return fig
