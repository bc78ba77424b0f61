"""Benchmark of the three analyses (`workbench analyze bench`).

Times `analyze_sparsity`, `analyze_attention` and `analyze_depth` on one model over `tokens`
evaluation tokens (default 100k, from the corpus' train split, which is long enough), each
in this process, and measures the attention metrics' peak resident memory at several token
counts, each in a fresh subprocess (peak RSS only grows within a process). Settings that bound
the work are part of the report: the PPL-p% searches run on `search_tokens` and stop within
`ppl_tol` percentage points of p; the attention what-if runs on `whatif_tokens`.

    python -m workbench.analysis.bench --memory-probe MODEL CORPUS SPLIT TOKENS LAB
prints the probe's JSON (used by the benchmark itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from workbench.lab import Lab

PARTS = ("sparsity", "attention", "depth", "memory")


@dataclass
class BenchConfig:
    model: str = "default-lm"
    corpus: str | None = None
    split: str = "train"
    tokens: int = 100_000
    search_tokens: int = 16384
    ppl_tol: float = 0.05
    whatif_tokens: int = 16384
    fit_tokens: int = 8192
    memory_tokens: tuple[int, ...] = (25_000, 100_000)
    parts: tuple[str, ...] = PARTS


def run_bench(lab: Lab, cfg: BenchConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; returns the report dict (see `format_report`)."""
    import torch

    from workbench.analysis.attention import AttentionConfig, analyze_attention
    from workbench.analysis.common import model_corpus, resolve_model
    from workbench.analysis.depth import DepthConfig, analyze_depth
    from workbench.analysis.sparsity import SparsityConfig, analyze_sparsity
    from workbench.errors import InvalidInputError

    unknown = set(cfg.parts) - set(PARTS)
    if unknown:
        raise InvalidInputError(f"unknown bench parts {sorted(unknown)}; choose from {PARTS}")
    model, name = resolve_model(cfg.model, lab)
    corpus = cfg.corpus or model_corpus(lab, name)
    report: dict[str, Any] = {"model": name, "corpus": corpus, "split": cfg.split,
                              "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                              "load_average": os.getloadavg()[0], "config": asdict(cfg)}
    if "sparsity" in cfg.parts:
        echo(f"[bench] sparsity over {cfg.tokens} tokens ...")
        t0, c0 = time.perf_counter(), time.process_time()
        res = analyze_sparsity(model, lab, SparsityConfig(
            corpus=corpus, split=cfg.split, n_tokens=cfg.tokens, search_tokens=cfg.search_tokens,
            ppl_tol=cfg.ppl_tol), progress=False)
        s = res["summary"]
        report["sparsity"] = {"seconds": time.perf_counter() - t0,
                              "cpu_seconds": time.process_time() - c0, "n_tokens": s["n_tokens"],
                              "evaluations": s["evaluations"],
                              "activation_ratio": s["activation_ratio"],
                              "ppl_ratio": s["ppl_ratio"], "cett_target": s["cett_target"]}
    if "attention" in cfg.parts:
        echo(f"[bench] attention over {cfg.tokens} tokens (what-if on {cfg.whatif_tokens}) ...")
        t0, c0 = time.perf_counter(), time.process_time()
        res = analyze_attention(model, lab, AttentionConfig(
            corpus=corpus, split=cfg.split, n_tokens=cfg.tokens,
            whatif_tokens=cfg.whatif_tokens), progress=False)
        s = res["summary"]
        report["attention"] = {"seconds": time.perf_counter() - t0,
                               "cpu_seconds": time.process_time() - c0, "n_tokens": s["n_tokens"],
                               "metrics_seconds": s["metrics_seconds"],
                               "class_counts": s["class_counts"]}
    if "depth" in cfg.parts:
        echo(f"[bench] depth over {cfg.tokens} tokens ...")
        t0, c0 = time.perf_counter(), time.process_time()
        res = analyze_depth(model, lab, DepthConfig(
            corpus=corpus, split=cfg.split, n_tokens=cfg.tokens, fit_tokens=cfg.fit_tokens),
            progress=False)
        s = res["summary"]
        report["depth"] = {"seconds": time.perf_counter() - t0,
                           "cpu_seconds": time.process_time() - c0, "n_tokens": s["n_tokens"],
                           "global_usefulness": s["global_usefulness"]}
    if "memory" in cfg.parts:
        report["memory"] = []
        for n in cfg.memory_tokens:
            echo(f"[bench] attention metrics peak RSS at {n} tokens (fresh process) ...")
            report["memory"].append(_memory_probe(lab, cfg.model, corpus, cfg.split, n))
    return report


def _memory_probe(lab: Lab, model: str, corpus: str | None, split: str, n: int) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run([sys.executable, "-m", "workbench.analysis.bench", "--memory-probe",
                          model, corpus or "", split, str(n), str(lab.root)],
                         capture_output=True, text=True, env=env, check=False, timeout=1800)
    if out.returncode != 0:
        return {"tokens": n, "error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe_main(model: str, corpus: str, split: str, n: int, root: str) -> None:
    from workbench.activations.memory import peak_rss_mb
    from workbench.analysis.attention import AttentionConfig, attention_stats, head_tables
    from workbench.analysis.common import eval_tokens, resolve_model

    lab = Lab(root)
    loaded, _ = resolve_model(model, lab)
    tokens = eval_tokens(loaded, lab, corpus or None, n, split=split)
    before = {"rss_before_mb": _status_mb("VmRSS"), "peak_rss_loading_mb": peak_rss_mb()}
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    cfg = AttentionConfig()
    head_tables(attention_stats(loaded, tokens, cfg), cfg)
    peak = _status_mb("VmHWM") if reset else peak_rss_mb()
    print(json.dumps({"tokens": int(tokens.numel()), "peak_rss_mb": peak, "peak_reset": reset,
                      **before, "seconds": time.perf_counter() - t0}))


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: write 5 to /proc/self/clear_refs), so the peak
    read afterwards is that of the metrics alone, not of imports and loading."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB (nan where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def format_report(report: dict[str, Any]) -> str:
    lines = [(f"model {report['model']}, corpus {report['corpus']} ({report['split']}), "
              f"{report['threads']} torch threads, load average {report['load_average']:.1f} "
              "(shared machine: timings are noisy; CPU seconds count both threads)")]
    cfg = report["config"]
    if "sparsity" in report:
        s = report["sparsity"]
        lines.append(f"sparsity   {s['seconds']:7.1f} s wall ({s['cpu_seconds']:.0f} s CPU)  "
                     f"{s['n_tokens']} tokens, "
                     f"{s['evaluations']} search evaluations on {cfg['search_tokens']} tokens "
                     f"(ppl tol {cfg['ppl_tol']} pp); ratio {s['activation_ratio']:.4f} at "
                     f"PPL x{s['ppl_ratio']:.4f}")
    if "attention" in report:
        s = report["attention"]
        lines.append(f"attention  {s['seconds']:7.1f} s wall ({s['cpu_seconds']:.0f} s CPU)  "
                     f"{s['n_tokens']} tokens (metrics "
                     f"{s['metrics_seconds']:.1f} s; what-if on {cfg['whatif_tokens']} tokens); "
                     f"classes {s['class_counts']}")
    if "depth" in report:
        s = report["depth"]
        lines.append(f"depth      {s['seconds']:7.1f} s wall ({s['cpu_seconds']:.0f} s CPU)  "
                     f"{s['n_tokens']} tokens (+ "
                     f"{cfg['fit_tokens']} fit tokens); global usefulness "
                     f"{s['global_usefulness']:.2f}")
    for m in report.get("memory", []):
        if "error" in m:
            lines.append(f"memory     {m['tokens']} tokens: failed ({m['error']})")
        else:
            lines.append(f"memory     {m['tokens']:>7} tokens: attention metrics peak RSS "
                         f"{m['peak_rss_mb']:.0f} MiB (RSS before {m['rss_before_mb']:.0f} MiB "
                         f"with model and tokens loaded; peak while loading "
                         f"{m['peak_rss_loading_mb']:.0f} MiB), {m['seconds']:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--memory-probe":
        _probe_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit("usage: python -m workbench.analysis.bench --memory-probe MODEL CORPUS SPLIT "
                 "TOKENS LAB")
