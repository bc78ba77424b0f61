"""The sparsify baseline of `workbench bench sae-train` (saes/bench_sparsify.py): sparsify's own
Trainer on the same data as ours (the exported model's hooked block gives our hook's
activations; the cache harness replays our cached rows), a few steps each, and the report.

The tests that run sparsify need the bench extra (`pip install -e '.[bench]'`, which `.ci/run`
installs) and are skipped with that reason without it. The suite runs with TRITON_INTERPRET=1;
sparsify would then pick its Triton decoder and run it in the interpreter, so these tests set
SPARSIFY_DISABLE_TRITON=1 (its CPU path, F.embedding_bag) before sparsify is first imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from fixtures_lab import small_lm_setup

from saes.bench_sparsify import (
    INSTALL_HINT,
    SparsifySettings,
    import_sparsify,
    replay_starts,
    train_sparsify_cache,
    train_sparsify_live,
)
from saes.bench_train import (
    BenchTrainConfig,
    evaluate,
    format_report,
    run_benchmark,
    special_token_ids,
    token_windows,
)
from workbench.activations.extract import hook_activations
from workbench.errors import InvalidInputError, NotFoundError

needs_sparsify = pytest.mark.skipif(
    importlib.util.find_spec("sparsify") is None,
    reason=f"eai-sparsify is not installed; {INSTALL_HINT}")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sparsify():
    if "sparsify" not in sys.modules:
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    return import_sparsify("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return small_lm_setup(tmp_path_factory.mktemp("bench-sparsify") / "lab")


def test_missing_sparsify_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sparsify", None)  # `import sparsify` raises ImportError
    with pytest.raises(NotFoundError, match=r"pip install -e '\.\[bench\]'"):
        import_sparsify("cpu")


def test_settings_refuse_a_batch_that_is_not_whole_sequences():
    with pytest.raises(InvalidInputError, match="multiple of the context size 128"):
        _ = SparsifySettings(batch_tokens=1000, seq_len=128).seqs_per_step


def test_replay_order_covers_the_budget_in_whole_sequences():
    settings = SparsifySettings(batch_tokens=64, tokens=640, seq_len=16, seed=3)
    starts = replay_starts(200, settings)  # 12 whole sequences, 40 needed: 4 passes
    assert len(starts) == 640 // 16
    assert all(int(s) % 16 == 0 and 0 <= int(s) <= 200 - 16 for s in starts)
    first = sorted(int(s) for s in starts[:12])
    assert first == list(range(0, 192, 16))  # each pass is a permutation of all sequences
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        replay_starts(40, settings)


@needs_sparsify
def test_sparsify_decoder_is_its_cpu_path(sparsify):
    from saes.bench_sparsify import decoder_name, describe_sparsify

    assert decoder_name(sparsify) == "eager_decode"
    assert describe_sparsify("cpu").startswith(f"eai-sparsify {sparsify.__version__} (eager")


@needs_sparsify
def test_live_and_cache_runs_train_on_our_activations(sparsify, setup, tmp_path):
    """The exported model's hooked block gives exactly our hook's activations; both runs go
    the budget's steps and give SAEs whose dense encode/decode is sparsify's own forward."""
    from workbench.models.export_hf import export_hf

    _, corpus, model = setup
    hook, layer = "blocks.1.hook_resid_post", 1
    export_hf(model, model.tokenizer, tmp_path / "hf")
    windows = token_windows(model, corpus, 12_000, 64)
    special = special_token_ids(model.tokenizer)
    settings = SparsifySettings(latents=128, k=8, batch_tokens=512, tokens=4096, seq_len=64,
                                dead_tokens=1024)

    live = train_sparsify_live(tmp_path / "hf", windows, layer, special, settings, tmp_path)
    assert live["hookpoint"] == "h.1"
    # whole batches of 8 windows until the budget is reached; BOS/EOS positions are not counted
    assert 4096 <= live["tokens"] < min(4096 + 512, live["steps"] * 512)
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    seen = {}
    handle = hf.get_submodule(live["hookpoint"]).register_forward_hook(
        lambda mod, args, out: seen.update(acts=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        hf(windows[:4])
    handle.remove()
    ours = hook_activations(model, windows[:4], hook)
    torch.testing.assert_close(seen["acts"], ours, atol=1e-4, rtol=1e-4)

    acts = ours.reshape(-1, ours.shape[-1])[(~torch.isin(windows[:4], torch.tensor(special)))
                                            .reshape(-1)]
    cache_rows = hook_activations(model, windows[4:40], hook).reshape(-1, ours.shape[-1])
    cache = train_sparsify_cache(cache_rows, settings, tmp_path)
    assert (cache["steps"], cache["tokens"], cache["hookpoint"]) == (8, 4096, "layers.0")

    for result in (live, cache):
        sae = result["sae"]
        codes = sae.encode(acts)
        assert codes.shape == (acts.shape[0], 128)
        assert int((codes != 0).sum(1).max()) <= 8
        with torch.no_grad():
            torch.testing.assert_close(sae.decode(codes), sae.coder(acts).sae_out,
                                       atol=1e-5, rtol=1e-5)
        metrics = evaluate(sae, acts)
        assert 0 < metrics["l0"] <= 8 and 0 <= metrics["dead_fraction"] < 1
        assert metrics["nmse"] < 0.5, metrics  # trained: far better than reconstructing zero


@needs_sparsify
def test_benchmark_report_has_sparsify_rows_and_the_live_ceiling(sparsify, setup):
    lab, corpus, _ = setup
    cfg = BenchTrainConfig(tokens=2048, model="lm", corpus=corpus.name, latents=64, k=4,
                           batch_size=256, eval_tokens=512, context_size=64,
                           baselines=("sparsify",), forward_tokens=1024)
    report = run_benchmark(lab, cfg, echo=lambda _: None)
    rows = {(r["mode"], r["trainer"]): r for r in report["runs"]}
    assert set(rows) == {(m, t) for m in ("cache", "live") for t in ("ours", "sparsify")}
    for row in rows.values():
        assert row["tokens"] >= 2048 and row["tokens_per_s"] > 0 and 0 < row["l0"] <= 4
    assert set(report["speedup"]["cache"]) == {"sparsify"}
    ceiling = report["live_ceiling"]
    assert set(ceiling["forward_tokens_per_s"]) == {"ours_to_hook", "hf_all_layers"}
    assert set(ceiling["pipeline"]) == {"ours", "sparsify"}
    assert report["versions"]["sparsify"].startswith("eai-sparsify")
    text = format_report(report)
    assert "sparsify*" in text and "ReplayModel" in text and "ours / sparsify" in text
    assert "live pipeline bound for sparsify" in text


def test_benchmark_refuses_bad_baselines(setup):
    lab, _, _ = setup
    with pytest.raises(InvalidInputError, match="use sae-lens, sparsify"):
        run_benchmark(lab, BenchTrainConfig(baselines=("sparsfy",)))
    with pytest.raises(InvalidInputError, match="multiple of 128"):
        run_benchmark(lab, BenchTrainConfig(baselines=("sparsify",), batch_size=1000))
    with pytest.raises(InvalidInputError, match="--sae-lens-lr"):
        run_benchmark(lab, BenchTrainConfig(sae_lens_lrs=("fast",)))


def test_live_windows_reach_the_budget_in_whole_batches_and_repeat_a_short_corpus():
    from saes.bench_sparsify import live_windows_for_budget

    bos, eos = 0, 9
    windows = torch.full((10, 8), 5)
    windows[:, 0] = bos
    windows[:, 1] = 10 + torch.arange(10)  # tells the windows apart
    windows[::2, 4] = eos  # 6 text tokens in even windows, 7 in odd ones: 65 per pass
    special = [bos, eos]
    # 2 windows a step; 6 windows hold 39 text tokens, 7 hold 45: 7 needed, 8 in whole steps
    used = live_windows_for_budget(windows, special, SparsifySettings(
        batch_tokens=16, tokens=40, seq_len=8))
    torch.testing.assert_close(used, windows[:8])
    # 150 tokens: two passes (130) and part of a third, each further pass reordered
    long = live_windows_for_budget(windows, special, SparsifySettings(
        batch_tokens=16, tokens=150, seq_len=8))
    assert long.shape[0] == 24
    assert 150 <= int((~torch.isin(long, torch.tensor(special))).sum()) < 150 + 14
    torch.testing.assert_close(long[:10], windows)
    second = long[10:20, 1].tolist()
    assert sorted(second) == list(range(10, 20)) and second != list(range(10, 20))


def test_json_output_is_json_alone(monkeypatch, tmp_path):
    # progress goes to stderr with --json, so `bench sae-train --json | jq` works
    import json

    from typer.testing import CliRunner

    import saes.bench_train
    from app.cli import app

    def fake_benchmark(lab, cfg, echo):
        echo("[cache] training with ours ...")
        return {"runs": [], "tokens": cfg.tokens}

    monkeypatch.setattr(saes.bench_train, "run_benchmark", fake_benchmark)
    result = CliRunner().invoke(app, ["--lab", str(tmp_path / "lab"), "bench", "sae-train",
                                      "--tokens", "4096", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"runs": [], "tokens": 4096}
    assert "training with ours" in result.stderr
