"""workbench.models training: learning, resume determinism, NaN guard, artifacts, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_lab import small_corpus
from typer.testing import CliRunner

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Lab
from workbench.models.architectures import quiet_hooked_transformer
from workbench.models.loading import load_model
from workbench.models.model_io import list_checkpoints
from workbench.models.presets import lm_config
from workbench.models.tokenizer import load_tokenizer, train_tokenizer_artifact
from workbench.models.training import LMTrainConfig, TrainingDivergedError, train_lm

N_CTX = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are small: one thread is as fast, and immune to a busy machine (OpenMP
    threads that wait for a descheduled sibling can make 2-thread steps 5-10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    """A lab with a 3-language fortunes corpus `corpus` and a 512-token tokenizer `tok`."""
    lab = Lab(tmp_path_factory.mktemp("models") / "lab")
    small_corpus(lab, per_language=150)
    train_tokenizer_artifact(lab, "corpus", "tok", vocab_size=512)
    return lab


def _cfg(lab: Lab, **options):
    return lm_config("tiny", d_vocab=len(load_tokenizer(lab, "tok")), n_ctx=N_CTX, **options)


def _quick(**overrides) -> LMTrainConfig:
    settings = {"steps": 12, "batch_size": 8, "warmup_steps": 3, "eval_every": 6, "eval_sequences": 16,
                    "final_eval_sequences": 64, "save_every": 5, "log_every": 2}
    return LMTrainConfig(**{**settings, **overrides})


class Stop(Exception):
    """Raised by a callback to simulate a crash."""


def _stop_at(step: int, exc: type[BaseException] = Stop):
    def callback(info):
        if info.step == step:
            raise exc(f"simulated crash after step {step}")
    return callback


def _params(lab: Lab, name: str) -> torch.Tensor:
    """All parameters of lab model `name` as one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in load_model(name, lab=lab).parameters()])


def _relative_gap(lab: Lab, a: str, b: str, cfg) -> float:
    """||w_a - w_b|| / ||w_a - w_init||: how far apart two runs end, relative to how far
    training moved the weights (float reduction order differs between processes, so runs
    agree to about 1e-6 rather than bit for bit)."""
    init = torch.cat([p.detach().reshape(-1)
                      for p in quiet_hooked_transformer(cfg).parameters()])
    w_a, w_b = _params(lab, a), _params(lab, b)
    return float((w_a - w_b).norm() / (w_a - init).norm())


def _interrupted_then_resumed(lab: Lab, name: str, cfg) -> None:
    # a crash after step 7 (state saved at step 5), then Ctrl-C after step 9 (saves step 9),
    # then the same call again
    latest = lab.work_dir(name) / "resume" / "latest.json"
    with pytest.raises(Stop):
        train_lm(lab, name, "corpus", "tok", cfg, _quick(), progress=False,
                 callbacks=[_stop_at(7)])
    assert not lab.exists(name) and json.loads(latest.read_text())["step"] == 5
    with pytest.raises(KeyboardInterrupt):
        train_lm(lab, name, "corpus", "tok", cfg, _quick(), progress=False,
                 callbacks=[_stop_at(9, KeyboardInterrupt)])
    assert json.loads(latest.read_text())["step"] == 9
    train_lm(lab, name, "corpus", "tok", cfg, _quick(), progress=False)


def test_training_learns_and_writes_a_complete_artifact(lab):
    cfg = _quick(steps=120, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=40,
                 checkpoints="geometric", save_every=1000)
    art = train_lm(lab, "lm", "corpus", "tok", _cfg(lab), cfg, progress=False)
    m = art.metrics
    # a context-aware model must beat the best context-free (unigram) predictor clearly
    assert m["val_loss"] < m["unigram_val_loss"] - 0.4, m
    assert m["unigram_entropy_train"] == pytest.approx(m["unigram_val_loss"], abs=0.6)
    assert m["steps"] == 120 and m["train_tokens"] == 120 * 16 * N_CTX
    assert m["tokens_per_s"] > 0 and m["train_loss"] < 6.0
    assert art.parents == ["corpus", "tok"]
    assert list_checkpoints(art.path) == [1, 2, 4, 8, 16, 32, 64, 120]
    assert art.manifest["tokens_per_step"] == 16 * N_CTX
    history = json.loads((art.path / "history.json").read_text())
    assert [row[0] for row in history["validation"]] == [1, 2, 4, 8, 16, 32, 40, 64, 80, 120]
    assert history["validation"][-1][1] < history["validation"][0][1]
    assert not (lab.root / "work" / "lm").exists()  # work folder removed on success
    model = load_model("lm", lab=lab)
    assert model.tokenizer is not None and model.cfg.n_ctx == N_CTX
    early = load_model("lm@4", lab=lab)
    tokens = model.to_tokens("Das Leben ist schön, aber")
    with torch.no_grad():
        assert model(tokens, return_type="loss") < early(tokens, return_type="loss")
    last = load_model("lm@120", lab=lab)
    assert all(torch.equal(a, b) for a, b in zip(last.parameters(), model.parameters()))
    with pytest.raises(NotFoundError, match="no checkpoint at step 3"):
        load_model("lm@3", lab=lab)
    job = lab.jobs("lm")[0]
    assert job["status"] == "done" and job["step"] == 120 and "val_loss" in job["metrics"]


def test_killed_and_resumed_run_matches_uninterrupted_run(lab):
    cfg = _cfg(lab, act_fn="relu")
    train_lm(lab, "full", "corpus", "tok", cfg, _quick(), progress=False)
    _interrupted_then_resumed(lab, "resumed", cfg)
    assert [j["status"] for j in lab.jobs("resumed")] == ["done", "interrupted", "failed"]
    assert _relative_gap(lab, "full", "resumed", cfg) < 1e-4
    art = lab.get("resumed")
    # (bf16 evaluation rounds the tiny weight differences into ~1e-4 loss differences)
    assert art.metrics["val_loss"] == pytest.approx(lab.get("full").metrics["val_loss"], abs=2e-3)
    assert art.metrics["steps"] == 12
    history = json.loads((art.path / "history.json").read_text())
    assert [row[0] for row in history["train"]] == [2, 4, 6, 8, 10, 12]


def test_two_runs_with_two_threads_give_the_same_weights(lab):
    # the same command twice: bit for bit the same model, also with parallel CPU kernels
    cfg = _cfg(lab)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name in ("twin-a", "twin-b"):
            train_lm(lab, name, "corpus", "tok", cfg, _quick(steps=6), progress=False)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(_params(lab, "twin-a"), _params(lab, "twin-b"))
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is back


def test_resume_check_detects_a_lost_data_position(lab, monkeypatch):
    """Negative control: a resume that forgets where the data stream was ends elsewhere."""
    from workbench.models.token_data import SequenceSampler

    cfg = _cfg(lab, act_fn="relu")
    if not lab.exists("full"):
        train_lm(lab, "full", "corpus", "tok", cfg, _quick(), progress=False)
    monkeypatch.setattr(SequenceSampler, "load_state_dict", lambda self, state: None)
    _interrupted_then_resumed(lab, "forgetful", cfg)
    assert _relative_gap(lab, "full", "forgetful", cfg) > 1e-2


def test_resume_with_other_settings_needs_restart(lab):
    cfg = _cfg(lab)
    with pytest.raises(Stop):
        train_lm(lab, "changed", "corpus", "tok", cfg, _quick(), progress=False,
                 callbacks=[_stop_at(6)])
    with pytest.raises(InvalidInputError, match="other settings.*--restart"):
        train_lm(lab, "changed", "corpus", "tok", cfg, _quick(lr=1e-3), progress=False)
    art = train_lm(lab, "changed", "corpus", "tok", cfg, _quick(lr=1e-3, steps=6),
                   progress=False, restart=True)
    assert art.metrics["steps"] == 6
    with pytest.raises(InvalidInputError, match="already exists"):
        train_lm(lab, "changed", "corpus", "tok", cfg, _quick(), progress=False)


def test_nan_stops_training_and_keeps_last_good_state(lab):
    def poison(info):
        if info.step == 4:
            with torch.no_grad():
                info.model.blocks[0].mlp.W_in.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match=r"diverged at step 5.*last good state \(step 4\)"):
        train_lm(lab, "nan", "corpus", "tok", _cfg(lab), _quick(save_every=2), progress=False,
                 callbacks=[poison])
    assert not lab.exists("nan")
    assert lab.jobs("nan")[0]["status"] == "failed"
    state = lab.work_dir("nan") / "resume" / "state_00000004" / "model.safetensors"
    from safetensors.torch import load_file

    weights = load_file(str(state))
    assert torch.isfinite(weights["blocks.0.mlp.W_in"]).all()
    assert all(torch.isfinite(t).all() for k, t in weights.items() if not k.endswith("IGNORE"))


def test_bad_settings_are_rejected_before_training(lab):
    with pytest.raises(InvalidInputError, match="d_vocab"):
        train_lm(lab, "x", "corpus", "tok", lm_config("tiny", d_vocab=100, n_ctx=N_CTX), _quick())
    with pytest.raises(InvalidInputError, match="outside"):
        train_lm(lab, "x", "corpus", "tok", _cfg(lab), _quick(checkpoints="5,50"))
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        train_lm(lab, "x", "corpus", "tok", _cfg(lab), _quick(batch_size=100_000))
    with pytest.raises(NotFoundError, match="no tokenizer named 'nope'"):
        train_lm(lab, "x", "corpus", "nope", _cfg(lab), _quick())


def test_cli(lab, monkeypatch):
    from app.cli import app

    monkeypatch.setenv("WORKBENCH_LAB", str(lab.root))
    runner = CliRunner()
    out = runner.invoke(app, ["lm", "list-presets"])
    assert out.exit_code == 0 and "tiny" in out.output and "silu" in out.output
    out = runner.invoke(app, ["lm", "train", "--corpus", "corpus", "--name", "cli-lm",
                              "--vocab", "400", "--act-fn", "silu", "--norm", "RMS",
                              "--positional", "rotary", "--n-ctx", "32", "--steps", "4",
                              "--batch-size", "4", "--checkpoints", "every:2",
                              "--precision", "fp32"])
    assert out.exit_code == 0, out.output
    assert "val loss" in out.output and "unigram baseline" in out.output
    art = lab.get("cli-lm")
    assert art.parents == ["corpus", "corpus-tok400"] and list_checkpoints(art.path) == [2, 4]
    assert art.config["model"]["act_fn"] == "silu" and art.metrics["precision"] == "fp32"
    out = runner.invoke(app, ["lm", "generate", "--model", "cli-lm", "--prompt", "Das",
                              "--max-new-tokens", "5"])
    assert out.exit_code == 0 and out.output.startswith("Das")
    out = runner.invoke(app, ["lm", "hooks", "--model", "cli-lm"])
    assert "blocks.{0..1}.attn.hook_rot_q" in out.output
    from app.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["lm", "generate", "--model", "cli-lm", "--max-new-tokens", "500"])
    assert exit_info.value.code == 2
