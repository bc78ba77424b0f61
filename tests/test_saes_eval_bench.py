"""The sae-quality benchmark's comparison at matched L0 (pure functions, no training)."""

from __future__ import annotations

import pytest

from saes.bench_quality import (
    BenchRow,
    QualityBenchConfig,
    interpolate_log_log,
    matched_l0,
    non_monotone_families,
    sweep_configs,
    verdict,
)


def test_interpolation_is_linear_in_log_log_and_never_extrapolates():
    points = [(8, 0.4), (32, 0.1)]
    assert interpolate_log_log(points, 16) == pytest.approx(0.2)  # geometric midpoint
    assert interpolate_log_log(points, 8) == pytest.approx(0.4)
    assert interpolate_log_log(points, 4) is None and interpolate_log_log(points, 64) is None


def _rows(afa):
    topk = [BenchRow(f"t{k}", "topk", f"k={k}", k, {"l0": k, "nmse": 3.2 / k})
            for k in (8, 16, 32, 64)]
    return topk + [BenchRow(f"a{i}", "topafa", f"lambda={lam}", lam, {"l0": l0, "nmse": nmse})
                   for i, (lam, l0, nmse) in enumerate(afa)]


def test_matched_l0_and_verdict_agreeing_with_the_paper():
    # TopK NMSE = 3.2 / L0; top-AFA at lambda 1/16 sits on that curve, at 1/128 it is 2x worse
    matches = matched_l0(_rows([(1 / 128, 20.0, 0.32), (1 / 16, 40.0, 0.08)]))
    assert matches[0]["topk_nmse_at_l0"] == pytest.approx(0.16)
    assert matches[0]["ratio_to_topk"] == pytest.approx(2.0)
    assert matches[1]["ratio_to_topk"] == pytest.approx(1.0)
    assert matches[0]["batchtopk_nmse_at_l0"] is None
    text = verdict(matches)
    assert "agrees with the paper" in text
    assert "smallest lambda" in text and "worse than TopK" in text


def test_verdict_says_so_when_top_afa_is_worse_or_out_of_range():
    text = verdict(matched_l0(_rows([(1 / 16, 20.0, 0.5), (1 / 32, 500.0, 0.01)])))
    assert "does NOT reproduce" in text and "not compared" in text and "L0 500.0" in text
    assert "No top-AFA SAE" in verdict(matched_l0(_rows([(1 / 16, 500.0, 0.01)])))


def test_undertrained_baseline_is_flagged():
    rows = _rows([(1 / 16, 20.0, 0.2)])
    assert non_monotone_families(rows) == []
    rows[3].metrics["nmse"] = 0.5  # k=64 worse than k=32: larger k undertrained
    notes = non_monotone_families(rows)
    assert len(notes) == 1 and "k=32" in notes[0] and "k=64" in notes[0]
    assert "Caveat" in verdict(matched_l0(rows), notes)


def test_sweep_has_every_family_with_shared_stream_settings():
    sweep = sweep_configs(QualityBenchConfig(latents=512, tokens=8192, batch_size=1024))
    families = [family for _, family, _, _ in sweep]
    assert families.count("topk") == 4 and families.count("batchtopk") == 4
    assert families.count("topafa") == 4 and families.count("structured") == 1
    assert {cfg.batch_size for cfg, _, _, _ in sweep} == {1024}
    lambdas = [param for _, family, _, param in sweep if family == "topafa"]
    assert lambdas == pytest.approx([1 / 128, 1 / 64, 1 / 32, 1 / 16])
    structured = sweep[-1][0]
    assert structured.groups * structured.group_size == 512 and structured.k_groups == 4
