"""MoE-X page: the chess lab's board-state table (the paper's Table 1 plus the ablation rows),
the router score against each expert's true L0, expert load and dead experts, coverage and
reconstruction over the threshold sweep, and the board view (a validation game, a position,
the board and the units most active there with their best board-state cells)."""

from __future__ import annotations

import chess
import chess.svg
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.dashboard import common
from app.dashboard.job_forms import JOB_KINDS, plan
from saes.board_eval import THRESHOLDS, ChessTable

ANALYSIS = "moex_board_state"
PAPER = ("Paper (Yang et al. 2025, Table 1; val loss / coverage / reconstruction): GELU "
         "0.213 / 0.356 / 0.608, ReLU 0.215 / 0.312 / 0.581, Switch 0.212 / 0.424 / 0.734, "
         "MoE-X 0.211 / 0.428 / 0.840.")
COLUMNS = {  # record key -> column title
    "variant": "variant", "val_loss": "val loss", "coverage": "coverage",
    "reconstruction": "reconstruction", "probe_accuracy": "probe acc.",
    "features": "units", "alive_features": "alive", "router_l0_r": "r(score, L0)",
    "dead_experts": "dead experts", "tokens_per_s": "tokens/s",
}
HELP = {
    "val loss": "validation loss of the LM (nats per character)",
    "coverage": "mean over board cells of the best unit's F1 (best threshold)",
    "reconstruction": "F1 of the board predicted from the units with precision >= 0.95",
    "probe acc.": "supervised per-square probe on the residual stream: the upper bound",
    "units": "hidden units scored (MoE: experts x expert width; SAE: latents)",
    "alive": "units that fire on some fit position",
    "r(score, L0)": "Pearson r of the routing score and the expert's true firing fraction",
    "dead experts": "experts no token of the test games was routed to",
    "tokens/s": "training tokens per second of the model",
}
HOLDS, WRONG = "#3aa65b", "#e0823d"  # best cell holds on this board / does not


# -- cached reads (keyed by artifact name + version stamp) -------------------------------------
@st.cache_data(show_spinner=False, max_entries=8)
def _table(root: str, name: str, stamp: float) -> ChessTable:
    from saes.board_eval import load_chess_table

    return load_chess_table(common.lab(), name)


@st.cache_data(show_spinner=False, max_entries=8)
def _games(root: str, dataset: str, stamp: float) -> pd.DataFrame:
    from workbench.data.chess import load_games

    return load_games(common.lab(), dataset, "validation")[["doc_id", "text", "source"]]


@st.cache_data(show_spinner="Running the model on the game ...", max_entries=256)
def _view(root: str, model_name: str, model_stamp: float, sae_name: str | None,
          sae_stamp: float, table: str, table_stamp: float, variant: str, text: str, dot: int,
          layer: int, top: int) -> dict:
    """The board view as plain data: fen, units (list of dicts), n_active, width."""
    from saes.board_view import board_view

    cells = _table(root, table, table_stamp).unit_cells(variant)
    view = board_view(common.model(model_name), text, dot, layer, cells, top,
                      sae=common.sae(sae_name) if sae_name else None)
    return {"fen": view.board.fen(), "move": view.move, "n_active": view.n_active,
            "width": view.width, "units": [u.__dict__ | {"cell": u.cell} for u in view.units]}


def board_tables() -> list[str]:
    return [a.name for a in common.artifacts("analysis") if a.manifest.get("analysis") == ANALYSIS]


def _stamp(name: str | None) -> float:
    return common.created(name) if name else 0.0


# -- figures -----------------------------------------------------------------------------------
def table_frame(records: list[dict], group: str) -> pd.DataFrame:
    rows = [{title: r.get(key) for key, title in COLUMNS.items()}
            for r in records if r.get("group", "main") == group]
    return pd.DataFrame(rows, columns=list(COLUMNS.values()))


def router_figure(pairs: dict, r: float, title: str) -> go.Figure:
    fig = go.Figure()
    frame = pd.DataFrame({"expert": pairs["expert"], "score": pairs["score"], "l0": pairs["l0"]})
    for expert, group in frame.groupby("expert"):
        fig.add_trace(go.Scatter(x=group.score.tolist(), y=group.l0.tolist(), mode="markers",
                                 name=f"expert {expert}", marker={"size": 5, "opacity": 0.55}))
    fig.update_layout(title=f"{title}: r = {r:.3f} over (token, expert) pairs")
    fig.update_xaxes(range=[-1.05, 1.05])
    fig.update_yaxes(range=[-0.03, 1.03])
    return common.style(fig, 380, "routing score -erf(m / (sqrt(2) s)) (higher = sparser)",
                        "true firing fraction of the expert (L0 / D)")


def load_figure(records: list[dict]) -> go.Figure:
    fig = go.Figure()
    n_experts = 1
    for r in records:
        for i, load in enumerate(r["expert_load"]):
            n_experts = max(n_experts, len(load))
            suffix = f", layer {r['router_pairs'][i]['layer']}" if len(r["expert_load"]) > 1 \
                and r.get("router_pairs") else ""
            fig.add_trace(go.Bar(x=[f"E{j}" for j in range(len(load))], y=load,
                                 name=f"{r['variant']}{suffix} ({r['dead_experts']} dead)"))
    fig.add_hline(y=1 / n_experts, line_dash="dot", line_color="gray",
                  annotation_text="balanced", annotation_position="top right")
    fig.update_layout(barmode="group")
    fig = common.style(fig, 380 + 22 * len(fig.data) // 2, "expert",
                       "share of (token, slot) assignments")
    fig.update_layout(legend={"y": -0.3, "yanchor": "top"})  # below the axis title
    return fig


def curves_figure(records: list[dict], key: str, thresholds: list[float],
                  what: str) -> go.Figure:
    fig = go.Figure()
    for r in records:
        values = r.get(key) or []
        dash = "dot" if r.get("group") == "ablation" else "solid"
        fig.add_trace(go.Scatter(x=thresholds[:len(values)], y=values, mode="lines+markers",
                                 name=r["variant"], line={"dash": dash}))
    fig.update_yaxes(range=[0, 1])
    return common.style(fig, 400, "threshold (fraction of each unit's max activation)", what)


def board_svg(fen: str, units: list[dict], size: int = 360) -> str:
    """The board with the top units' best cells filled (green: holds here; orange: not)."""
    fill = {}
    for u in units:
        if u.get("square"):
            fill.setdefault(chess.parse_square(u["square"]), HOLDS if u["holds"] else WRONG)
    return chess.svg.board(chess.Board(fen), size=size, fill=fill, coordinates=True)


def units_frame(units: list[dict]) -> pd.DataFrame:
    rows = []
    for u in units:
        rows.append({"unit": u["unit"], "expert": u["expert"], "activation": u["activation"],
                     "x max": u["relative"], "best cell": u["cell"] or "-",
                     "F1": u["f1"], "cell holds here": None if u["holds"] is None
                     else ("yes" if u["holds"] else "no")})
    return pd.DataFrame(rows, columns=["unit", "expert", "activation", "x max", "best cell",
                                       "F1", "cell holds here"])


# -- sections ----------------------------------------------------------------------------------
def _offer(kind: str, what: str, key: str, values: dict | None = None) -> None:
    """Say what is missing and offer the job of `kind` (job_forms) when it can run."""
    job = plan(kind, values or {}, common.lab())
    if job.ok:
        label = next(k.title for k in JOB_KINDS if k.key == kind)
        common.missing(what, label, job.args, job.names, key=key)
    else:
        common.missing(what + " " + "; ".join(job.problems) + ".")


def table_section(table: ChessTable) -> None:
    st.subheader("Board-state interpretability at equal active parameters")
    cfg = table.config
    st.caption(f"Table `{table.name}`: MLP hidden units of block {cfg.get('layer')} "
               f"(`{cfg.get('hook')}`) on dataset `{cfg.get('dataset')}`; coverage and "
               "reconstruction fit on the validation games, scored on the test games (best "
               "threshold). " + PAPER)
    fmt = {"val loss": "%.4f", "coverage": "%.3f", "reconstruction": "%.3f",
           "probe acc.": "%.3f", "r(score, L0)": "%.3f", "tokens/s": "%.0f", "units": "%d",
           "alive": "%d", "dead experts": "%d"}
    config = {c: st.column_config.NumberColumn(format=f, help=HELP[c]) for c, f in fmt.items()}
    common.table(table_frame(table.records, "main"), column_config=config)
    ablation = table_frame(table.records, "ablation")
    if len(ablation):
        st.markdown("**Ablation** (router x expert activation)")
        common.table(ablation, column_config=config)


def router_section(table: ChessTable) -> None:
    moe = [r for r in table.records if r.get("router_l0_r") is not None]
    left, right = st.columns(2)
    with left:
        st.subheader("Router score vs true L0")
        with_pairs = [r for r in moe if r.get("router_pairs")]
        if not with_pairs:
            st.caption("No MoE rows with (score, L0) pairs in this table." if not moe else
                       "This table has no (score, L0) pairs (made before they were stored).")
        else:
            names = [r["variant"] for r in with_pairs]
            default = names.index("MoE-X") if "MoE-X" in names else 0
            chosen = with_pairs[names.index(st.selectbox("Model", names, index=default,
                                                         key="router-variant"))]
            layer = 0
            if len(chosen["router_pairs"]) > 1:
                layer = st.selectbox("MoE layer", range(len(chosen["router_pairs"])),
                                     format_func=lambda i: f"block "
                                     f"{chosen['router_pairs'][i]['layer']}", key="router-layer")
            r = (chosen.get("router_l0_r_per_layer") or [chosen["router_l0_r"]])[layer]
            common.chart(router_figure(chosen["router_pairs"][layer], r, chosen["variant"]),
                         key="router")
            st.caption("The paper reports |r| > 0.95 for MoE-X. The score is 1 - 2 x the "
                       "expected firing fraction, so a good router gives r near -1. For "
                       "softmax-routed rows the score is the same formula applied to their "
                       "experts (not their router).")
    with right:
        st.subheader("Expert load")
        with_load = [r for r in moe if r.get("expert_load")]
        if with_load:
            common.chart(load_figure(with_load), key="load")
            dead = {r["variant"]: r["dead_experts"] for r in moe}
            games = with_load[0].get("router_games")
            where = f"{games} test games" if games else "the test games scored"
            st.caption(f"Dead experts (chosen by no token of {where}): " +
                       ", ".join(f"{k} {v}" for k, v in dead.items()))
        else:
            st.caption("No expert load in this table." if not moe else
                       "This table has no expert load (made before it was stored); dead "
                       "experts: " + ", ".join(f"{r['variant']} {r['dead_experts']}"
                                               for r in moe))


def curves_section(table: ChessTable) -> None:
    thresholds = list(table.config.get("thresholds") or THRESHOLDS)
    left, right = st.columns(2)
    with left:
        st.subheader("Coverage over the threshold sweep")
        common.chart(curves_figure(table.records, "coverage_by_t", thresholds,
                                   "coverage (mean best F1 per cell)"), key="coverage")
    with right:
        st.subheader("Reconstruction over the threshold sweep")
        common.chart(curves_figure(table.records, "reconstruction_by_t", thresholds,
                                   "reconstruction (board F1)"), key="reconstruction")
    st.caption("Ablation rows dotted. A unit is on when its activation exceeds threshold x "
               "its max activation.")


def board_section(table: ChessTable) -> None:
    from saes.board_view import game_positions

    st.subheader("Board view")
    the_lab = common.lab()
    dataset, layer = table.config.get("dataset"), table.config.get("layer")
    if not dataset or not the_lab.exists(dataset):
        _offer("chess-lab", f"The board view needs the chess dataset {dataset!r}, which is "
               "not in the lab.", "board-data")
        return
    rows = [r for r in table.records if the_lab.exists(r["model"])
            and (not r.get("sae") or the_lab.exists(r["sae"]))]
    if not rows:
        _offer("chess-lab", "The models of this table are not in the lab.", "board-models")
        return
    games = _games(str(the_lab.root), dataset, _stamp(dataset))
    if games.empty:
        st.info(f"The dataset {dataset!r} has no validation games.")
        return
    names = [r["variant"] for r in rows]
    c1, c2, c3 = st.columns([2, 3, 1])
    variant = c1.selectbox("Units of", names, index=names.index("MoE-X") if "MoE-X" in names
                           else 0, key="board-variant")
    row = rows[names.index(variant)]
    game = c2.selectbox("Validation game", range(len(games)), key="board-game",
                        format_func=lambda i: f"game {games.doc_id.iloc[i]} "
                        f"({games.source.iloc[i]}): {games.text.iloc[i][:48]} ...")
    top = c3.number_input("Top units", 1, 64, 10, key="board-top")
    text = games.text.iloc[game]
    model = common.model(row["model"])
    dots = game_positions(text, model.cfg.n_ctx)
    if not dots:
        st.info("This game has no position inside the model's context; pick another.")
        return
    moves = {d: i + 1 for i, d in enumerate(dots)}
    if len(dots) > 1:
        dot = st.select_slider("Position (before white's move)", dots, key=f"board-dot-{game}",
                               format_func=lambda d: f"move {moves[d]}")
    else:
        dot = dots[0]
    view = _view(str(the_lab.root), row["model"], _stamp(row["model"]), row.get("sae"), _stamp(row.get("sae")),
                 table.name, _stamp(table.name), variant, text, dot, int(layer), int(top))
    left, right = st.columns([2, 3])
    with left:
        st.image(board_svg(view["fen"], view["units"]), width=360)
        st.caption(f"Before white's move {view['move']}; best cells of the listed units: "
                   "green = on this board, orange = not.")
    with right:
        st.markdown(f"**{view['n_active']} of {view['width']} units active** at this position "
                    f"(block {layer}{', SAE ' + row['sae'] if row.get('sae') else ''})")
        if not view["units"]:
            st.caption("No unit is active here.")
        else:
            common.table(units_frame(view["units"]), column_config={
                "activation": st.column_config.NumberColumn(format="%.3f"),
                "x max": st.column_config.NumberColumn(
                    format="%.2f", help="activation / the unit's max on the fit positions"),
                "F1": st.column_config.NumberColumn(
                    format="%.3f", help="the best cell's F1 at the unit's best threshold"),
            })
        if table.units is None:
            st.caption("This table has no per-unit cells (made before they were stored); "
                       "re-evaluate it to see each unit's best cell.")
        st.caption("The game up to this position:")
        st.code(("... " if dot > 240 else "") + text[max(0, dot - 239):dot + 1],
                language=None, wrap_lines=True)


@common.page
def main() -> None:
    """The MoE-X page."""
    st.title("MoE-X: interpretable mixture of experts")
    the_lab = common.lab()
    names = board_tables()
    if not names:
        if not the_lab.exists("chess"):
            _offer("chess-lab", "No chess lab yet: build it (chess games, dense / Switch / "
                   "MoE-X models, an SAE and the board-state table).", "moex-lab")
        else:
            _offer("moex-eval", "No board-state table yet: evaluate the chess lab's models "
                   "(if the build stopped early, `Build the chess lab` on the Lab page "
                   "resumes it).", "moex-eval")
        return
    default = names.index("chess-table") if "chess-table" in names else 0
    name = st.selectbox("Table", names, index=default, key="moex-table") \
        if len(names) > 1 else names[0]
    table = _table(str(the_lab.root), name, _stamp(name))
    gaps = table.missing()
    if gaps:
        dataset = table.config.get("dataset") or "chess"
        _offer("moex-eval", f"Table {name!r} lacks {' and '.join(gaps)} (it was made by an "
               "older version). Re-evaluate it to see everything.", "moex-reeval",
               {"dataset": dataset, "name": name, "overwrite": True,
                "layer": table.config.get("layer"), "rows": table.config.get("rows")})
    table_section(table)
    router_section(table)
    curves_section(table)
    board_section(table)


main()
