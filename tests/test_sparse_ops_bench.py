"""Kernel benchmark: rows, table, CPU labelling and the `bench kernels` CLI command."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from sparse_ops import bench, cpu_native
from sparse_ops.bench import AttentionShape, SaeShape

FIELDS = {"kernel", "shape", "device", "dtype", "ours", "baseline", "ours_ms", "baseline_ms",
          "time_ratio", "speedup", "ours_peak_mib", "baseline_peak_mib", "memory_ratio"}


@pytest.fixture
def tiny_plan(monkeypatch):
    """Shrink the CPU plan so the test takes seconds."""
    plan = ([SaeShape(64, 16, 256, 8)], [AttentionShape(1, 2, 256, 16, 16, 0.75)],
            [AttentionShape(1, 2, 128, 16, 16, 0.5)], torch.float32, 1, 2)
    monkeypatch.setattr(bench, "benchmark_plan", lambda device, quick: plan)


def test_run_kernel_benchmarks_rows_on_cpu(tiny_plan):
    rows = bench.run_kernel_benchmarks(device="cpu", quick=True)
    kernels = [r["kernel"] for r in rows]
    assert kernels == ["topk_encode", "sparse_decode", "sparse_decode",
                       "block_sparse_attention", "blasst_attention"]
    for row in rows:
        assert FIELDS <= row.keys()
        auto_on_cpu = "cpu" if cpu_native.available() and "attention" not in row["kernel"] else "torch"
        assert row["ours"] == auto_on_cpu and row["device"] == "cpu"
        assert row["ours_ms"] > 0 and row["baseline_ms"] > 0
        assert row["time_ratio"] == pytest.approx(row["ours_ms"] / row["baseline_ms"])
    assert {r["baseline"] for r in rows if r["kernel"] == "sparse_decode"} == {
        "dense scatter+matmul", "F.embedding_bag"}
    sparse_row = rows[3]
    assert 0.2 <= sparse_row["computed_fraction"] <= 0.35  # 75% target sparsity
    assert rows[4]["computed_fraction"] < 1.0  # half the heads are peaked: blocks get skipped
    table = bench.format_table(rows)
    assert "PyTorch *reference* path" in table and "not Triton kernel timings" in table
    assert table.count("\n") >= len(rows) + 3


def test_compare_measures_memory_and_ratios():
    x = torch.randn(1 << 20)
    big = lambda: x * 2
    small = lambda: x[:1024] * 2
    result = bench.compare(small, big, torch.device("cpu"), warmup=1, repeats=3)
    assert result["speedup"] == pytest.approx(result["baseline_ms"] / result["ours_ms"])
    if result["baseline_peak_mib"] is not None:  # the profiler's memory timeline is available
        assert result["baseline_peak_mib"] == pytest.approx(4.0, rel=0.05)
        assert result["memory_ratio"] < 0.01


def test_mask_for_sparsity_hits_the_target():
    for sparsity in (0.5, 0.9):
        shape = AttentionShape(1, 1, 4096, 64, 64, sparsity)
        mask = bench.mask_for_sparsity(shape, torch.device("cpu"))
        kept = 1 - __import__("sparse_ops").computed_fraction(mask)
        assert abs(kept - sparsity) < 0.05


def test_cli_kernels_command(tiny_plan):
    from app.cli.bench_kernels import register

    app = typer.Typer()
    bench_app = typer.Typer()
    register(bench_app)
    app.add_typer(bench_app, name="bench")
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "kernels", "--quick", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 5 and FIELDS <= rows[0].keys()
    result = runner.invoke(app, ["bench", "kernels", "--quick"])
    assert result.exit_code == 0 and "ours/base" in result.output
