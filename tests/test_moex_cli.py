"""`workbench lab build chess --quick` and `workbench moex eval|show|train`: end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from app.cli import app
from app.recipes import RECIPES
from workbench.lab import Lab


def _run(lab, *args):
    result = CliRunner().invoke(app, ["--lab", str(lab), *args])
    return result


def test_chess_recipe_quick_builds_resumes_and_evaluates(tmp_path):
    assert "chess" in RECIPES
    lab = tmp_path / "lab"
    out = _run(lab, "lab", "build", "chess", "--quick")
    assert out.exit_code == 0, out.output
    for row in ("GELU (dense neurons)", "SAE on GELU MLP", "Switch", "MoE-X (upcycled)",
                "-- ablation", "sparsity router + GELU"):
        assert row in out.output
    table = json.loads((Lab(lab).get("chess-table").path / "table.json").read_text())
    assert {r["variant"] for r in table} >= {"MoE-X", "Switch", "ReLU (dense neurons)"}
    for r in table:
        assert 0 <= r["coverage"] <= 1 and 0 <= r["reconstruction"] <= 1
        assert len(r["coverage_by_t"]) == 11
    moex = next(r for r in table if r["variant"] == "MoE-X")
    assert moex["features"] == 4 * 32  # the wide hidden: experts x expert width
    # a second build skips every step
    again = _run(lab, "lab", "build", "chess", "--quick")
    assert again.exit_code == 0 and again.output.count("exists, skipped") == 12
    shown = _run(lab, "moex", "show", "chess-table")
    assert shown.exit_code == 0 and "MoE-X" in shown.output
    ev = _run(lab, "moex", "eval", "--models", "dense=chess-dense_relu,~abl=chess-moe_relu",
              "--layer", "0", "--max-games", "8", "--json")
    assert ev.exit_code == 0, ev.output
    records = json.loads(ev.output)
    assert [r["group"] for r in records] == ["main", "ablation"]


def test_moex_cli_errors_are_clear(tmp_path):
    lab = tmp_path / "lab"
    bad = _run(lab, "moex", "train", "--corpus", "c", "--tokenizer", "t", "--name", "x",
               "--variant", "mixtral")
    assert bad.exit_code != 0
    assert "unknown MoE variant 'mixtral'" in str(bad.exception)
    bad_k = _run(lab, "moex", "train", "--corpus", "c", "--tokenizer", "t", "--name", "x",
                 "--experts", "2", "--k", "3")
    assert "exceeds the 2 experts" in str(bad_k.exception)
