"""`train_saes(lab, configs, source)`: several SAEs from one pass over an activation stream.

    cfgs = [SAETrainConfig(name=f"topk-k{k}", arch="topk", latents=4096, k=k) for k in (8, 16, 32)]
    arts = train_saes(lab, cfgs, "acts")                    # an activations artifact
    arts = train_saes(lab, cfgs, live_source(lab, "lm", "blocks.1.hook_resid_post", "corpus"))

The loop reads one global batch at a time and gives it to every SAE that still needs it, so a
sweep costs one read of the data (or one forward pass of the live model) per step. Each SAE:
- checkpoints into `lab.work_dir(name)` every `checkpoint_every_tokens`; rerunning the same
  command resumes each SAE from its checkpoint (the stream restarts at the earliest one and SAEs
  that are further along skip the batches they have seen);
- reports progress and metrics to the catalog (`lab.job("sae-train", name)`) and a tqdm bar;
- becomes an `sae` artifact (sae-lens folder + manifest) the moment it finishes; its work dir is
  then removed.
NaN/inf in a batch or in a loss stops the run with TrainingDivergedError naming the step; the
checkpoints on disk are the last good ones and no artifact is written for unfinished SAEs.
Under `torchrun` each process trains on its slice of every batch (distributed.py); rank 0 writes.

Checkpoints: one file per SAE, `lab.work_dir(name)/checkpoint.pt`, a dict of tensors and plain
values (model and optimizer state, counters, the config it was made with), written to a
temporary file and renamed into place, so a kill leaves either the previous or the new
checkpoint, never half of one. Loaded with `torch.load(weights_only=True)` (no pickled code).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.constants import SPARSITY_FILENAME
from safetensors.torch import save_file
from tqdm.auto import tqdm

from saes.training.config import INIT_FROM_ARCHS, SAETrainConfig, check_shared_stream
from saes.training.distributed import Reducer, init_distributed, rank_device
from saes.training.sources import ActivationSource, resolve_source
from saes.training.step import SAETrainer, TrainingDivergedError
from sparse_ops.cpu_native import release_workspace
from workbench.device import resolve_device
from workbench.errors import InvalidInputError, WorkbenchError
from workbench.lab import Artifact, Lab

JOB_KIND = "sae-train"
CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_TOLERANCE = 1e-3  # per-token ||x_hat_saved - x_hat_trainer|| / ||x - mean|| on a check batch
EXPORT_TIE_ROWS = 0.02  # share of tokens allowed to differ more: top-k near-ties that float
                        # rounding of the two encodes breaks either way


def train_saes(
    lab: Lab,
    configs: SAETrainConfig | Sequence[SAETrainConfig],
    source: Any,
    *,
    overwrite: bool = False,
    restart: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Artifact]:
    """Train every config from one stream of `source`; returns the new `sae` artifacts.

    source: activations artifact name | ActivationStore | tensor [N, d_in] | ActivationSource.
    overwrite: replace existing artifacts of the same names; restart: ignore checkpoints.
    Under torch.distributed only rank 0 returns artifacts (others get []).
    """
    configs = [configs] if isinstance(configs, SAETrainConfig) else list(configs)
    check_shared_stream(configs)
    if not overwrite:
        configs = _unfinished(lab, configs)
    src = resolve_source(lab, source)
    starts = {c.name: _starting_sae(lab, c.name, c.arch, c.init_from, src.d_in)
              for c in configs if c.init_from is not None}
    device = rank_device(resolve_device(device if device is not None else configs[0].device))
    reducer = init_distributed(device)
    trainers = [SAETrainer(_adopt(c, starts.get(c.name)).resolved(src.d_in), src.d_in, device,
                           reducer, init_sae=starts.get(c.name)) for c in configs]
    for trainer in trainers:
        _resume_or_reset(lab, trainer, restart)
    try:
        return _Run(lab, src, trainers, reducer, overwrite, progress).run()
    finally:
        release_workspace()


def _unfinished(lab: Lab, configs: list[SAETrainConfig]) -> list[SAETrainConfig]:
    """The configs still to train. SAEs of a rerun sweep that finished earlier (artifact
    written, no checkpoint left) are skipped; if every name exists, that is an error."""
    def finished(c: SAETrainConfig) -> bool:
        return lab.exists(c.name) and not checkpoint_path(lab.root / "work" / c.name).exists()

    remaining = [c for c in configs if not finished(c)]
    taken = [c.name for c in configs if lab.exists(c.name)]
    if not remaining or len(taken) > len(configs) - len(remaining):
        raise InvalidInputError(
            f"artifact(s) {taken} already exist in {lab.root}; pick other names, pass "
            "--overwrite, or remove them with `workbench lab rm NAME`"
        )
    return remaining


def _starting_sae(lab: Lab, name: str, arch: str, init_from: str, d_in: int) -> SAE:
    """The SAE `init_from` that SAE `name` starts from, checked against its architecture and
    the data width."""
    from saes.interop import load_sae

    sae = load_sae(init_from, lab=lab, device="cpu")
    found = sae.cfg.architecture()
    if found not in INIT_FROM_ARCHS[arch]:
        raise InvalidInputError(
            f"{name}: --init-from {init_from!r} is a {found!r} SAE; arch {arch} can "
            f"start from {', '.join(INIT_FROM_ARCHS[arch])} SAEs"
        )
    if int(sae.cfg.d_in) != d_in:
        raise InvalidInputError(
            f"{name}: the activations have width {d_in} but the SAE {init_from!r} reads "
            f"d_in={sae.cfg.d_in}; use activations from the SAE's model and hook"
        )
    if sae.cfg.normalize_activations not in ("none", "layer_norm"):
        raise InvalidInputError(
            f"{name}: cannot continue an SAE with normalize_activations="
            f"{sae.cfg.normalize_activations!r}; fold its scaling first (sae-lens "
            "fold_activation_norm_scaling_factor)"
        )
    return sae


def _adopt(cfg: SAETrainConfig, sae: SAE | None) -> SAETrainConfig:
    """cfg with the size (and k, groups, normalization) of the SAE it starts from."""
    if sae is None:
        return cfg
    c = sae.cfg
    changes: dict[str, Any] = {"latents": int(c.d_sae)}
    if cfg.arch in ("topk", "batchtopk") and cfg.k is None and getattr(c, "k", None):
        changes["k"] = int(c.k)
    if cfg.arch == "structured":
        changes.update(groups=c.n_groups, group_size=c.group_size,
                       k_groups=cfg.k_groups or c.k_groups)
    if c.normalize_activations == "layer_norm":
        changes["normalize"] = "token"
    elif cfg.normalize == "token" or (cfg.normalize is None and cfg.arch == "topafa"):
        changes["normalize"] = "none"
    return replace(cfg, **changes)


def _resume_or_reset(lab: Lab, trainer: SAETrainer, restart: bool) -> None:
    work_dir = lab.work_dir(trainer.cfg.name)
    if restart:
        checkpoint_path(work_dir).unlink(missing_ok=True)
        return
    state = load_checkpoint(work_dir)
    if state is not None:
        trainer.load_state_dict(state, str(checkpoint_path(work_dir)))


class _Run:
    """The shared loop over the stream (one instance per `train_saes` call)."""

    def __init__(self, lab: Lab, src: ActivationSource, trainers: list[SAETrainer],
                 reducer: Reducer, overwrite: bool, progress: bool):
        self.lab, self.src, self.trainers = lab, src, trainers
        self.reducer, self.overwrite, self.progress = reducer, overwrite, progress
        self.batch_size = trainers[0].cfg.batch_size
        self.artifacts: list[Artifact] = []
        self.saved = {t.cfg.name: t.steps_done for t in trainers if t.steps_done}  # checkpoints

    def run(self) -> list[Artifact]:
        start = min(t.steps_done for t in self.trainers)
        end = max(t.total_steps for t in self.trainers)
        for t in self.trainers:  # resumed complete but crashed before writing the artifact
            if t.done:
                self._finish(t, None)
        stream = self.src.batches(self.batch_size, self.trainers[0].cfg.seed, skip=start)
        with ExitStack() as stack:
            if hasattr(stream, "close"):  # stop a prefetching source's producer when we stop
                stack.callback(stream.close)
            jobs = self._open_jobs(stack)
            bar = stack.enter_context(tqdm(
                total=end * self.batch_size, initial=start * self.batch_size, unit="tok",
                unit_scale=True, desc="sae train",
                disable=not (self.progress and self.reducer.is_main)))
            for step in range(start, end):
                self._train_step(step, self._next_batch(stream, step), jobs)
                bar.update(self.batch_size)
                bar.set_postfix_str(self._postfix(), refresh=False)
        return self.artifacts

    def _open_jobs(self, stack: ExitStack) -> dict[str, Any]:
        """The catalog job of every unfinished SAE (rank 0 only), closed with `stack`."""
        if not self.reducer.is_main:
            return {}
        return {t.cfg.name: stack.enter_context(self.lab.job(
                    JOB_KIND, t.cfg.name, t.cfg.to_dict(), total=t.total_steps))
                for t in self.trainers if not t.done}

    def _train_step(self, step: int, x: torch.Tensor, jobs: dict[str, Any]) -> None:
        """Global batch `step` for every SAE still at that step: train, report, checkpoint or
        finish."""
        for t in self.trainers:
            if t.done or t.steps_done != step:
                continue
            if t.steps_done == 0:
                t.initialize(x)
            metrics = t.step(x)
            if t.cfg.name in jobs:
                jobs[t.cfg.name].update(t.steps_done, force=t.done, **metrics)
            if t.done:
                self._finish(t, x)
            elif t.steps_done % self._checkpoint_every(t) == 0:
                self._checkpoint(t)

    # -- per step helpers ------------------------------------------------------------------------
    def _next_batch(self, stream, step: int) -> torch.Tensor:
        x = next(stream, None)
        if x is None:
            raise WorkbenchError(f"{self.src.description} ran out of batches at step {step}")
        if x.shape[1] != self.src.d_in:
            raise InvalidInputError(
                f"{self.src.description} gave a batch of width {x.shape[1]}, expected d_in="
                f"{self.src.d_in}"
            )
        if not bool(torch.isfinite(x).all()):
            kept = [f"{t.cfg.name} (step {self.saved.get(t.cfg.name, 'none yet')})"
                    for t in self.trainers]
            raise TrainingDivergedError(
                f"the activations batch at step {step} (tokens {step * self.batch_size}.."
                f"{(step + 1) * self.batch_size}) of {self.src.description} contains NaN or inf; "
                f"training stopped and the last good checkpoints are kept: {', '.join(kept)}. "
                "Rebuild the activations (or fix the model) and rerun to resume"
            )
        return x

    def _checkpoint_every(self, t: SAETrainer) -> int:
        return max(1, t.cfg.checkpoint_every_tokens // self.batch_size)

    def _checkpoint(self, t: SAETrainer) -> None:
        if not t.params_finite():
            raise TrainingDivergedError(
                f"SAE {t.cfg.name!r}: weights became NaN/inf by step {t.steps_done}; the last "
                "good checkpoint is kept. Lower the learning rate (--lr) and rerun to resume"
            )
        if self.reducer.is_main:
            save_checkpoint(self.lab.work_dir(t.cfg.name), t.state_dict())
        self.saved[t.cfg.name] = t.steps_done

    def _postfix(self) -> str:
        parts = []
        for t in self.trainers[:3]:
            m = t.latest
            if m:
                parts.append(f"{t.cfg.name}: fvu={m['fvu']:.3f} l0={m['l0']:.1f} "
                             f"dead={m['dead_fraction']:.2f}")
        return " | ".join(parts)

    # -- finishing an SAE ------------------------------------------------------------------------
    def _finish(self, t: SAETrainer, check_batch: torch.Tensor | None) -> None:
        if not t.params_finite():
            raise TrainingDivergedError(
                f"SAE {t.cfg.name!r}: weights are NaN/inf at the end of training; lower --lr and "
                "rerun with --restart"
            )
        if self.reducer.is_main:
            self.artifacts.append(write_sae_artifact(self.lab, t, self.src, self.overwrite,
                                                     check_batch))
            shutil.rmtree(self.lab.root / "work" / t.cfg.name, ignore_errors=True)
        self.reducer.barrier()


def sae_metadata(t: SAETrainer, src: ActivationSource) -> dict[str, Any]:
    """What the saved cfg.json records about where the SAE belongs (sae-lens metadata)."""
    return {
        "model_name": src.model_name,
        "hook_name": src.hook_name,
        "hook_head_index": None,
        **src.metadata,
        "training_architecture": t.cfg.arch,
        "training_tokens": t.steps_done * t.cfg.batch_size,
        "workbench_config": t.cfg.to_dict(),
    }


def write_sae_artifact(lab: Lab, t: SAETrainer, src: ActivationSource, overwrite: bool,
                       check_batch: torch.Tensor | None) -> Artifact:
    """Save trainer `t`'s SAE as an `sae` artifact, after checking the saved copy reproduces it."""
    cfg = t.cfg
    sae = t.export(sae_metadata(t, src), check_batch)
    with lab.new_artifact("sae", cfg.name, parents=src.parents, config=cfg.to_dict(),
                          overwrite=overwrite) as art:
        sae.save_model(art.path)
        frequency = t.firing_frequency()
        save_file({"sparsity": torch.log10(frequency.float() + 1e-10)}, art.path / SPARSITY_FILENAME)
        export_error = _check_export(art.path, t, check_batch)
        art.manifest.update({
            "arch": cfg.arch,
            "sae_lens_architecture": sae.cfg.architecture(),
            "model": src.model_name,
            "hook": src.hook_name,
            "activations": src.parents[0] if src.parents else None,
            "source": src.description,
            "d_in": t.d_in,
            "d_sae": int(sae.cfg.d_sae),
        })
        art.metrics.update(t.final_metrics())
        if export_error is not None:
            art.metrics["export_check_error"] = export_error
    return lab.get(cfg.name)


@torch.no_grad()
def _check_export(folder, t: SAETrainer, x: torch.Tensor | None) -> float | None:
    """Load the saved SAE back with sae-lens and compare its reconstructions with the trainer's."""
    saved = SAE.load_from_disk(folder, device="cpu")
    if x is None:
        return None
    x = x[:512].float().cpu()
    model_cpu = t.model.to("cpu")
    try:
        expected = t.normalizer.denormalize(x, model_cpu.reconstruct(t.normalizer(x)))
    finally:
        t.model.to(t.device)
    got = saved(x)
    scale = (x - x.mean(0)).norm(dim=1).mean().clamp_min(1e-12)
    row_error = (got - expected).norm(dim=1) / scale
    differing = float((~(row_error < EXPORT_TOLERANCE)).float().mean())  # NaN counts as differing
    if not differing <= EXPORT_TIE_ROWS:
        raise WorkbenchError(
            f"internal error: the saved SAE {t.cfg.name!r} reconstructs {100 * differing:.0f}% of "
            f"the check tokens differently from the trained one (largest relative difference "
            f"{float(row_error.max()):.2e}); please report this"
        )
    return float(row_error.median())


# ----------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_path(work_dir: Path) -> Path:
    return Path(work_dir) / CHECKPOINT_FILE


def save_checkpoint(work_dir: Path, state: dict[str, Any]) -> None:
    """Atomically write `state` to work_dir/checkpoint.pt."""
    final = checkpoint_path(work_dir)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(work_dir: Path) -> dict[str, Any] | None:
    """The checkpoint in work_dir, or None when there is none."""
    path = checkpoint_path(work_dir)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise InvalidInputError(
            f"the training checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
            "delete it or pass --restart to train from scratch"
        ) from exc
