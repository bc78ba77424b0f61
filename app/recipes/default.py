"""The default lab: what `workbench demo` builds on first run (and reuses afterwards).

Steps, each skipped when its artifact already exists (so an interrupted demo resumes where it
stopped, and the second run only starts the dashboard):

1. `default-corpus`   multilingual corpus (9 languages, ~250k characters each)
2. `default-tok`      byte-level BPE tokenizer (4096 tokens)
3. `default-lm`       narrow LM (4 layers x 128, unembedding bias fixed at zero) trained on the
                      corpus
4. `default-acts`     activations at the middle of the LM (blocks.1.hook_resid_post, the output
                      of block 1: a llama.cpp control vector can sit there)
5. `default-lang-probe`  language-ID probe at that hook (validated on held-out documents)
6. `default-topk`, `default-topafa`  a TopK and a top-AFA SAE trained in one pass, each with its
   evaluation (eval.json) and feature statistics (Parquet)
7. `default-langfir`  LangFIR language features of the TopK SAE with the LangFIRConfig defaults
   (tau 0.05, tau_r 0.2, our selectivity >= 5 filter and cap of 5 per language; report: kept
   features, stability, ablation matrix, register check), and its steering vectors
   `default-langfir-<language>-<method>` (langfir, langfir_eq, diffmean, saediff)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from app.recipes import run_step
from workbench.lab import Lab


@dataclass
class DefaultRecipe:
    """Sizes of the default lab, chosen to build in a few minutes on 2 CPU cores."""

    corpus: str = "default-corpus"
    tokenizer: str = "default-tok"
    lm: str = "default-lm"
    acts: str = "default-acts"
    probe: str = "default-lang-probe"
    topk_sae: str = "default-topk"
    topafa_sae: str = "default-topafa"
    vocab_size: int = 4096
    lm_preset: str = "narrow"
    lm_steps: int = 1000
    hook: str = "blocks.1.hook_resid_post"
    acts_tokens: int = 400_000
    probe_tokens: int = 40_000
    sae_latents: int = 2048
    sae_k: int = 32
    sae_afa_lambda: float = 1.0 / 32
    sae_tokens: int = 400_000
    sae_batch_size: int = 2048
    eval_tokens: int = 16_384
    stats_tokens: int = 20_000
    langfir: str = "default-langfir"
    # TopK, not top-AFA: on the lab built 2026-12-03 top-AFA's most frequent feature that fires
    # 5x more often on Italian than on any other language fires on 0.2% of Italian tokens, so
    # Italian keeps nothing at any useful tau; TopK keeps 5x features for every language
    # (docs/usage.md, LangFIR)
    langfir_sae: str = "default-topk"


def build_default_lab(lab: Lab, echo: Callable[[str], None] = print,
                      recipe: DefaultRecipe | None = None) -> None:
    """Build whatever of the default lab is missing; prints one line per step."""
    r = recipe or DefaultRecipe()
    steps: list[tuple[str, Callable[[], None]]] = [
        (r.corpus, lambda: _corpus(lab, r)),
        (r.tokenizer, lambda: _tokenizer(lab, r)),
        (r.lm, lambda: _lm(lab, r)),
        (r.acts, lambda: _acts(lab, r)),
        (r.probe, lambda: _probe(lab, r)),
        (r.topafa_sae, lambda: _saes(lab, r)),
    ]
    start = time.time()
    for name, build_step in steps:
        run_step(lab, "demo", name, build_step, echo)
    for sae in (r.topk_sae, r.topafa_sae):
        _sae_reports(lab, r, sae, echo)
    _langfir(lab, r, echo)
    echo(f"[demo] default lab ready in {lab.root} ({time.time() - start:.0f} s)")


def _corpus(lab: Lab, r: DefaultRecipe) -> None:
    from workbench.data.build import build_corpus

    build_corpus(lab, "default", name=r.corpus)


def _tokenizer(lab: Lab, r: DefaultRecipe) -> None:
    from workbench.models.tokenizer import train_tokenizer_artifact

    train_tokenizer_artifact(lab, r.corpus, r.tokenizer, vocab_size=r.vocab_size)


def _lm(lab: Lab, r: DefaultRecipe) -> None:
    from workbench.models.presets import lm_config
    from workbench.models.tokenizer import load_tokenizer
    from workbench.models.training import LMTrainConfig, train_lm

    tokenizer = load_tokenizer(lab, r.tokenizer)
    train_lm(lab, r.lm, r.corpus, r.tokenizer, lm_config(r.lm_preset, d_vocab=len(tokenizer)),
             LMTrainConfig(steps=r.lm_steps))


def _acts(lab: Lab, r: DefaultRecipe) -> None:
    from workbench.activations import cache_activations

    cache_activations(lab, r.acts, r.lm, r.hook, r.corpus, n_tokens=r.acts_tokens)


def _probe(lab: Lab, r: DefaultRecipe) -> None:
    from workbench.probes import ProbeRun, run_probe

    # from the live model: each document read in its own context, validated on held-out text
    run_probe(lab, r.probe, ProbeRun(model=r.lm, hook=r.hook, corpus=r.corpus,
                                     n_tokens=r.probe_tokens))


def _saes(lab: Lab, r: DefaultRecipe) -> None:
    """Both SAEs from one pass over the activations (TopK is skipped if it exists)."""
    from saes.training.config import SAETrainConfig
    from saes.training.trainer import train_saes

    configs = [
        SAETrainConfig(name=r.topk_sae, arch="topk", latents=r.sae_latents, k=r.sae_k,
                       tokens=r.sae_tokens, batch_size=r.sae_batch_size),
        SAETrainConfig(name=r.topafa_sae, arch="topafa", latents=r.sae_latents,
                       afa_lambda=r.sae_afa_lambda, tokens=r.sae_tokens,
                       batch_size=r.sae_batch_size),
    ]
    train_saes(lab, [c for c in configs if not lab.exists(c.name)], r.acts)


def _sae_reports(lab: Lab, r: DefaultRecipe, sae: str, echo: Callable[[str], None]) -> None:
    """Evaluation and feature statistics of one SAE, unless already stored."""
    from saes.evaluation.lab_runs import evaluate_lab_sae
    from saes.feature_stats import compute_feature_stats

    art = lab.get(sae, kind="sae")
    if not (art.path / "eval.json").exists():
        echo(f"[demo] evaluating {sae} ...")
        result = evaluate_lab_sae(lab, sae, n_tokens=r.eval_tokens)
        echo(f"[demo] {sae}: NMSE {result['nmse']:.4f}, L0 {result['l0']:.1f}")
    if not (art.path / "feature_stats.parquet").exists():
        echo(f"[demo] feature statistics of {sae} ...")
        compute_feature_stats(lab, sae, n_tokens=r.stats_tokens)


def _langfir(lab: Lab, r: DefaultRecipe, echo: Callable[[str], None]) -> None:
    """The LangFIR report of the TopK SAE and its steering vectors (whatever is missing)."""
    from steering.langfir import run_langfir
    from steering.making import make_report_vectors

    if not lab.exists(r.langfir):
        echo(f"[demo] building {r.langfir} ...")
        t0 = time.time()
        run_langfir(lab, r.langfir, r.lm, r.langfir_sae, r.corpus)
        echo(f"[demo] {r.langfir} done in {time.time() - t0:.0f} s")
    t0 = time.time()
    made = make_report_vectors(lab, r.langfir, skip_existing=True)
    echo(f"[demo] {len(made)} steering vectors of {r.langfir} ready ({time.time() - t0:.0f} s)")


def build(lab: Lab, echo: Callable[[str], None] = print, quick: bool = False) -> None:
    """Recipe entry (`workbench lab build default`); `quick` has no smaller size here."""
    build_default_lab(lab, echo=echo)
