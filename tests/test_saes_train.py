"""The SAE trainer: recovers planted features, one pass for a sweep, exact resume after a kill,
NaN guard, bad-input errors, training from a store / a live model, and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from sae_lens import SAE
from typer.testing import CliRunner

from saes.training import (
    ActivationSource,
    SAETrainConfig,
    TrainingDivergedError,
    live_source,
    tensor_source,
    train_saes,
)
from saes.training.trainer import load_checkpoint
from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Lab

pytestmark = pytest.mark.usefixtures("one_thread")


def planted_features(n_tokens: int, d: int = 32, n_feat: int = 96, active: int = 3, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x = sum of a few random unit directions times magnitudes (+ an offset): [n, d], [F, d]."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_feat, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    on = torch.rand(n_tokens, n_feat, generator=g) < active / n_feat
    mags = torch.rand(n_tokens, n_feat, generator=g) * 2 + 0.5
    return (on * mags) @ feats + 0.2, feats


def counting_source(x: torch.Tensor, fail_at: int | None = None, poison_at: int | None = None,
                    kill_at: int | None = None) -> tuple[ActivationSource, list[int]]:
    """A tensor source that counts the batches drawn; can raise, emit NaN, or SIGKILL itself."""
    base = tensor_source(x, "planted", "blocks.0.hook_resid_post")
    drawn: list[int] = []

    def make_batches(batch_size, seed):
        for i, batch in enumerate(base.make_batches(batch_size, seed)):
            if i == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if i == fail_at:
                raise RuntimeError("simulated crash")
            drawn.append(i)
            yield torch.full_like(batch, float("nan")) if i == poison_at else batch

    return ActivationSource(base.d_in, base.model_name, base.hook_name, [], "planted features",
                            make_batches), drawn


def test_topk_recovers_planted_features(tmp_path):
    x, feats = planted_features(40_000)
    cfg = SAETrainConfig(name="planted", arch="topk", latents=192, k=3, tokens=120_000,
                         batch_size=512, lr=3e-3)
    (art,) = train_saes(Lab(tmp_path), [cfg], tensor_source(x, "planted", "h"), progress=False)
    sae = SAE.load_from_disk(art.path)
    directions = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best_cos = (feats @ directions.T).max(dim=1).values
    assert float((best_cos > 0.9).float().mean()) >= 0.95
    assert art.metrics["train_fvu"] < 0.25 and 2.5 < art.metrics["train_l0"] <= 3


def test_sweep_reads_the_stream_once(tmp_path):
    x, _ = planted_features(8192)
    source, drawn = counting_source(x)
    configs = [SAETrainConfig(name=f"k{k}", arch="topk", latents=64, k=k, tokens=4096,
                              batch_size=512) for k in (2, 4, 8)]
    configs.append(SAETrainConfig(name="short", arch="relu", latents=64, tokens=2048,
                                  batch_size=512))
    arts = train_saes(Lab(tmp_path), configs, source, progress=False)
    assert drawn == list(range(8))  # 8 steps of the longest config, each batch read once
    assert {a.name: a.metrics["steps"] for a in arts} == {"k2": 8, "k4": 8, "k8": 8, "short": 4}
    assert {a.name: a.metrics["train_l0"] for a in arts if a.name != "short"} == \
        {"k2": 2, "k4": 4, "k8": 8}


def _weights(lab: Lab, name: str) -> dict[str, torch.Tensor]:
    return SAE.load_from_disk(lab.get(name).path).state_dict()


def _resume_cfg(name: str) -> SAETrainConfig:
    return SAETrainConfig(name=name, arch="topk", latents=64, k=4, tokens=6144, batch_size=512,
                          checkpoint_every_tokens=1024, dead_window_tokens=1024)


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    x, _ = planted_features(8192)
    torch.save(x, tmp_path / "x.pt")
    ref_lab = Lab(tmp_path / "ref")
    train_saes(ref_lab, [_resume_cfg("sae")], counting_source(x)[0], progress=False)

    lab = Lab(tmp_path / "lab")
    child = textwrap.dedent(f"""
        import torch
        from tests.test_saes_train import counting_source, _resume_cfg
        from saes.training import train_saes
        from workbench.lab import Lab
        torch.set_num_threads(1)
        x = torch.load({str(tmp_path / 'x.pt')!r})
        train_saes(Lab({str(lab.root)!r}), [_resume_cfg("sae")], counting_source(x, kill_at=7)[0],
                   progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=os.getcwd(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = load_checkpoint(lab.work_dir("sae"))
    assert state is not None and state["steps_done"] == 6 and not lab.exists("sae")

    source, drawn = counting_source(x)
    train_saes(lab, [_resume_cfg("sae")], source, progress=False)
    assert drawn == list(range(12))  # the stream restarts in seed order; 6 batches skipped
    for key, value in _weights(ref_lab, "sae").items():
        torch.testing.assert_close(_weights(lab, "sae")[key], value, rtol=0, atol=1e-6)
    assert not (lab.root / "work" / "sae").exists()


def test_nan_in_activations_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    x, _ = planted_features(8192)
    lab = Lab(tmp_path)
    source, _ = counting_source(x, poison_at=9)
    with pytest.raises(TrainingDivergedError, match=r"step 9 .*NaN.*checkpoints are kept"):
        train_saes(lab, [_resume_cfg("sae")], source, progress=False)
    state = load_checkpoint(lab.work_dir("sae"))
    assert state["steps_done"] == 8
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not lab.exists("sae") and not any((lab.root / "tmp").iterdir())
    assert lab.jobs("sae")[0]["status"] == "failed"
    (art,) = train_saes(lab, [_resume_cfg("sae")], counting_source(x)[0], progress=False)
    assert art.metrics["steps"] == 12


def test_diverging_loss_names_the_step(tmp_path):
    x, _ = planted_features(4096)
    cfg = SAETrainConfig(name="boom", arch="relu", latents=32, tokens=4096, batch_size=512,
                         lr=1e30, normalize="none")
    with pytest.raises(TrainingDivergedError, match=r"NaN/inf at step \d+"):
        train_saes(Lab(tmp_path), [cfg], x * 1e20, progress=False)


def test_bad_inputs_give_clear_errors(tmp_path):
    lab = Lab(tmp_path)
    x, _ = planted_features(2048)
    with pytest.raises(InvalidInputError, match="k=100 is larger than the number of latents"):
        train_saes(lab, [SAETrainConfig(name="a", arch="topk", latents=64, k=100, tokens=1024,
                                        batch_size=512)], x, progress=False)
    with pytest.raises(InvalidInputError, match="needs --groups"):
        train_saes(lab, [SAETrainConfig(name="b", arch="structured", tokens=1024,
                                        batch_size=512)], x, progress=False)
    wrong = ActivationSource(x.shape[1] + 1, None, None, [], "mislabeled activations",
                             tensor_source(x).make_batches)
    with pytest.raises(InvalidInputError, match="width 32, expected d_in=33"):
        train_saes(lab, [SAETrainConfig(name="c", arch="topk", latents=64, k=4, tokens=1024,
                                        batch_size=512)], wrong, progress=False)
    with pytest.raises(NotFoundError):
        train_saes(lab, [SAETrainConfig(name="d", arch="topk", k=4)], "no-such-acts",
                   progress=False)
    assert not any((lab.root / "tmp").iterdir())


def test_live_model_training_and_hook_check(tmp_path):
    from fixtures_lab import small_lm_setup

    lab, corpus, model = small_lm_setup(tmp_path)
    with pytest.raises(NotFoundError, match="no hook 'blocks.9.hook_nonesuch'"):
        live_source(lab, model, "blocks.9.hook_nonesuch", corpus.name)
    source = live_source(lab, "lm", "blocks.0.hook_resid_post", corpus.name, context_size=32)
    cfg = SAETrainConfig(name="live", arch="batchtopk", latents=64, k=4, tokens=1024,
                         batch_size=256)
    (art,) = train_saes(lab, [cfg], source, progress=False)
    meta = SAE.load_from_disk(art.path).cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.context_size) == \
        ("lm", "blocks.0.hook_resid_post", 32)
    assert set(art.parents) == {"lm", "corpus"} and art.metrics["threshold"] > 0


def test_cli_train_sweep_import_from_a_store(tmp_path):
    from fixtures_lab import small_lm_setup

    from app.cli import app
    from workbench.activations import cache_activations

    lab, corpus, model = small_lm_setup(tmp_path)
    cache_activations(lab, "acts", model, "blocks.0.hook_resid_post", corpus, 4096,
                      context_size=32, shard_tokens=1024, progress=False)
    runner = CliRunner()
    env = {"WORKBENCH_LAB": str(lab.root)}
    common = ["--acts", "acts", "--tokens", "2048", "--batch-size", "256"]
    result = runner.invoke(app, ["sae", "train", "--name", "one", "--arch", "topafa",
                                 "--latents", "64", *common], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["sae", "sweep", "--arch", "topk,structured", "--k", "2,4",
                                 "--latents", "64", "--groups", "8", "--group-size", "4",
                                 "--k-groups", "2", *common], env=env)
    assert result.exit_code == 0, result.output
    names = {a.name for a in lab.list("sae")}
    assert {"one", "acts-topk-64-k2", "acts-topk-64-k4", "acts-structured-g8x4-kg2"} <= names
    result = runner.invoke(app, ["sae", "import", str(lab.get("one").path), "--name", "copy",
                                 "--model", "lm", "--hook", "blocks.0.hook_resid_post"], env=env)
    assert result.exit_code == 0, result.output
    assert lab.get("copy").manifest["arch"] == "topafa"
    result = runner.invoke(app, ["sae", "import", str(lab.get("one").path), "--name", "bad",
                                 "--model", "lm", "--hook", "blocks.0.hook_nonesuch"], env=env)
    assert result.exit_code != 0 and not lab.exists("bad")
    result = runner.invoke(app, ["sae", "train", "--name", "x", "--arch", "topk", "--k", "4",
                                 "--latents", "64", *common], env=env)
    assert result.exit_code == 0
    result = runner.invoke(app, ["sae", "train", "--name", "x", "--arch", "topk", "--k", "4",
                                 "--latents", "64", *common], env=env)
    assert result.exit_code != 0 and "already exist" in str(result.exception)


def test_rerun_of_an_interrupted_sweep_skips_finished_saes(tmp_path):
    x, _ = planted_features(8192)
    lab = Lab(tmp_path)
    configs = [SAETrainConfig(name="short", arch="topk", latents=64, k=4, tokens=2048,
                              batch_size=512),
               SAETrainConfig(name="long", arch="topk", latents=64, k=4, tokens=6144,
                              batch_size=512, checkpoint_every_tokens=1024)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_saes(lab, configs, counting_source(x, fail_at=9)[0], progress=False)
    assert lab.exists("short") and not lab.exists("long")
    created = lab.get("short").created
    (art,) = train_saes(lab, configs, counting_source(x)[0], progress=False)
    assert art.name == "long" and lab.get("short").created == created
    with pytest.raises(InvalidInputError, match="already exist"):
        train_saes(lab, configs, counting_source(x)[0], progress=False)
