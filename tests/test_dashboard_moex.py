"""The MoE-X dashboard page with streamlit.testing.v1.AppTest: on the quick chess lab (table,
router scatter, expert load, curves, board view with a position slider), on an old table
without the newer fields, on a lab with games but no table, and on an empty lab."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from fixtures_dashboard import assert_clean, open_page
from moex_fixtures import build_quick_chess_lab
from streamlit.testing.v1 import AppTest

from saes.board_eval import UNITS_FILE
from saes.board_view import game_positions
from workbench.data.chess import load_games
from workbench.lab import Lab

PAGE = "views/moex.py"


@pytest.fixture(scope="module")
def chess_lab(tmp_path_factory):
    return build_quick_chess_lab(tmp_path_factory.mktemp("dash_chess") / "lab")


def _app(monkeypatch, lab: Lab) -> AppTest:
    return open_page(monkeypatch, lab, PAGE)


_clean = assert_clean


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_page_on_the_chess_lab(chess_lab, monkeypatch):
    at = _app(monkeypatch, chess_lab)
    _clean(at)
    assert at.title[0].value.startswith("MoE-X")
    main, ablation = at.dataframe[0].value, at.dataframe[1].value
    assert main.variant.tolist() == ["GELU (dense neurons)", "ReLU (dense neurons)",
                                     "SAE on GELU MLP", "Switch", "MoE-X", "MoE-X (upcycled)"]
    assert ablation.variant.tolist() == ["softmax router + ReLU", "sparsity router + GELU"]
    moex = main[main.variant == "MoE-X"].iloc[0]
    assert 0 < moex["coverage"] <= 1 and moex["units"] == 128
    assert -1 <= moex["r(score, L0)"] <= 1 and moex["dead experts"] >= 0
    assert main[main.variant == "GELU (dense neurons)"]["r(score, L0)"].isna().all()
    charts = _charts(at)
    router = next(c for c in charts if "r = " in c["layout"]["title"]["text"])
    assert len(router["data"]) == 4  # one trace per expert
    assert sum(len(t["x"]) for t in router["data"]) == 2000
    load = next(c for c in charts if c["data"] and c["data"][0]["type"] == "bar")
    assert len(load["data"]) == 5  # the MoE rows
    assert sum(load["data"][0]["y"]) == pytest.approx(1.0)
    curves = [c for c in charts if c["data"] and c["data"][0].get("mode") == "lines+markers"]
    assert len(curves) == 2 and len(curves[0]["data"]) == 8 and len(curves[0]["data"][0]["x"]) == 11
    # the board view: the board image, the unit table, a position slider
    board = at.image[0].value[0]  # the board, inline (an SVG data URL: nothing fetched)
    assert board.startswith("data:image/svg+xml;base64,")
    units = at.dataframe[2].value
    assert 0 < len(units) <= 10 and units.expert.notna().all()
    assert set(units["cell holds here"].dropna()) <= {"yes", "no"}
    slider = at.select_slider[0]
    text = load_games(chess_lab, "chess", "validation").text.iloc[0]
    dots = game_positions(text, 96)  # the quick recipe's n_ctx
    assert slider.value == dots[0] and slider.options == [f"move {i + 1}"
                                                          for i in range(len(dots))]
    first = units.unit.tolist()
    slider.set_value(dots[-1]).run()
    _clean(at)
    assert at.select_slider[0].value == dots[-1]
    assert at.dataframe[2].value.unit.tolist() != first
    assert f"{len(dots)}." in at.code[0].value  # the game up to the position
    at.selectbox(key="board-variant").select("SAE on GELU MLP").run()
    _clean(at)
    assert at.dataframe[2].value.expert.isna().all()  # SAE features belong to no expert
    at.selectbox(key="board-game").select_index(1).run()
    at.number_input(key="board-top").set_value(3).run()
    _clean(at)
    assert len(at.dataframe[2].value) <= 3


def test_page_on_an_old_table_says_what_is_missing(chess_lab, tmp_path, monkeypatch):
    shutil.copytree(chess_lab.root, tmp_path / "old")
    old = Lab(tmp_path / "old")
    path = old.get("chess-table").path
    records = json.loads((path / "table.json").read_text())
    for r in records:
        r.pop("router_pairs", None)
        r.pop("expert_load", None)
    (path / "table.json").write_text(json.dumps(records))
    (path / UNITS_FILE).unlink()
    at = _app(monkeypatch, old)
    _clean(at)
    assert any("lacks" in i.value for i in at.info)
    button = next(b for b in at.button if b.label.startswith("Evaluate MoE-X"))
    assert "--overwrite" in "".join(c.value for c in at.caption)
    assert len(at.dataframe) == 3 and at.dataframe[2].value["best cell"].eq("-").all()
    assert not any(c["data"] and c["data"][0]["type"] == "bar" for c in _charts(at))
    assert button.key == "missing-moex-reeval"


def test_page_with_games_but_no_table_offers_the_evaluation(chess_lab, tmp_path, monkeypatch):
    shutil.copytree(chess_lab.root, tmp_path / "partial")
    partial = Lab(tmp_path / "partial")
    partial.remove("chess-table")
    at = _app(monkeypatch, partial)
    _clean(at)
    assert any("No board-state table" in i.value for i in at.info)
    assert any(b.label.startswith("Evaluate MoE-X") for b in at.button)
    job = " ".join(c.value for c in at.caption)
    assert "moex eval" in job and "MoE-X=chess-moex" in job and "--layer 0" in job
    # start it: the job runs in the background through the job layer, then the page shows it
    next(b for b in at.button if b.label.startswith("Evaluate MoE-X")).click().run()
    assert any("Started job" in s.value for s in at.success), [e.value for e in at.error]
    deadline = time.time() + 240
    while time.time() < deadline and not partial.exists("chess-table"):
        time.sleep(1)
    job = next(j for j in partial.jobs(limit=5) if j["kind"] == "command")
    while time.time() < deadline and partial.job_row(job["id"])["status"] != "done":
        time.sleep(0.5)
    assert partial.job_row(job["id"])["status"] == "done", partial.job_row(job["id"])
    at = _app(monkeypatch, partial)
    _clean(at)
    assert len(at.dataframe[0].value) == 6 and len(at.dataframe[1].value) == 2


def test_page_on_an_empty_lab(tmp_path, monkeypatch):
    at = _app(monkeypatch, Lab(tmp_path / "lab"))
    _clean(at)
    assert any("No chess lab" in i.value for i in at.info)
    assert any(b.label == "Build the chess lab" for b in at.button)
    assert "lab build chess" in " ".join(c.value for c in at.caption)
