"""The stored MoE-X table keeps router pairs, expert load and per-unit cells (old tables still
read); the board view: the board at a "." and the top active units with their best cells."""

from __future__ import annotations

import json

import chess
import pytest
import torch
from moex_fixtures import build_quick_chess_lab

from saes.board_eval import UNITS_FILE, UnitCells, load_chess_table, mlp_hidden_hook
from saes.board_view import board_view, game_positions
from workbench.data.chess import board_at, board_labels, load_board_states, load_games
from workbench.errors import InvalidInputError
from workbench.lab import Lab
from workbench.models.loading import load_model


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return build_quick_chess_lab(tmp_path_factory.mktemp("chessq") / "lab")


def test_table_keeps_router_pairs_load_and_unit_cells(lab):
    table = load_chess_table(lab, "chess-table")
    assert table.missing() == []
    by = {r["variant"]: r for r in table.records}
    moex = by["MoE-X"]
    load = moex["expert_load"][0]
    assert len(load) == 4 and sum(load) == pytest.approx(1.0)
    assert moex["dead_experts"] == sum(x == 0 for x in load)
    pairs = moex["router_pairs"][0]
    assert len(pairs["score"]) == len(pairs["l0"]) == len(pairs["expert"]) > 100
    assert all(-1 <= s <= 1 for s in pairs["score"]) and all(0 <= v <= 1 for v in pairs["l0"])
    assert by["GELU (dense neurons)"]["router_pairs"] is None  # dense: no router
    cells = table.unit_cells("MoE-X")
    assert len(cells.cell) == moex["features"] == 128
    alive = cells.cell >= 0
    assert alive.sum() > 0 and (cells.f1[alive] > 0).all() and (cells.f1[~alive] == 0).all()
    # coverage averages, over cells, the best unit's F1: it cannot exceed the best unit's F1
    assert moex["coverage"] <= float(cells.f1.max()) + 1e-6 <= 1.0 + 1e-6
    assert table.unit_cells("no such row") is None


def test_old_tables_still_read(lab, tmp_path):
    import shutil

    old = Lab(tmp_path / "old")
    shutil.copytree(lab.root, old.root, dirs_exist_ok=True)
    path = old.get("chess-table").path
    records = json.loads((path / "table.json").read_text())
    for r in records:
        for key in ("expert_load", "router_pairs", "router_l0_r_per_layer"):
            r.pop(key, None)
    (path / "table.json").write_text(json.dumps(records))
    (path / UNITS_FILE).unlink()
    table = load_chess_table(old, "chess-table")
    assert table.units is None and table.unit_cells("MoE-X") is None
    assert all(r["router_pairs"] is None and r["expert_load"] is None for r in table.records)
    assert table.missing() == ["router (score, L0) pairs and expert load",
                               "per-unit best board-state cells"]
    with pytest.raises(InvalidInputError, match="not a board-state table"):
        with old.new_artifact("analysis", "other"):
            pass
        load_chess_table(old, "other")


def test_board_at_matches_the_stored_boards(lab):
    games = load_games(lab, "chess", "validation")
    states = load_board_states(lab, "chess", "validation")
    text, doc = games.text.iloc[0], int(games.doc_id.iloc[0])
    mine = states.doc_ids == doc
    for dot, labels in zip(states.char_pos[mine].tolist(), states.boards[mine].tolist()):
        assert board_labels(board_at(text, dot)) == labels
    assert board_at(text, 2) == chess.Board()
    with pytest.raises(InvalidInputError, match="is not a '.'"):
        board_at(text, 3)


def test_board_view_units_are_the_hidden_vector_at_the_position(lab):
    model = load_model("chess-moex", lab=lab)
    table = load_chess_table(lab, "chess-table")
    text = load_games(lab, "chess", "validation").text.iloc[0]
    dots = game_positions(text, model.cfg.n_ctx)
    assert dots and all(text[d] == "." and d + 1 < model.cfg.n_ctx for d in dots)
    dot = dots[min(3, len(dots) - 1)]
    view = board_view(model, text, dot, 0, table.unit_cells("MoE-X"), top=6)
    assert view.board == board_at(text, dot) and view.width == 128
    hook = mlp_hidden_hook(0)
    tokens = model.to_tokens(text, prepend_bos=True)[:, :model.cfg.n_ctx]
    _, cache = model.run_with_cache(tokens, names_filter=[hook, "blocks.0.mlp.hook_experts"])
    hidden = cache[hook][0, dot + 1]
    assert view.n_active == int((hidden > 0).sum()) and 0 < len(view.units) <= 6
    acts = [u.activation for u in view.units]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(float(hidden.max()))
    chosen = set(cache["blocks.0.mlp.hook_experts"][0, dot + 1].tolist())
    for u in view.units:
        assert u.activation == pytest.approx(float(hidden[u.unit]))
        assert u.expert == u.unit // 32 and u.expert in chosen  # active units: selected experts
        if u.square is not None:
            piece = view.board.piece_at(chess.parse_square(u.square))
            assert u.holds == (piece is not None and piece.symbol() == u.piece)


def test_board_view_names_constructed_cells(lab):
    model = load_model("chess-dense_relu", lab=lab)
    text = load_games(lab, "chess", "validation").text.iloc[0]
    width = model.cfg.d_mlp
    hidden = board_view(model, text, 2, 0, top=width)
    units = [u.unit for u in hidden.units]
    assert len(units) >= 2 and all(u.expert is None for u in hidden.units)
    cell = torch.full((width,), -1, dtype=torch.long)
    cell[units[0]] = chess.E2 * 12 + 0  # white pawn on e2: holds at the start
    cell[units[1]] = chess.E4 * 12 + 0  # white pawn on e4: does not
    f1 = torch.where(cell >= 0, 0.9, 0.0)
    cells = UnitCells(cell, f1, torch.where(cell >= 0, 0.5, 0.0), torch.full((width,), 1e6))
    view = board_view(model, text, 2, 0, cells, top=width)
    first, second = view.units[0], view.units[1]
    assert (first.cell, first.holds, first.on) == ("P on e2", True, False)
    assert first.f1 == pytest.approx(0.9) and first.threshold == pytest.approx(0.5)
    assert (second.cell, second.holds) == ("P on e4", False)
    assert view.cells() == {chess.E2: "P on e2", chess.E4: "P on e4"}
    assert all(u.square is None for u in view.units[2:])
    with pytest.raises(InvalidInputError, match="describe 3 units"):
        board_view(model, text, 2, 0, UnitCells(cell[:3], f1[:3], f1[:3], f1[:3]))
    with pytest.raises(InvalidInputError, match="outside the model"):
        board_view(model, text, 2, 5)
