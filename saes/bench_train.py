"""`workbench bench sae-train --vs sae-lens`: our SAE trainer against sae-lens's, same SAE, same data.

The SAE: TopK, d_in = the model's width at the hook (256 for the `small` preset), 4096 latents,
k = 32, batch 4096, same warm-up/decay schedule, same token budget. Each trainer uses its own
default learning rate (ours: `SAETrainConfig` default, 2e-3 for 4096 latents; sae-lens: its
default 3e-4, which its 0.1-norm decoder init and decoder-norm rescaling turn into a larger
effective rate), because one number means different step sizes in the two parametrizations.
Two modes, run in one go:

- cache: both train from the same cached activations (ours: the lab's activation shards;
  sae-lens: the same rows written in its cached-activations format, a Hugging Face dataset with
  one [context_size, d_in] array per row, read by its ActivationsStore);
- live: both run the same model over the same token windows of the corpus (sae-lens: its
  ActivationsStore over the pre-tokenized windows; ours: `live_source`).

Both SAEs are evaluated the same way on the same held-out activations (validation split):
NMSE = mean over tokens of ||x - x_hat||^2 / ||x||^2, dead fraction = share of latents that
never fire on those tokens, L0. Throughput = training tokens / wall-clock seconds of the whole
training call (data, model forward, optimizer, saving).

The machine's dense matmul rate is measured in the same run on the encoder's shape
[batch x d_in] @ [d_in x latents] (at the start and before each mode; the fastest counts, so a
busy moment cannot flatter the share below). Encoder-matmul bound: the tokens/s of a step that did
nothing but the three dense matmuls of a linear encoder layer (forward, grad of the input,
grad of the weights), i.e. batch / (3 * t_matmul); we report the share of it our trainer reaches
in cache mode (our step runs one dense matmul; the backward touches only the k selected latents).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Lab


@dataclass
class BenchTrainConfig:
    tokens: int = 2_000_000
    modes: tuple[str, ...] = ("cache", "live")
    model: str | None = None
    corpus: str | None = None
    latents: int = 4096
    k: int = 32
    batch_size: int = 4096
    eval_tokens: int = 65536
    context_size: int = 128
    threads: int | None = None
    seed: int = 0
    sae_lens_lr: float = 3e-4  # sae-lens's LanguageModelSAERunnerConfig default


# ----------------------------------------------------------------------------------------------
# machine


def measure_matmul(rows: int, d_in: int, latents: int, repeats: int = 7) -> dict[str, float]:
    """Best time of torch.mm([rows x d_in] @ [d_in x latents]) in float32 -> ms and GFLOP/s."""
    a, b = torch.randn(rows, d_in), torch.randn(d_in, latents)
    out = torch.empty(rows, latents)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return {"matmul_ms": best * 1e3, "matmul_gflops": 2 * rows * d_in * latents / best / 1e9}


# ----------------------------------------------------------------------------------------------
# model, corpus, data


def pick_model(lab: Lab, name: str | None, width: int = 256):
    """(model, description): the named lab model, else a lab model with d_model == width, else a
    randomly initialized `small`-preset HookedTransformer with the lab's tokenizer."""
    from workbench.models.loading import load_model

    if name:
        return load_model(name, lab=lab, device="cpu"), f"lab model {name!r}"
    for art in reversed(lab.list("model")):
        model_cfg = art.path / "config.json"  # HookedTransformerConfig fields (model_io.py)
        if not model_cfg.exists() or json.loads(model_cfg.read_text()).get("d_model") != width:
            continue
        model = load_model(art.name, lab=lab, device="cpu")
        if int(model.cfg.d_model) == width:
            return model, f"lab model {art.name!r} ({model.cfg.n_layers} x {model.cfg.d_model})"
    from workbench.models.architectures import quiet_hooked_transformer
    from workbench.models.presets import lm_config
    from workbench.models.tokenizer import load_tokenizer

    tokenizers = lab.list("tokenizer")
    if not tokenizers:
        raise NotFoundError(
            "the benchmark needs a corpus and a tokenizer in the lab (and ideally the `small` LM); "
            "build them with `workbench demo` or `workbench data build` + `workbench lm train`"
        )
    tokenizer = load_tokenizer(lab, tokenizers[-1].name)
    torch.manual_seed(0)
    model = quiet_hooked_transformer(lm_config("small", d_vocab=len(tokenizer)), tokenizer)
    return model.eval(), "randomly initialized HookedTransformer (small preset, 4 x 256)"


def pick_corpus(lab: Lab, name: str | None):
    from workbench.data.store import load_corpus

    if name:
        return load_corpus(lab, name)
    corpora = lab.list("corpus")
    if not corpora:
        raise NotFoundError("no corpus in the lab; build one with `workbench data build`")
    return load_corpus(lab, corpora[0].name)


def token_windows(model, corpus, n_tokens: int, context_size: int) -> torch.Tensor:
    """The first windows [n, context_size] (BOS-led, documents packed) covering n_tokens."""
    from workbench.activations.live import iter_documents
    from workbench.activations.windows import iter_window_batches

    rows, total = [], 0
    documents = iter_documents(corpus, "train", True, 0)
    for windows in iter_window_batches(model.tokenizer, documents, context_size, 64):
        rows.append(windows.tokens)
        total += windows.tokens.numel()
        if total >= n_tokens:
            break
    return torch.cat(rows)


def write_sae_lens_cache(store, hook: str, context_size: int, folder: Path) -> Path:
    """The activations of `store` in sae-lens's cached-activations format (HF dataset, one
    [context_size, d_in] float32 array per row), written shard by shard."""
    import datasets

    features = datasets.Features(
        {hook: datasets.Array2D(shape=(context_size, store.d_in), dtype="float32")})
    per_row = context_size

    def rows():
        start = 0
        n = store.n_tokens // per_row * per_row
        while start < n:
            stop = min(n, start + 256 * per_row)
            block = store.read(start, stop).numpy().reshape(-1, per_row, store.d_in)
            for row in block:
                yield {hook: row}
            start = stop

    dataset = datasets.Dataset.from_generator(rows, features=features)
    dataset.save_to_disk(str(folder))
    return folder


# ----------------------------------------------------------------------------------------------
# the two trainers


def our_train_config(cfg: BenchTrainConfig, name: str = "bench"):
    """Our trainer's SAETrainConfig for the benchmark's SAE (its schedule, lr and dead window
    also set sae-lens's schedule)."""
    from saes.training import SAETrainConfig

    return SAETrainConfig(name=name, arch="topk", latents=cfg.latents, k=cfg.k,
                          tokens=cfg.tokens, batch_size=cfg.batch_size, seed=cfg.seed)


def run_ours(lab: Lab, cfg: BenchTrainConfig, source: Any, name: str) -> dict[str, Any]:
    from saes.interop import load_sae
    from saes.training import train_saes

    train_cfg = our_train_config(cfg, name)
    start = time.perf_counter()
    train_saes(lab, [train_cfg], source, overwrite=True, restart=True, device="cpu",
               progress=False)
    seconds = time.perf_counter() - start
    steps = cfg.tokens // cfg.batch_size
    return {"sae": load_sae(name, lab=lab, device="cpu"), "seconds": seconds,
            "tokens": steps * cfg.batch_size}


def run_sae_lens(cfg: BenchTrainConfig, model, hook: str, d_in: int, windows: torch.Tensor,
                 cached_path: Path | None, workdir: Path) -> dict[str, Any]:
    """sae-lens's own trainer (LanguageModelSAETrainingRunner) on the same data and schedule."""
    import datasets
    from sae_lens import (
        SAE,
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )

    ours = our_train_config(cfg).resolved(d_in)
    steps = cfg.tokens // cfg.batch_size
    bos = model.tokenizer.bos_token_id
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.latents, k=cfg.k,
                                  normalize_activations="expected_average_only_in"),
        model_name=getattr(model.cfg, "model_name", "model"), hook_name=hook,
        dataset_path="workbench-windows", is_dataset_tokenized=True, streaming=False,
        context_size=cfg.context_size, prepend_bos=False, sequence_separator_token=None,
        exclude_special_tokens=[bos] if bos is not None else False,
        use_cached_activations=cached_path is not None,
        cached_activations_path=str(cached_path) if cached_path else None,
        training_tokens=steps * cfg.batch_size, train_batch_size_tokens=cfg.batch_size,
        store_batch_size_prompts=32, n_batches_in_buffer=64,
        lr=cfg.sae_lens_lr, lr_warm_up_steps=max(1, int(ours.warmup_tokens) // cfg.batch_size),
        lr_decay_steps=round(ours.decay_fraction * steps),
        dead_feature_window=max(1, int(ours.dead_window_tokens) // cfg.batch_size),
        feature_sampling_window=max(1, int(ours.dead_window_tokens) // cfg.batch_size),
        n_batches_for_norm_estimate=1, device="cpu", seed=cfg.seed, dtype="float32",
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None,
        output_path=None, verbose=False,
    )
    dataset = datasets.Dataset.from_dict({"input_ids": windows.tolist()})
    start = time.perf_counter()
    runner = LanguageModelSAETrainingRunner(runner_cfg, override_model=model,
                                            override_dataset=dataset)
    trained = runner.run()
    seconds = time.perf_counter() - start
    out = workdir / "sae_lens_sae"
    shutil.rmtree(out, ignore_errors=True)
    trained.save_inference_model(out)
    return {"sae": SAE.load_from_disk(out, device="cpu").eval(), "seconds": seconds,
            "tokens": steps * cfg.batch_size}


# ----------------------------------------------------------------------------------------------
# evaluation and report


@torch.no_grad()
def evaluate(sae, x: torch.Tensor, chunk: int = 8192) -> dict[str, float]:
    """NMSE, L0 and dead fraction of an inference SAE on activations x [n, d_in]."""
    nmse_sum, l0_sum = 0.0, 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        f = sae.encode(xb)
        x_hat = sae.decode(f)
        nmse_sum += float(((xb - x_hat).pow(2).sum(1) / xb.pow(2).sum(1).clamp_min(1e-12)).sum())
        active = f != 0
        l0_sum += float(active.sum())
        fired |= active.any(0)
    n = x.shape[0]
    return {"nmse": nmse_sum / n, "l0": l0_sum / n, "dead_fraction": float((~fired).float().mean())}


def run_benchmark(lab: Lab, cfg: BenchTrainConfig, echo: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Run both trainers in every mode; returns the report (see format_report)."""
    from saes.training import live_source
    from workbench.activations import cache_activations, collect_activations

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.tokens < cfg.batch_size:
        raise InvalidInputError(f"--tokens must be at least one batch ({cfg.batch_size})")
    model, model_desc = pick_model(lab, cfg.model)
    corpus = pick_corpus(lab, cfg.corpus)
    hook = f"blocks.{max(0, model.cfg.n_layers // 2 - 1)}.hook_resid_post"
    d_in = int(model.cfg.d_model)
    echo(f"model: {model_desc}; hook {hook}; corpus {corpus.name!r}; d_in {d_in}")
    timings = [measure_matmul(cfg.batch_size, d_in, cfg.latents)]
    heldout = collect_activations(model, hook, corpus, cfg.eval_tokens, split="validation",
                                  context_size=cfg.context_size).acts.float()
    windows = token_windows(model, corpus, int(cfg.tokens * 1.1) + 4 * cfg.batch_size,
                            cfg.context_size)
    work = Path(tempfile.mkdtemp(prefix="bench-sae-train-"))
    runs: list[dict[str, Any]] = []
    try:
        for mode in cfg.modes:
            if mode == "cache":
                echo("caching activations (shared by both trainers) ...")
                acts_name = "bench-sae-train-acts"
                store = cache_activations(lab, acts_name, model, hook, corpus,
                                          cfg.tokens + 8 * cfg.batch_size,
                                          context_size=cfg.context_size, overwrite=True,
                                          progress=False)
                cached = write_sae_lens_cache(store, hook, cfg.context_size, work / "sae_lens_cache")
                ours_source, lens_cache = acts_name, cached
                echo(f"[cache] {store.n_tokens} distinct tokens cached (the corpus may hold fewer "
                     f"than {cfg.tokens}; then both trainers make several passes)")
            else:
                ours_source, lens_cache = live_source(lab, model, hook, corpus.name,
                                                      cfg.context_size), None
            timings.append(measure_matmul(cfg.batch_size, d_in, cfg.latents))
            echo(f"[{mode}] training with our trainer ...")
            ours = run_ours(lab, cfg, ours_source, f"bench-sae-train-ours-{mode}")
            echo(f"[{mode}] training with sae-lens ...")
            lens = run_sae_lens(cfg, model, hook, d_in, windows, lens_cache, work)
            for trainer, result in (("ours", ours), ("sae-lens", lens)):
                runs.append({"mode": mode, "trainer": trainer, "tokens": result["tokens"],
                             "seconds": result["seconds"],
                             "tokens_per_s": result["tokens"] / result["seconds"],
                             **evaluate(result["sae"], heldout)})
            echo(f"[{mode}] ours {runs[-2]['tokens_per_s']:.0f} tok/s, sae-lens "
                 f"{runs[-1]['tokens_per_s']:.0f} tok/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine = min(timings, key=lambda m: m["matmul_ms"])  # the least disturbed measurement
    bound = cfg.batch_size / (3 * machine["matmul_ms"] / 1e3)
    ours_cache = next((r for r in runs if r["mode"] == "cache" and r["trainer"] == "ours"), None)
    return {
        "config": asdict(cfg),
        "model": model_desc,
        "hook": hook,
        "d_in": d_in,
        "threads": torch.get_num_threads(),
        "lr": {"ours": float(our_train_config(cfg).resolved(d_in).lr),
               "sae-lens": cfg.sae_lens_lr},
        **machine,
        "matmul_ms_measurements": [round(m["matmul_ms"], 2) for m in timings],
        "encoder_bound_tokens_per_s": bound,
        "bound_definition": (
            f"batch / (3 x t_mm), t_mm = time of one dense [{cfg.batch_size} x {d_in}] @ "
            f"[{d_in} x {cfg.latents}] float32 matmul: the tokens/s of a step whose only cost "
            "is a dense encoder's forward, input-grad and weight-grad matmuls"),
        "ours_share_of_bound": (ours_cache["tokens_per_s"] / bound) if ours_cache else None,
        "runs": runs,
        "speedup": {mode: _ratio(runs, mode) for mode in cfg.modes},
    }


def _ratio(runs: list[dict[str, Any]], mode: str) -> float:
    by = {r["trainer"]: r["tokens_per_s"] for r in runs if r["mode"] == mode}
    return by["ours"] / by["sae-lens"]


def format_report(report: dict[str, Any]) -> str:
    lines = [
        (f"model: {report['model']}, hook {report['hook']}, d_in {report['d_in']}, "
         f"threads {report['threads']}"),
        (f"learning rates: ours {report['lr']['ours']:.2g}, sae-lens {report['lr']['sae-lens']:.2g} "
         "(each trainer's default)"),
        (f"dense matmul [{report['config']['batch_size']} x {report['d_in']}] @ "
         f"[{report['d_in']} x {report['config']['latents']}]: {report['matmul_ms']:.1f} ms = "
         f"{report['matmul_gflops']:.1f} GFLOP/s (best of {report['matmul_ms_measurements']} ms)"),
        "",
        (f"{'mode':6} {'trainer':9} {'tokens':>9} {'seconds':>9} {'tokens/s':>10} {'NMSE':>8} "
         f"{'L0':>6} {'dead':>6}"),
    ]
    for r in report["runs"]:
        lines.append(f"{r['mode']:6} {r['trainer']:9} {r['tokens']:>9} {r['seconds']:>9.1f} "
                     f"{r['tokens_per_s']:>10.0f} {r['nmse']:>8.4f} {r['l0']:>6.1f} "
                     f"{r['dead_fraction']:>6.3f}")
    lines.append("")
    for mode, ratio in report["speedup"].items():
        lines.append(f"speedup ({mode}): ours / sae-lens = {ratio:.2f}x")
    lines.append(f"encoder-matmul bound: {report['encoder_bound_tokens_per_s']:.0f} tokens/s "
                 f"({report['bound_definition']})")
    if report["ours_share_of_bound"] is not None:
        lines.append(f"our trainer (cache mode) reaches {100 * report['ours_share_of_bound']:.0f}% "
                     "of that bound")
    return "\n".join(lines)
