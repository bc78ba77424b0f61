"""EleutherAI's sparsify (`eai-sparsify`) as a baseline of `workbench bench sae-train`.

sparsify trains by hooking a live `transformers` model: its `Trainer` registers a forward hook
on a layer module, runs the model over batches of token windows (its batch counts sequences)
and trains a TopK SAE on the layer's output with its FVU loss, its default optimizer (signSGD
under a schedule-free wrapper, lr 5e-3 / sqrt(latents / 2^14)), its fused encoder (the backward
touches only the k selected latents) and its sparse decoder (Triton, or `F.embedding_bag` when
Triton is missing or `SPARSIFY_DISABLE_TRITON=1`).

Two ways to feed it, both running sparsify's own `Trainer.fit` unchanged:

- live (its normal mode): the lab LM exported to transformers (`export_hf`, GPT-2 or Llama
  layout) and loaded with `AutoModel.from_pretrained` as sparsify's CLI does; the hook sits on
  the block whose output is our `blocks.L.hook_resid_post`. BOS/EOS positions are excluded
  (`exclude_tokens`), as our trainer and sae-lens exclude them.
- cache: sparsify cannot read an activation cache, so a harness of ours stands in for the model:
  `ReplayModel`, a "transformers-like" module whose one layer returns rows of our cached
  activations (input_ids are row numbers). Everything else (SAE, loss, optimizer, AuxK
  bookkeeping, saving) is sparsify's.

AuxK is switched on with our trainer's settings (alpha 1/32, dead after the same token window;
sparsify's defaults are alpha 0 and 10M tokens, longer than a benchmark run).

    sparsify = import_sparsify("cpu")
    result = train_sparsify_live(hf_dir, windows, layer, special_ids, settings, workdir)
    result = train_sparsify_cache(store, settings, workdir)
    result["sae"].encode(x)  # [n, latents] dense codes; .decode(codes) -> [n, d_in]
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from workbench.errors import InvalidInputError, NotFoundError

INSTALL_HINT = (
    "install the bench extra: pip install -e '.[bench]' (on a CPU-only torch, "
    "`pip install --no-deps eai-sparsify==1.3.3 natsort schedulefree` keeps your torch)")


def import_sparsify(device: str = "cpu"):
    """The `sparsify` package. On CPU its Triton decoder (GPU only) is turned off through
    `SPARSIFY_DISABLE_TRITON=1` before the first import; NotFoundError (with the install
    command) when it is not installed."""
    if device == "cpu":
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its decoder choice
            import sparsify
            import sparsify.sparse_coder
    except ImportError as exc:
        raise NotFoundError(f"sparsify is not installed ({exc}); {INSTALL_HINT}") from exc
    if device == "cpu" and decoder_name(sparsify) == "triton_decode":
        raise InvalidInputError(
            "sparsify was imported with its Triton decoder, which needs a GPU; run with "
            "SPARSIFY_DISABLE_TRITON=1 (or unset SPARSIFY_DISABLE_TRITON=0) on a CPU")
    return sparsify


def decoder_name(sparsify) -> str:
    """"eager_decode" (F.embedding_bag) or "triton_decode": the decoder sparsify picked."""
    return sparsify.sparse_coder.decoder_impl.__name__


def describe_sparsify(device: str = "cpu") -> str:
    """One line: version and decoder path, e.g. for the report."""
    sparsify = import_sparsify(device)
    decoder = decoder_name(sparsify)
    how = ("eager F.embedding_bag decoder, SPARSIFY_DISABLE_TRITON="
           f"{os.environ.get('SPARSIFY_DISABLE_TRITON', '')}" if decoder == "eager_decode"
           else "Triton decoder")
    return f"eai-sparsify {sparsify.__version__} ({how})"


@dataclass
class SparsifySettings:
    """The benchmark's SAE in sparsify's terms.

    batch_tokens: tokens per step (a multiple of seq_len: sparsify's batch counts sequences);
    dead_tokens: AuxK's dead window in tokens; lr None = sparsify's default for `latents`.
    """

    latents: int = 4096
    k: int = 32
    batch_tokens: int = 4096
    tokens: int = 2_000_000
    seq_len: int = 128
    seed: int = 0
    auxk_alpha: float = 1.0 / 32
    dead_tokens: int = 200_000
    lr: float | None = None

    @property
    def seqs_per_step(self) -> int:
        if self.batch_tokens % self.seq_len:
            raise InvalidInputError(
                f"sparsify's batch counts sequences: --batch-size {self.batch_tokens} must be a "
                f"multiple of the context size {self.seq_len}")
        return self.batch_tokens // self.seq_len

    def default_lr(self) -> float:
        """sparsify's signum default: 5e-3 / sqrt(latents / 2^14)."""
        return 5e-3 / (self.latents / 2**14) ** 0.5


class SparsifySAE:
    """A trained sparsify SAE with the interface `bench_train.evaluate` reads.

    encode(x [n, d_in]) -> dense codes [n, latents] (the top-k values at their indices, zeros
    elsewhere); decode(codes) -> [n, d_in] = codes @ W_dec + b_dec (sparsify's decode).
    """

    def __init__(self, coder):
        self.coder = coder.eval()
        self.cfg = SimpleNamespace(d_sae=coder.num_latents, d_in=coder.d_in)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        top_acts, top_indices, _ = self.coder.encode(x)
        codes = x.new_zeros(x.shape[0], self.cfg.d_sae)
        return codes.scatter_(1, top_indices, top_acts.to(codes.dtype))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.coder.W_dec + self.coder.b_dec


# ----------------------------------------------------------------------------------------------
# the cache harness


class _RowLookup(nn.Module):
    """The replay model's one "layer": row numbers [b, t] -> cached activations [b, t, d_in]."""

    def __init__(self, acts: torch.Tensor):
        super().__init__()
        self.acts = acts

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.acts[input_ids]


class ReplayModel(nn.Module):
    """Stands in for a `transformers` model in sparsify's Trainer: `layers.0` outputs rows of
    `acts` [N, d_in] for input_ids holding row numbers [b, t]. It has what the Trainer reads:
    config.num_hidden_layers, base_model, device, dummy_inputs and a forward."""

    def __init__(self, acts: torch.Tensor):
        super().__init__()
        self.layers = nn.ModuleList([_RowLookup(acts)])
        self.config = SimpleNamespace(num_hidden_layers=1)
        self._device = acts.device

    @property
    def base_model(self) -> ReplayModel:
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.zeros(1, 2, dtype=torch.long)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers[0](input_ids)


class _RowWindows(torch.utils.data.Dataset):
    """Sequence i = rows [start_i, start_i + seq_len) of the cache, as {"input_ids": [seq_len]}."""

    def __init__(self, starts: torch.Tensor, seq_len: int):
        self.starts, self.seq_len = starts, seq_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[i])
        return {"input_ids": torch.arange(start, start + self.seq_len)}


def replay_starts(n_rows: int, settings: SparsifySettings) -> torch.Tensor:
    """First rows of the training sequences: the cache cut into seq_len-row sequences, in a
    seeded random order (sparsify shuffles its dataset by sequence and does not reshuffle),
    repeated in new orders when the cache holds fewer than the budget's steps need."""
    available = n_rows // settings.seq_len
    if available < settings.seqs_per_step:
        raise InvalidInputError(
            f"the cache holds {n_rows} tokens, fewer than one batch ({settings.batch_tokens})")
    needed = settings.tokens // settings.batch_tokens * settings.seqs_per_step
    generator = torch.Generator().manual_seed(settings.seed)
    orders = [torch.randperm(available, generator=generator)
              for _ in range(-(-needed // available))]
    return torch.cat(orders)[:needed] * settings.seq_len


# ----------------------------------------------------------------------------------------------
# training


def train_config(sparsify, settings: SparsifySettings, layer: int, exclude: list[int],
                 save_dir: Path, run_name: str):
    """sparsify's TrainConfig for the benchmark's SAE at layer index `layer`."""
    return sparsify.TrainConfig(
        sparsify.SaeConfig(num_latents=settings.latents, k=settings.k),
        batch_size=settings.seqs_per_step, loss_fn="fvu", lr=settings.lr,
        auxk_alpha=settings.auxk_alpha, dead_feature_threshold=settings.dead_tokens,
        exclude_tokens=list(exclude), layers=[layer], init_seeds=[settings.seed],
        save_every=10**9, log_to_wandb=False, save_dir=str(save_dir), run_name=run_name)


@contextlib.contextmanager
def _quiet():
    """sparsify's prints and progress bars (and transformers' loading bars) go to a buffer; it
    is shown only when training fails. fit() sets the float32 matmul precision process-wide to
    "high"; it is put back."""
    log, precision = io.StringIO(), torch.get_float32_matmul_precision()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    except Exception as exc:
        tail = log.getvalue()[-2000:]
        if tail:
            exc.add_note(f"sparsify's output before the error:\n{tail}")
        raise
    finally:
        torch.set_float32_matmul_precision(precision)


def _fit(sparsify, cfg, dataset, model) -> str:
    """Run sparsify's Trainer -> the hookpoint it trained on (e.g. "h.1")."""
    trainer = sparsify.Trainer(cfg, dataset, model)
    trainer.fit()
    return trainer.cfg.hookpoints[0]


def _load_trained(sparsify, save_dir: Path, run_name: str, hookpoint: str) -> SparsifySAE:
    # the saved weights are the schedule-free average (the Trainer saves in eval mode); the
    # in-memory ones after fit() are the optimizer's train-mode point
    path = save_dir / run_name / hookpoint
    return SparsifySAE(sparsify.SparseCoder.load_from_disk(path, device="cpu"))


def text_token_counts(windows: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """Per window [n] -> the number of positions that are not BOS/EOS (what is trained on)."""
    if not special_ids:
        return torch.full((windows.shape[0],), windows.shape[1])
    return (~torch.isin(windows, torch.tensor(special_ids))).sum(1)


def live_windows_for_budget(windows: torch.Tensor, special_ids: list[int],
                            settings: SparsifySettings) -> torch.Tensor:
    """The first whole batches of windows [n, seq_len] whose text tokens reach the budget. When
    the windows hold fewer text tokens than that (a small corpus), they are passed over again,
    each further pass in a new seeded order, as the other trainers make several passes."""
    per_step = settings.seqs_per_step
    if windows.shape[0] < per_step:
        raise InvalidInputError(f"fewer than one batch of windows ({per_step}) to train on")
    per_pass = int(text_token_counts(windows, special_ids).sum())
    generator = torch.Generator().manual_seed(settings.seed)
    passes = [windows] + [windows[torch.randperm(windows.shape[0], generator=generator)]
                          for _ in range(-(-settings.tokens // max(1, per_pass)) - 1)]
    stream = torch.cat(passes)
    text = text_token_counts(stream, special_ids).cumsum(0)
    reached = int(torch.searchsorted(text, torch.tensor(settings.tokens))) + 1
    n = min(-(-reached // per_step) * per_step, stream.shape[0] // per_step * per_step)
    return stream[:n]


def train_sparsify_live(hf_dir: str | os.PathLike, windows: torch.Tensor, layer: int,
                        special_ids: list[int], settings: SparsifySettings, workdir: Path,
                        run_name: str = "sparsify-live") -> dict[str, Any]:
    """sparsify's Trainer on the exported model in `hf_dir` over token windows [n, seq_len]
    (BOS-led), hooked at block `layer`'s output. -> {"sae", "seconds", "tokens", "steps",
    "hookpoint"}; seconds covers the Trainer's set-up, training and saving (the model is loaded
    and the dataset built before, as the other trainers are handed theirs)."""
    import datasets
    from transformers import AutoModel

    sparsify = import_sparsify("cpu")
    used = live_windows_for_budget(windows, special_ids, settings)
    cfg = train_config(sparsify, settings, layer, special_ids, workdir, run_name)
    with _quiet():  # as the other trainers get theirs: the model and dataset before the clock
        model = AutoModel.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        dataset = datasets.Dataset.from_dict({"input_ids": used.tolist()}).with_format("torch")
        start = time.perf_counter()
        hookpoint = _fit(sparsify, cfg, dataset, model)
        seconds = time.perf_counter() - start
    return {"sae": _load_trained(sparsify, workdir, run_name, hookpoint), "seconds": seconds,
            "tokens": int(text_token_counts(used, special_ids).sum()),
            "steps": used.shape[0] // settings.seqs_per_step, "hookpoint": hookpoint}


def train_sparsify_cache(store: Any, settings: SparsifySettings, workdir: Path,
                         run_name: str = "sparsify-cache") -> dict[str, Any]:
    """sparsify's Trainer over cached activations (an ActivationStore, or a tensor [N, d_in])
    through `ReplayModel`. -> {"sae", "seconds", "tokens", "steps", "hookpoint"}; seconds
    covers reading the cache into memory (ours and sae-lens read theirs while training), the
    Trainer's set-up, training and saving."""
    sparsify = import_sparsify("cpu")
    n_rows = store.shape[0] if isinstance(store, torch.Tensor) else store.n_tokens
    starts = replay_starts(n_rows, settings)
    cfg = train_config(sparsify, settings, 0, [], workdir, run_name)
    start = time.perf_counter()
    acts = store.float() if isinstance(store, torch.Tensor) else store.read(0, n_rows)
    with _quiet():
        hookpoint = _fit(sparsify, cfg, _RowWindows(starts, settings.seq_len), ReplayModel(acts))
    seconds = time.perf_counter() - start
    steps = len(starts) // settings.seqs_per_step
    return {"sae": _load_trained(sparsify, workdir, run_name, hookpoint), "seconds": seconds,
            "tokens": steps * settings.batch_tokens, "steps": steps, "hookpoint": hookpoint}
