"""LM data parallelism: 2 processes (gloo) give the weights of 1 process at the same global
batch, for a dense model and for MoE-X (whose load-balancing counts are summed over ranks)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from moex_fixtures import build_chess_lab, small_cfg, train_cfg

from workbench.lab import Lab
from workbench.models.loading import load_model
from workbench.models.moex import MoESpec
from workbench.models.training import train_lm

RUNS = {"ddp-dense": ("hooked_transformer", {}),
        "ddp-moex": ("moex", MoESpec(n_experts=4, k=2, d_expert=32, balance_coef=0.1).to_options())}


def _train_all(lab: Lab, prefix: str) -> None:
    for name, (arch, options) in RUNS.items():
        train_lm(lab, prefix + name, "chess", "chess-tok", small_cfg(), train_cfg(4), architecture=arch,
                 architecture_options=options, progress=False)


def _worker(rank: int, world: int, init_file: str, lab_root: str) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        _train_all(Lab(lab_root), "two-")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    torch.set_num_threads(1)
    lab = build_chess_lab(tmp_path / "lab")
    _train_all(lab, "one-")
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(lab.root)), nprocs=2, join=True)
    for name in RUNS:
        one = load_model("one-" + name, lab=lab).state_dict()
        two = load_model("two-" + name, lab=lab).state_dict()
        assert one.keys() == two.keys()
        for key in one:
            if key.endswith("attn.b_K"):
                # softmax ignores a key bias: its gradient is 0 up to rounding, and Adam turns
                # rounding noise into full-size steps, so it is no test of the reduction
                continue
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, key=key, name=name: f"{name} {key}: {m}")
        two_metrics, one_metrics = lab.get("two-" + name).metrics, lab.get("one-" + name).metrics
        assert two_metrics["world_size"] == 2
        assert abs(two_metrics["train_loss"] - one_metrics["train_loss"]) < 1e-4
