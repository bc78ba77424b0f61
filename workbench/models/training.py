"""Training a language model on a lab corpus (nanoGPT-style loop around a HookedTransformer).

    art = train_lm(lab, "lm", corpus="corpus", tokenizer="tok",
                   model_cfg=lm_config("tiny", d_vocab=4096), train_cfg=LMTrainConfig(steps=600))

The corpus is tokenized once (cached in the work folder), packed into BOS-prefixed sequences of
n_ctx tokens, and the model is trained with AdamW, linear warm-up + cosine decay and gradient
clipping. Validation loss is measured at intervals. The full training state is saved in
`lab.work_dir(name)` every `save_every` steps, at kept checkpoints and on Ctrl-C, so running the
same call again resumes where it stopped and ends with the same weights as an uninterrupted
run. A non-finite loss or gradient stops training with a clear error and keeps the last good
state. The result is a model artifact (see `workbench.models.model_io`) whose metrics include the
final train and validation loss next to the unigram baseline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.data.store import Corpus, load_corpus
from workbench.device import resolve_device
from workbench.errors import InvalidInputError, WorkbenchError
from workbench.lab import Artifact, Lab, validate_name, write_json
from workbench.models.architectures import DEFAULT_ARCHITECTURE, get_architecture, move_model
from workbench.models.distributed import DataParallel, join_launcher_group
from workbench.models.losses import count_targets, evaluate_loss, next_token_loss, resolve_precision
from workbench.models.model_io import (
    CHECKPOINT_DIR,
    architecture_manifest,
    config_to_dict,
    write_model_folder,
)
from workbench.models.presets import lm_config
from workbench.models.resume import ResumeStore
from workbench.models.schedules import checkpoint_steps, lr_factor
from workbench.models.token_data import (
    DocumentSampler,
    SequenceSampler,
    cached_stream,
    pack_documents,
    pack_sequences,
    spread_rows,
    unigram_baseline,
)
from workbench.models.tokenizer import load_tokenizer
from workbench.models.train_config import NON_WEIGHT_FIELDS, LMTrainConfig

TRAIN_LOSS_WINDOW = 50  # the reported final train loss is the mean over this many last steps


class TrainingDivergedError(WorkbenchError):
    """The loss or the gradient became NaN or infinite."""


@dataclass
class StepInfo:
    """What a callback sees after each optimizer step."""

    step: int
    loss: float
    lr: float
    model: HookedTransformer


@dataclass
class _Data:
    sampler: SequenceSampler
    val_final: torch.Tensor  # [n_val, n_ctx]: the sequences of the final validation loss
    val_interim: torch.Tensor  # [n_interim, n_ctx]: those of the losses during training
    unigram_entropy_train: float
    unigram_val_loss: float
    train_tokens_per_epoch: int
    ignore_index: int | None = None  # padding id of document packing (not a target)


@dataclass
class _Progress:
    """Everything besides weights/optimizer that a resumed run must restore."""

    step: int = 0
    recent_losses: deque = field(default_factory=lambda: deque(maxlen=TRAIN_LOSS_WINDOW))
    train_history: list = field(default_factory=list)  # [step, mean loss, lr]
    val_history: list = field(default_factory=list)  # [step, val loss]
    kept: dict = field(default_factory=dict)  # step -> val loss at that checkpoint
    step_time_s: float = 0.0
    wall_time_s: float = 0.0
    interval_losses: list = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return {
            "recent_losses": list(self.recent_losses),
            "train_history": self.train_history,
            "val_history": self.val_history,
            "kept": {str(k): v for k, v in self.kept.items()},
            "step_time_s": self.step_time_s,
            "wall_time_s": self.wall_time_s,
            "interval_losses": self.interval_losses,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        prog = cls(step=int(state["step"]))
        prog.recent_losses.extend(state["recent_losses"])
        prog.train_history = list(state["train_history"])
        prog.val_history = list(state["val_history"])
        prog.kept = {int(k): v for k, v in state["kept"].items()}
        prog.step_time_s = float(state["step_time_s"])
        prog.wall_time_s = float(state["wall_time_s"])
        prog.interval_losses = list(state["interval_losses"])
        return prog


@contextmanager
def deterministic_kernels():
    """torch's deterministic kernels while training, the caller's setting restored after.

    With more than one CPU thread the embedding's backward (index_put_ with accumulate) sums in
    a thread-dependent order, so the same command gave a different model each time (weights
    apart by ~1e-3 after 10 steps); deterministic mode sorts first, at no measured cost here.
    warn_only: an op with no deterministic version warns instead of failing."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@deterministic_kernels()
def train_lm(
    lab: Lab,
    name: str,
    corpus: str | Corpus,
    tokenizer: str,
    model_cfg: HookedTransformerConfig | None = None,
    train_cfg: LMTrainConfig | None = None,
    *,
    architecture: str = DEFAULT_ARCHITECTURE,
    architecture_options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    restart: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    initialize: Callable[[HookedTransformer], None] | None = None,
) -> Artifact:
    """Train a language model on `corpus` with the tokenizer artifact `tokenizer`.

    Args:
        model_cfg: the model config (default: the "tiny" preset sized to the tokenizer).
        train_cfg: training settings (default `LMTrainConfig()`).
        architecture / architecture_options: a registered architecture (see
            `workbench.models.architectures`) and its extra settings.
        overwrite: replace an existing model artifact `name`.
        restart: discard a saved state of an interrupted run instead of resuming it.
        progress: show a tqdm progress bar.
        callbacks: called with a `StepInfo` after every optimizer step (after that step's
            state was saved); raising from one stops training and leaves a resumable state.
        initialize: called with the freshly built model before training starts from step 0
            (e.g. upcycling weights from a dense model; name its source in
            architecture_options so that the resume fingerprint covers it).
    Under torchrun (WORLD_SIZE > 1) the run is data-parallel (see
    `workbench.models.distributed`): batch_size is the global batch; rank 0 writes.
    Returns the model artifact.
    """
    validate_name(name)
    if lab.exists(name) and not overwrite:
        raise InvalidInputError(
            f"model {name!r} already exists in the lab; choose another name or pass --overwrite"
        )
    train_cfg = train_cfg or LMTrainConfig()
    train_cfg.validate()
    corpus = load_corpus(lab, corpus) if isinstance(corpus, str) else corpus
    tok_art = lab.get(tokenizer, kind="tokenizer")
    tok = load_tokenizer(lab, tokenizer)
    model_cfg = model_cfg or lm_config("tiny", d_vocab=len(tok))
    if model_cfg.d_vocab < len(tok):
        raise InvalidInputError(
            f"the model's d_vocab ({model_cfg.d_vocab}) is smaller than the tokenizer "
            f"{tokenizer!r} ({len(tok)} tokens); build the config with d_vocab=len(tokenizer)"
        )
    arch = get_architecture(architecture)
    options = dict(architecture_options or {})
    dev = join_launcher_group(resolve_device(device))
    dp = DataParallel()
    store = ResumeStore(lab.work_dir(name))
    if restart and dp.is_main:
        store.clear()
    dp.barrier()

    fingerprint = _fingerprint(model_cfg, train_cfg, corpus, tok_art, architecture, options)
    data = _prepare_data(store, corpus, tok_art.name, tok_art.created, tok, model_cfg.n_ctx,
                         train_cfg)
    torch.manual_seed(train_cfg.seed)
    model = move_model(arch.build(model_cfg, options), dev)
    if not train_cfg.unembed_bias:
        _fix_unembed_bias_at_zero(model)
    if initialize is not None:
        initialize(model)
    dp.broadcast_(list(model.state_dict().values()))
    optimizer = _make_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, train_cfg.effective_warmup, train_cfg.steps, train_cfg.min_lr_ratio),
    )
    prog = _Progress()
    if store.latest_step() is not None:
        prog = _restore(store, model, optimizer, scheduler, data.sampler, fingerprint, name)

    run_config = {
        "corpus": corpus.name, "tokenizer": tok_art.name, "architecture": architecture,
        "architecture_options": options, "model": _model_summary(model_cfg),
        "train": dataclasses.asdict(train_cfg),
    }
    kept_steps = checkpoint_steps(train_cfg.checkpoints, train_cfg.steps)
    loop = _Loop(model, optimizer, scheduler, data, store, train_cfg, prog, fingerprint,
                 kept_steps, arch.aux_loss, callbacks, name, dp)
    if not dp.is_main:  # the other ranks only compute gradients; rank 0 writes everything
        loop.run(_NoJob(), progress=False)
        dp.barrier()
        return lab.get(name, kind="model")
    with lab.job("train_lm", name, run_config, total=train_cfg.steps) as job:
        loop.run(job, progress)
        final_val = evaluate_loss(model, data.val_final, precision=loop.precision,
                                  ignore_index=data.ignore_index)
        metrics = {**_final_metrics(model, data, train_cfg, prog, final_val),
                   "precision": loop.precision}
        if dp.world > 1:
            metrics["world_size"] = dp.world
        job.update(prog.step, force=True, **metrics)
    move_model(model, "cpu")
    _write_model_artifact(lab, name, model, tok, store, prog, kept_steps, run_config, metrics,
                          overwrite)
    shutil.rmtree(store.work_dir, ignore_errors=True)
    dp.barrier()
    return lab.get(name, kind="model")


class _NoJob:
    """Stands in for the catalog job on ranks other than 0."""

    def update(self, *args, **kwargs) -> None:
        pass


def _write_model_artifact(lab: Lab, name: str, model: HookedTransformer, tok, store: ResumeStore,
                          prog: _Progress, kept_steps: list[int], run_config: dict[str, Any],
                          metrics: dict[str, Any], overwrite: bool) -> None:
    """The model artifact: weights, config, tokenizer, kept checkpoints, loss history."""
    # steps kept before a resume that changed the schedule were never written: skip them
    kept = [(s, f) for s, f in zip(kept_steps, store.kept_files(kept_steps)) if f.exists()]
    with lab.new_artifact("model", name, parents=[run_config["corpus"], run_config["tokenizer"]],
                          config=run_config, overwrite=overwrite) as art:
        write_model_folder(art.path, model, tok)
        if kept:
            (art.path / CHECKPOINT_DIR).mkdir()
            for _, src in kept:
                shutil.copy2(src, art.path / CHECKPOINT_DIR / src.name)
        write_json(art.path / "history.json", {
            "train": prog.train_history, "validation": prog.val_history,
            "columns": {"train": ["step", "loss", "lr"], "validation": ["step", "val_loss"]},
        })
        art.manifest.update(architecture_manifest(run_config["architecture"],
                                                  run_config["architecture_options"]))
        art.manifest.update({
            "corpus": run_config["corpus"],
            "tokenizer": run_config["tokenizer"],
            "tokens_per_step": run_config["train"]["batch_size"] * model.cfg.n_ctx,
            "checkpoint_steps": [s for s, _ in kept],
            "checkpoint_val_loss": {str(s): prog.kept.get(s) for s, _ in kept},
        })
        art.metrics.update(metrics)


class _Loop:
    """The optimizer-step loop with evaluation, checkpointing, logging and callbacks."""

    def __init__(self, model, optimizer, scheduler, data: _Data, store: ResumeStore,
                 cfg: LMTrainConfig, prog: _Progress, fingerprint: str, kept_steps: list[int],
                 aux_loss, callbacks, name: str, dp: DataParallel | None = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.dp = dp or DataParallel()
        self.data, self.store, self.cfg, self.prog = data, store, cfg, prog
        self.fingerprint, self.kept_steps = fingerprint, set(kept_steps)
        self.aux_loss, self.callbacks, self.name = aux_loss, callbacks, name
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(cfg.precision, self.device)

    def run(self, job, progress: bool) -> None:
        cfg, prog = self.cfg, self.prog
        bar = tqdm(total=cfg.steps, initial=prog.step, desc=f"train {self.name}",
                   disable=not progress, dynamic_ncols=True, mininterval=0.5)
        self.model.train()
        segment_start = time.perf_counter()
        try:
            while prog.step < cfg.steps:
                loss, lr = self._step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                self._after_step(job, loss, lr, segment_start)
                segment_start = time.perf_counter()
                info = StepInfo(prog.step, loss, lr, self.model)
                for callback in self.callbacks:
                    callback(info)
        except KeyboardInterrupt:
            if self.dp.is_main:
                self._save()
            raise
        finally:
            bar.close()

    def _step(self) -> tuple[float, float]:
        """One optimizer step; returns (loss, learning rate used)."""
        dp, ignore = self.dp, self.data.ignore_index
        tokens = dp.rows(self.data.sampler.next_batch()).to(self.device)
        t0 = time.perf_counter()
        if dp.world == 1:
            loss = next_token_loss(self.model, tokens, self.precision, ignore)
        else:  # this rank's share of the global-batch mean: sum / global target count
            n_global = dp.sum(torch.tensor(float(count_targets(tokens, ignore))))
            loss = next_token_loss(self.model, tokens, self.precision, ignore, "sum") / n_global
        if self.aux_loss is not None:
            extra = self.aux_loss(self.model)
            if extra is not None:
                loss = loss + extra / dp.world
        step = self.prog.step + 1
        if not torch.isfinite(loss):
            self._diverged(step, f"the loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dp.world > 1:
            dp.sum_grads_([p for p in self.model.parameters() if p.requires_grad])
            loss = dp.sum(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            self._diverged(step, f"the gradient norm is {float(grad_norm)}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.prog.step = step
        self.prog.step_time_s += time.perf_counter() - t0
        return loss.item(), lr

    def _after_step(self, job, loss: float, lr: float, segment_start: float) -> None:
        cfg, prog, step = self.cfg, self.prog, self.prog.step
        prog.recent_losses.append(loss)
        prog.interval_losses.append(loss)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = sum(prog.interval_losses) / len(prog.interval_losses)
            prog.train_history.append([step, round(mean, 5), lr])
            prog.interval_losses = []
        metrics: dict[str, Any] = {"loss": loss, "lr": lr}
        if not self.dp.is_main:
            return
        if step % cfg.eval_every == 0 or step in self.kept_steps:
            val = evaluate_loss(self.model, self.data.val_interim, precision=self.precision,
                                ignore_index=self.data.ignore_index)
            prog.val_history.append([step, round(val, 5)])
            metrics["val_loss"] = val
            self.model.train()
        if step in self.kept_steps:
            prog.kept[step] = prog.val_history[-1][1]
            self.store.keep(step, self.model)
        prog.wall_time_s += time.perf_counter() - segment_start
        if step % cfg.save_every == 0 or step in self.kept_steps or step == cfg.steps:
            self._save()
        tokens = step * cfg.batch_size * self.data.sampler.n_ctx
        job.update(step, force="val_loss" in metrics, tokens=tokens, **metrics)

    def _save(self) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "sampler": self.data.sampler.state_dict(),
            **self.prog.to_state(),
        }
        self.store.save(self.prog.step, self.model, state)

    def _diverged(self, step: int, what: str) -> None:
        last = self.store.latest_step()
        kept = (f"the last good state (step {last}) is kept in {self.store.work_dir}"
                if last is not None else "no state was saved yet")
        raise TrainingDivergedError(
            f"training of {self.name!r} diverged at step {step}: {what}. {kept}. Lower the "
            f"learning rate (now {self.cfg.lr}) or lengthen the warm-up, and rerun with --restart "
            "(or resume unchanged if the cause was transient)"
        )


def _restore(store: ResumeStore, model, optimizer, scheduler, sampler: SequenceSampler,
             fingerprint: str, name: str) -> _Progress:
    state = store.load(model)
    if state.get("fingerprint") != fingerprint:
        raise InvalidInputError(
            f"the work folder {store.work_dir} holds an interrupted run of {name!r} with other "
            "settings (model, training, corpus or tokenizer differ); rerun with the original "
            "settings to resume it, or pass --restart to discard it and start afresh"
        )
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    sampler.load_state_dict(state["sampler"])
    return _Progress.from_state(state)


def _prepare_data(store: ResumeStore, corpus: Corpus, tok_name: str, tok_created: float,
                  tok, n_ctx: int, cfg: LMTrainConfig) -> _Data:
    """Token streams (cached), the training sampler, validation sequences, unigram baseline."""
    streams = {}
    for split in ("train", "validation"):
        # Training documents are shuffled (seeded) before packing: corpora come grouped by
        # language, and packed windows would otherwise teach that the language carries over
        # from one document to the next.
        shuffle_seed = cfg.seed if split == "train" else None
        key = (f"{corpus.name}@{corpus.artifact.created}|{tok_name}@{tok_created}|{split}"
               f"|shuffle={shuffle_seed}")
        streams[split] = cached_stream(
            store.work_dir / f"tokens_{split}.safetensors", key, tok,
            lambda split=split, seed=shuffle_seed: _documents(corpus, split, seed),
        )
    if cfg.packing == "document":
        return _document_data(streams, tok, n_ctx, cfg)
    val_sequences = pack_sequences(streams["validation"], n_ctx, tok.bos_token_id)
    if len(val_sequences) == 0:
        raise InvalidInputError(
            f"corpus {corpus.name!r} has too little validation text for one sequence of {n_ctx} "
            "tokens; rebuild it with a validation split"
        )
    sampler = SequenceSampler(streams["train"], n_ctx, tok.bos_token_id, cfg.batch_size, cfg.seed)
    train_targets = pack_sequences(streams["train"], n_ctx, tok.bos_token_id)[:, 1:]
    val_final = spread_rows(val_sequences, cfg.final_eval_sequences)
    baseline = unigram_baseline(train_targets, val_final[:, 1:], len(tok))
    return _Data(sampler, val_final, spread_rows(val_sequences, cfg.eval_sequences),
                 baseline.entropy_train, baseline.val_loss, int(streams["train"].numel()))


def _document_data(streams: dict[str, torch.Tensor], tok, n_ctx: int, cfg: LMTrainConfig) -> _Data:
    """packing="document": one document per row, padding ignored by the losses."""
    pad = tok.pad_token_id
    if pad is None:
        raise InvalidInputError("document packing needs a tokenizer with a PAD token")
    rows = {split: pack_documents(stream, n_ctx, tok.bos_token_id, tok.eos_token_id, pad)
            for split, stream in streams.items()}
    if len(rows["validation"]) == 0:
        raise InvalidInputError("the corpus has no validation documents; rebuild it with a "
                                "validation split")
    sampler = DocumentSampler(rows["train"], cfg.batch_size, cfg.seed)
    val_final = spread_rows(rows["validation"], cfg.final_eval_sequences)
    train_t, val_t = rows["train"][:, 1:], val_final[:, 1:]
    baseline = unigram_baseline(train_t[train_t != pad], val_t[val_t != pad], len(tok))
    return _Data(sampler, val_final, spread_rows(rows["validation"], cfg.eval_sequences),
                 baseline.entropy_train, baseline.val_loss, int((train_t != pad).sum()), pad)


def _documents(corpus: Corpus, split: str, shuffle_seed: int | None) -> list[str]:
    """The split's texts, in a seeded random order when `shuffle_seed` is given."""
    texts = corpus.texts(split)
    if shuffle_seed is None:
        return texts
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(shuffle_seed))
    return [texts[i] for i in order.tolist()]


def _fix_unembed_bias_at_zero(model: torch.nn.Module) -> None:
    """Zero the unembedding bias b_U and freeze it (GPT-2 and Llama heads have no bias)."""
    bias = getattr(getattr(model, "unembed", None), "b_U", None)
    if isinstance(bias, torch.nn.Parameter):
        with torch.no_grad():
            bias.zero_()
        bias.requires_grad_(False)


def _make_optimizer(model: torch.nn.Module, cfg: LMTrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and norm gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
    )


def _fingerprint(model_cfg: HookedTransformerConfig, cfg: LMTrainConfig, corpus: Corpus,
                 tok_art: Artifact, architecture: str, options: dict[str, Any]) -> str:
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NON_WEIGHT_FIELDS}
    if train.get("packing") == "stream":
        del train["packing"]  # the default: fingerprints of runs from before the option hold
    blob = json.dumps({
        "model": config_to_dict(model_cfg), "train": train, "architecture": architecture,
        "options": options, "corpus": [corpus.name, corpus.artifact.created],
        "tokenizer": [tok_art.name, tok_art.created],
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _model_summary(cfg: HookedTransformerConfig) -> dict[str, Any]:
    keys = ("model_name", "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx",
            "act_fn", "gated_mlp", "n_key_value_heads", "normalization_type",
            "positional_embedding_type")
    return {k: getattr(cfg, k, None) for k in keys}


def _final_metrics(model, data: _Data, cfg: LMTrainConfig, prog: _Progress,
                   val_loss: float) -> dict[str, Any]:
    tokens_per_step = cfg.batch_size * data.sampler.n_ctx
    train_tokens = prog.step * tokens_per_step
    return {
        "train_loss": sum(prog.recent_losses) / max(1, len(prog.recent_losses)),
        "val_loss": val_loss,
        "unigram_val_loss": data.unigram_val_loss,
        "unigram_entropy_train": data.unigram_entropy_train,
        "steps": prog.step,
        "train_tokens": train_tokens,
        "epochs": train_tokens / max(1, data.train_tokens_per_epoch),
        "tokens_per_s": train_tokens / prog.step_time_s if prog.step_time_s else 0.0,
        "train_time_s": prog.wall_time_s,
        "n_params": sum(p.numel() for p in model.parameters()),
        "val_tokens": count_targets(data.val_final, data.ignore_index),
    }
