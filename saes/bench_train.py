"""`workbench bench sae-train --vs sae-lens,sparsify`: our SAE trainer against sae-lens's and
EleutherAI sparsify's, same SAE, same data.

The SAE: TopK, d_in = the model's width at the hook (256 for the `small` preset), 4096 latents,
k = 32, batch 4096, AuxK on, same token budget. Rows:

- ours: `train_saes` with its defaults (Adam, lr `SAETrainConfig` default: 2e-3 at 4096 latents,
  linear warm-up and decay);
- sae-lens: its `LanguageModelSAETrainingRunner` on our warm-up/decay schedule, at its default
  lr (3e-4, which its 0.1-norm decoder init and decoder-norm rescaling turn into a larger
  effective rate) and, as the fair row "sae-lens@our-lr", at our lr (at its default a 2M-token run
  can end with most latents dead, so its NMSE alone would flatter us);
- sparsify: its own `Trainer.fit` with its own recipe (signSGD, schedule-free, lr 5e-3 /
  sqrt(latents / 2^14), FVU loss, fused encoder, eager `embedding_bag` decoder on CPU through
  SPARSIFY_DISABLE_TRITON=1), AuxK at our alpha and dead window (`bench_sparsify.py`).

Two modes, run in one go:

- cache: every trainer reads the same cached activations (ours: the lab's activation shards;
  sae-lens: the same rows written in its cached-activations format, a Hugging Face dataset with
  one [context_size, d_in] array per row, read by its ActivationsStore; sparsify, which has no
  cache mode: its Trainer over `ReplayModel`, a harness of ours whose hooked layer returns the
  cached rows);
- live: every trainer runs the same model over the same token windows of the corpus (sae-lens:
  its ActivationsStore over the pre-tokenized windows; ours: `live_source`; sparsify: the lab LM
  exported to transformers with `export_hf`, hooked at the same block's output, BOS/EOS
  excluded).

All SAEs are evaluated the same way on the same held-out activations (validation split):
NMSE = mean over tokens of ||x - x_hat||^2 / ||x||^2, dead fraction = share of latents that
never fire on those tokens, L0. Throughput = training tokens / wall-clock seconds of the whole
training call (data, model forward, optimizer, saving).

The machine's dense matmul rate is measured in the same run on the encoder's shape
[batch x d_in] @ [d_in x latents] (at the start and before each mode; the fastest counts, so a
busy moment cannot flatter the share below). Encoder-matmul bound: the tokens/s of a step that did
nothing but the three dense matmuls of a linear encoder layer (forward, grad of the input,
grad of the weights), i.e. batch / (3 * t_matmul); we report the share of it our trainer reaches
in cache mode (our step runs one dense matmul; the backward touches only the k selected latents).

Live-mode ceiling: the LM forward alone, in text tokens/s over the same windows (our forward up
to the hooked block, which ours and sae-lens run; the exported transformers model's full forward,
which sparsify runs because its hook cannot stop the model), and per trainer the pipeline bound
1 / (1 / forward + 1 / cache-mode rate): the live rate of a trainer that ran its forward and its
cache-mode step one after the other with no other cost. The share of it each trainer reaches is
reported (above 1 when the forward overlaps the step, as our prefetching thread lets it).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
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
    baselines: tuple[str, ...] = ("sae-lens",)
    sae_lens_lrs: tuple[str, ...] = ("default", "ours")  # sae-lens's default lr, and ours
    forward_tokens: int = 262_144  # tokens of the live-mode ceiling's forward measurement


BASELINES = ("sae-lens", "sparsify")
SAE_LENS_LRS = ("default", "ours")


def sae_lens_default_lr() -> float:
    """The `lr` default of sae-lens's LanguageModelSAERunnerConfig (3e-4 in sae-lens 6)."""
    import dataclasses

    from sae_lens import LanguageModelSAERunnerConfig

    return next(f.default for f in dataclasses.fields(LanguageModelSAERunnerConfig)
                if f.name == "lr")


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


def special_token_ids(tokenizer) -> list[int]:
    """BOS and EOS ids: the positions every trainer leaves out of training."""
    return sorted({int(i) for i in (tokenizer.bos_token_id, tokenizer.eos_token_id)
                   if i is not None})


@torch.no_grad()
def forward_rate(forward: Callable[[torch.Tensor], Any], windows: torch.Tensor,
                 special_ids: list[int], batch_windows: int, max_tokens: int) -> float:
    """Text tokens/s of `forward(batch [b, ctx])` over the first windows [n, ctx] covering
    max_tokens, batch_windows windows per call (one call first as a warm-up)."""
    from saes.bench_sparsify import text_token_counts

    n = min(windows.shape[0], max(batch_windows, -(-max_tokens // windows.shape[1])))
    used = windows[:n]
    forward(used[:batch_windows])
    start = time.perf_counter()
    for i in range(0, n, batch_windows):
        forward(used[i:i + batch_windows])
    seconds = time.perf_counter() - start
    return float(text_token_counts(used, special_ids).sum()) / seconds


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
                 cached_path: Path | None, workdir: Path, lr: float) -> dict[str, Any]:
    """sae-lens's own trainer (LanguageModelSAETrainingRunner) on the same data and schedule,
    at learning rate `lr`."""
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
        lr=lr, lr_warm_up_steps=max(1, int(ours.warmup_tokens) // cfg.batch_size),
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


def sparsify_settings(cfg: BenchTrainConfig, d_in: int):
    """The benchmark's SAE in sparsify's terms: AuxK at our alpha and dead window."""
    from saes.bench_sparsify import SparsifySettings

    ours = our_train_config(cfg).resolved(d_in)
    return SparsifySettings(latents=cfg.latents, k=cfg.k, batch_tokens=cfg.batch_size,
                            tokens=cfg.tokens, seq_len=cfg.context_size, seed=cfg.seed,
                            auxk_alpha=float(ours.aux_alpha),
                            dead_tokens=int(ours.dead_window_tokens))


def _check(cfg: BenchTrainConfig) -> None:
    if cfg.tokens < cfg.batch_size:
        raise InvalidInputError(f"--tokens must be at least one batch ({cfg.batch_size})")
    if not cfg.baselines or set(cfg.baselines) - set(BASELINES):
        raise InvalidInputError(f"--vs {','.join(cfg.baselines)!r}: use sae-lens, sparsify or "
                                "sae-lens,sparsify")
    if "sae-lens" in cfg.baselines and (not cfg.sae_lens_lrs
                                        or set(cfg.sae_lens_lrs) - set(SAE_LENS_LRS)):
        raise InvalidInputError(f"--sae-lens-lr {','.join(cfg.sae_lens_lrs)!r}: use default, "
                                "ours or default,ours")
    if "sparsify" in cfg.baselines and cfg.batch_size % cfg.context_size:
        raise InvalidInputError(
            f"sparsify's batch counts sequences of {cfg.context_size} tokens: use a --batch-size "
            f"that is a multiple of {cfg.context_size}")


def run_benchmark(lab: Lab, cfg: BenchTrainConfig, echo: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Run our trainer and each baseline in every mode; returns the report (see format_report)."""
    from saes.training import live_source
    from workbench.activations import cache_activations, collect_activations
    from workbench.activations.extract import hook_activations
    from workbench.activations.windows import default_model_batch_size

    _check(cfg)
    versions = {"torch": torch.__version__}
    if "sparsify" in cfg.baselines:  # fail before any work when it is missing
        from saes.bench_sparsify import describe_sparsify

        versions["sparsify"] = describe_sparsify("cpu")
    if "sae-lens" in cfg.baselines:
        import sae_lens

        versions["sae-lens"] = sae_lens.__version__
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, model_desc = pick_model(lab, cfg.model)
    corpus = pick_corpus(lab, cfg.corpus)
    layer = max(0, model.cfg.n_layers // 2 - 1)
    hook = f"blocks.{layer}.hook_resid_post"
    d_in = int(model.cfg.d_model)
    special = special_token_ids(model.tokenizer)
    our_lr = float(our_train_config(cfg).resolved(d_in).lr)
    lens_lrs = {"default": sae_lens_default_lr(), "ours": our_lr}
    echo(f"model: {model_desc}; hook {hook}; corpus {corpus.name!r}; d_in {d_in}")
    timings = [measure_matmul(cfg.batch_size, d_in, cfg.latents)]
    heldout = collect_activations(model, hook, corpus, cfg.eval_tokens, split="validation",
                                  context_size=cfg.context_size).acts.float()
    windows = token_windows(model, corpus, int(cfg.tokens * 1.1) + 4 * cfg.batch_size,
                            cfg.context_size)
    work = Path(tempfile.mkdtemp(prefix="bench-sae-train-"))
    runs: list[dict[str, Any]] = []
    forward: dict[str, float] = {}
    try:
        hf_dir = None
        if "sparsify" in cfg.baselines:
            from workbench.models.export_hf import export_hf

            hf_dir = work / "hf"
            export_hf(model, model.tokenizer, hf_dir)
        for mode in cfg.modes:
            trainers: list[tuple[str, float, Callable[[], dict[str, Any]]]] = []
            if mode == "cache":
                echo("caching activations (shared by all trainers) ...")
                acts_name = "bench-sae-train-acts"
                store = cache_activations(lab, acts_name, model, hook, corpus,
                                          cfg.tokens + 8 * cfg.batch_size,
                                          context_size=cfg.context_size, overwrite=True,
                                          progress=False)
                lens_cache = (write_sae_lens_cache(store, hook, cfg.context_size,
                                                   work / "sae_lens_cache")
                              if "sae-lens" in cfg.baselines else None)
                ours_source = acts_name
                passes = ("" if store.n_tokens >= cfg.tokens else
                          f"; the corpus holds fewer than {cfg.tokens}, so every trainer makes "
                          "several passes")
                echo(f"[cache] {store.n_tokens} distinct tokens cached{passes}")
            else:
                ours_source, lens_cache = live_source(lab, model, hook, corpus.name,
                                                      cfg.context_size), None
                forward["ours_to_hook"] = forward_rate(
                    lambda b: hook_activations(model, b, hook), windows, special,
                    default_model_batch_size(cfg.context_size, "cpu"), cfg.forward_tokens)
                if hf_dir is not None:
                    from transformers import AutoModel

                    hf_base = AutoModel.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
                    forward["hf_all_layers"] = forward_rate(
                        hf_base, windows, special, cfg.batch_size // cfg.context_size,
                        cfg.forward_tokens)
                    del hf_base
                echo("[live] LM forward alone: " + ", ".join(
                    f"{name} {rate:.0f} tok/s" for name, rate in forward.items()))
            trainers.append(("ours", our_lr, partial(
                run_ours, lab, cfg, ours_source, f"bench-sae-train-ours-{mode}")))
            if "sae-lens" in cfg.baselines:
                for which in cfg.sae_lens_lrs:
                    label = "sae-lens" if which == "default" else "sae-lens@our-lr"
                    trainers.append((label, lens_lrs[which], partial(
                        run_sae_lens, cfg, model, hook, d_in, windows, lens_cache, work,
                        lens_lrs[which])))
            if "sparsify" in cfg.baselines:
                from saes.bench_sparsify import train_sparsify_cache, train_sparsify_live

                settings = sparsify_settings(cfg, d_in)
                run = (partial(train_sparsify_cache, store, settings, work) if mode == "cache"
                       else partial(train_sparsify_live, hf_dir, windows, layer, special,
                                    settings, work))
                trainers.append(("sparsify", settings.default_lr(), run))
            timings.append(measure_matmul(cfg.batch_size, d_in, cfg.latents))
            for label, lr, train in trainers:
                echo(f"[{mode}] training with {label} ...")
                result = train()
                runs.append({"mode": mode, "trainer": label, "lr": lr,
                             "tokens": result["tokens"], "seconds": result["seconds"],
                             "tokens_per_s": result["tokens"] / result["seconds"],
                             **evaluate(result["sae"], heldout)})
                echo(f"[{mode}] {label}: {runs[-1]['tokens_per_s']:.0f} tok/s, NMSE "
                     f"{runs[-1]['nmse']:.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine = min(timings, key=lambda m: m["matmul_ms"])  # the least disturbed measurement
    bound = cfg.batch_size / (3 * machine["matmul_ms"] / 1e3)
    ours_cache = _rate(runs, "cache", "ours")
    return {
        "config": asdict(cfg),
        "model": model_desc,
        "hook": hook,
        "d_in": d_in,
        "threads": torch.get_num_threads(),
        "versions": versions,
        "lr": {r["trainer"]: float(r["lr"]) for r in runs},
        **machine,
        "matmul_ms_measurements": [round(m["matmul_ms"], 2) for m in timings],
        "encoder_bound_tokens_per_s": bound,
        "bound_definition": (
            f"batch / (3 x t_mm), t_mm = time of one dense [{cfg.batch_size} x {d_in}] @ "
            f"[{d_in} x {cfg.latents}] float32 matmul: the tokens/s of a step whose only cost "
            "is a dense encoder's forward, input-grad and weight-grad matmuls"),
        "ours_share_of_bound": (ours_cache / bound) if ours_cache else None,
        "runs": runs,
        "speedup": {mode: _ratios(runs, mode) for mode in cfg.modes},
        "live_ceiling": _live_ceiling(runs, forward) if "live" in cfg.modes else None,
    }


def _rate(runs: list[dict[str, Any]], mode: str, trainer: str) -> float | None:
    return next((r["tokens_per_s"] for r in runs
                 if r["mode"] == mode and r["trainer"] == trainer), None)


def _ratios(runs: list[dict[str, Any]], mode: str) -> dict[str, float]:
    """ours / baseline tokens/s per baseline row of `mode`."""
    ours = _rate(runs, mode, "ours")
    return {r["trainer"]: ours / r["tokens_per_s"] for r in runs
            if r["mode"] == mode and r["trainer"] != "ours"}


def _live_ceiling(runs: list[dict[str, Any]], forward: dict[str, float]) -> dict[str, Any]:
    """The LM forward alone and, per trainer with a cache and a live row, the pipeline bound
    1 / (1 / forward + 1 / cache rate) and the share of it its live rate reaches."""
    pipeline = {}
    for r in runs:
        if r["mode"] != "live":
            continue
        fwd = forward.get("hf_all_layers" if r["trainer"] == "sparsify" else "ours_to_hook")
        cache = _rate(runs, "cache", r["trainer"])
        if fwd and cache:
            limit = 1 / (1 / fwd + 1 / cache)
            pipeline[r["trainer"]] = {"bound_tokens_per_s": limit,
                                      "share": r["tokens_per_s"] / limit}
    return {"forward_tokens_per_s": forward, "pipeline": pipeline}


FORWARD_NAMES = {"ours_to_hook": "our forward up to the hooked block (ours, sae-lens)",
                 "hf_all_layers": "transformers forward, all blocks (sparsify)"}


def format_report(report: dict[str, Any]) -> str:
    lr = report["lr"]
    lines = [
        (f"model: {report['model']}, hook {report['hook']}, d_in {report['d_in']}, "
         f"threads {report['threads']}"),
        "versions: " + ", ".join(f"{k} {v}" if k != "sparsify" else v
                                 for k, v in report.get("versions", {}).items()),
        ("learning rates: " + ", ".join(f"{name} {value:.2g}" for name, value in lr.items())
         + " (each trainer's default" + ("; sae-lens@our-lr at ours)" if "sae-lens@our-lr" in lr
                                          else ")")),
        (f"dense matmul [{report['config']['batch_size']} x {report['d_in']}] @ "
         f"[{report['d_in']} x {report['config']['latents']}]: {report['matmul_ms']:.1f} ms = "
         f"{report['matmul_gflops']:.1f} GFLOP/s (best of {report['matmul_ms_measurements']} ms)"),
        "",
        (f"{'mode':6} {'trainer':16} {'lr':>7} {'tokens':>9} {'seconds':>9} {'tokens/s':>10} "
         f"{'NMSE':>8} {'L0':>6} {'dead':>6}"),
    ]
    for r in report["runs"]:
        mark = "*" if r["mode"] == "cache" and r["trainer"] == "sparsify" else ""
        lines.append(f"{r['mode']:6} {r['trainer'] + mark:16} {r['lr']:>7.2g} {r['tokens']:>9} "
                     f"{r['seconds']:>9.1f} {r['tokens_per_s']:>10.0f} {r['nmse']:>8.4f} "
                     f"{r['l0']:>6.1f} {r['dead_fraction']:>6.3f}")
    if any(r["mode"] == "cache" and r["trainer"] == "sparsify" for r in report["runs"]):
        lines.append("* sparsify has no cache mode: its own Trainer ran over a harness of ours "
                     "(ReplayModel, whose hooked layer returns the cached rows)")
    lines.append("")
    for mode, ratios in report["speedup"].items():
        for baseline, ratio in ratios.items():
            lines.append(f"speedup ({mode}): ours / {baseline} = {ratio:.2f}x")
    lines.append(f"encoder-matmul bound: {report['encoder_bound_tokens_per_s']:.0f} tokens/s "
                 f"({report['bound_definition']})")
    if report["ours_share_of_bound"] is not None:
        lines.append(f"our trainer (cache mode) reaches {100 * report['ours_share_of_bound']:.0f}% "
                     "of that bound")
    ceiling = report.get("live_ceiling")
    if ceiling:
        for name, rate in ceiling["forward_tokens_per_s"].items():
            lines.append(f"live ceiling: LM forward alone, {FORWARD_NAMES.get(name, name)}: "
                         f"{rate:.0f} tokens/s")
        for trainer, p in ceiling["pipeline"].items():
            lines.append(f"live pipeline bound for {trainer} (1 / (1/forward + 1/its cache "
                         f"rate)): {p['bound_tokens_per_s']:.0f} tokens/s; its live rate is "
                         f"{100 * p['share']:.0f}% of it")
    return "\n".join(lines)
