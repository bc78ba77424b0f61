"""Benchmarks: LangFIR end to end, and what steering adds to generation time.

    figures = bench_langfir(lab, model="default-lm", sae="default-topk", corpus="default-corpus")
    figures = bench_generation(lab, vector="default-langfir-de-langfir")
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from steering.generation import GenerationConfig, generate
from steering.langfir import LangFIRConfig, run_langfir
from steering.making import make_report_vectors
from steering.vectors import SteeringVector
from workbench.lab import Lab

_SCRATCH = "bench-langfir-scratch"


def bench_langfir(lab: Lab, model: str, sae: str, corpus: str,
                  config: LangFIRConfig | None = None) -> dict[str, Any]:
    """Wall time of a whole LangFIR run (load, statistics, register check, ablation matrix,
    report) plus all its steering vectors; the scratch artifacts are removed afterwards."""
    for name in [a.name for a in lab.list() if a.name.startswith(_SCRATCH)]:
        lab.remove(name)
    t0 = time.perf_counter()
    run_langfir(lab, _SCRATCH, model, sae, corpus, config=config or LangFIRConfig(),
                device="cpu")
    t1 = time.perf_counter()
    vectors = make_report_vectors(lab, _SCRATCH)
    t2 = time.perf_counter()
    timings = lab.get(_SCRATCH).manifest.get("metrics", {})
    from steering.langfir import load_report

    inner = load_report(lab, _SCRATCH).meta["timings"]
    for name in [a.name for a in lab.list() if a.name.startswith(_SCRATCH)]:
        lab.remove(name)
    return {"langfir_s": t1 - t0, "vectors_s": t2 - t1, "end_to_end_s": t2 - t0,
            "n_vectors": len(vectors), "statistics_s": inner.get("statistics_s"),
            "guide_s": inner.get("guide_s"), "ablation_s": inner.get("ablation_s"),
            "discover_s": inner.get("total_s"), "threads": torch.get_num_threads(),
            "_metrics": timings}


def bench_generation(lab: Lab, vector: str, n_prompts: int = 8, max_new_tokens: int = 32,
                     repeats: int = 5, use_cache: bool = True) -> dict[str, Any]:
    """Time of greedy batched generation of exactly max_new_tokens tokens (no stop at EOS) with
    and without the vector, interleaved repeats: the minimum and median wall time and the
    median process CPU time (steadier than wall time on a loaded machine), each with the
    steering overhead in percent."""
    from workbench.models.loading import load_model

    vec = SteeringVector.from_lab(lab, vector)
    model = load_model(vec.model, lab=lab, device="cpu")
    prompts = [f"Prompt number {i} says" for i in range(n_prompts)]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, use_cache=use_cache, stop_at_eos=False)
    generate(model, prompts, config=cfg)  # warm up
    generate(model, prompts, vec, config=cfg)
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "steered": []}
    for _ in range(repeats):
        for key, vector_or_none in (("plain", None), ("steered", vec)):
            wall, cpu = time.perf_counter(), time.process_time()
            generate(model, prompts, vector_or_none, config=cfg)
            runs[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    out: dict[str, Any] = {"vector": vector, "prompts": n_prompts, "new_tokens": max_new_tokens,
                           "repeats": repeats, "kv_cache": use_cache,
                           "threads": torch.get_num_threads()}
    for stat, pick in (("min_wall", lambda r: min(w for w, _ in r)),
                       ("median_wall", lambda r: statistics.median(w for w, _ in r)),
                       ("median_cpu", lambda r: statistics.median(c for _, c in r))):
        p, s = pick(runs["plain"]), pick(runs["steered"])
        out[f"unsteered_{stat}_s"], out[f"steered_{stat}_s"] = p, s
        out[f"overhead_{stat}_pct"] = 100.0 * (s - p) / p
    return out
