"""Helpers for the steering tests (plain functions; each test file wraps them in fixtures).

`planted_setup` builds the constructed LangFIR case: a tiny LM whose block 0 writes nothing (so
the residual after block 0 is the token + position embedding), with a language direction e_L
added to the embeddings of the tokens that belong to language L, and a sae-lens ReLU SAE at
blocks.0.hook_resid_post whose features are
    0..n_lang-1   planted language features (encoder = e_L): fire on L's tokens
    n_lang        a generic feature (bias only): fires on every token, random ones included
    the rest      position features: each fires at one position, in every language and on
                  random tokens alike (rare: below any useful tau)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

HOOK0 = "blocks.0.hook_resid_post"


def random_lm_setup(root: Path, n_ctx: int = 64):
    """(lab, corpus, model): `small_lm_setup`'s random tiny LM (2 x 128) with a 512-token BPE."""
    from fixtures_lab import small_lm_setup

    torch.set_num_threads(1)
    return small_lm_setup(root, n_ctx=n_ctx)


@dataclass
class Planted:
    lab: object
    corpus: object
    model: object
    sae: object
    sae_path: Path
    languages: list[str]
    planted: dict[str, int]  # language -> planted feature index
    generic: int
    coverage: dict[str, float]  # share of L's tokens that carry e_L


def planted_setup(root: Path, tokens_per_language: int = 20, n_noise: int = 12) -> Planted:
    from sae_lens import StandardSAE, StandardSAEConfig

    from workbench.models.model_io import write_model_folder

    lab, corpus, model = random_lm_setup(root)
    tok = model.tokenizer
    languages = sorted(corpus.languages)
    counts = {lang: Counter() for lang in languages}
    for lang in languages:
        for text in corpus.texts("train", lang):
            counts[lang].update(tok.encode(text, add_special_tokens=False)[:63])
    total = sum(counts.values(), Counter())
    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(d, len(languages) + n_noise, generator=gen))
    coverage = {}
    with torch.no_grad():
        block = model.blocks[0]
        for param in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
            param.zero_()
        for j, lang in enumerate(languages):
            owned = [t for t, c in counts[lang].most_common()
                     if c >= 3 and c / total[t] >= 0.8][:tokens_per_language]
            model.W_E[owned] += 8.0 * basis[:, j]
            coverage[lang] = sum(counts[lang][t] for t in owned) / sum(counts[lang].values())
    with lab.new_artifact("model", "planted-lm", parents=[corpus.name, "tok"]) as art:
        write_model_folder(art.path, model, tok)

    n_lang = len(languages)
    d_sae = n_lang + 1 + n_noise
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        for j in range(n_lang):
            sae.W_enc[:, j] = basis[:, j]
            sae.b_enc[j] = -4.0
        sae.b_enc[n_lang] = 1.0  # generic: fires everywhere
        lang_basis = basis[:, :n_lang]
        for j in range(n_noise):
            pos = model.W_pos[5 + j].clone()
            pos -= lang_basis @ (lang_basis.T @ pos)  # blind to the planted directions
            sae.W_enc[:, n_lang + 1 + j] = pos / pos.norm()
            sae.b_enc[n_lang + 1 + j] = -0.6 * pos.norm()
        sae.W_dec.copy_(sae.W_enc.T)
    sae.cfg.metadata.hook_name = HOOK0
    sae.cfg.metadata.model_name = "planted-lm"
    sae_path = root.parent / "planted-sae"
    sae.save_model(str(sae_path))
    return Planted(lab, corpus, model.eval(), sae.eval(), sae_path, languages,
                   {lang: j for j, lang in enumerate(languages)}, n_lang, coverage)


PAGE_REPORT = "page-langfir"
PAGE_EVAL = "page-langfir-eval"
PAGE_LANGUAGES = ("en", "de", "fr")


def add_steering_artifacts(lab, sae: str = "dash-sae", model: str = "lm",
                           corpus: str = "corpus"):
    """For the steering page tests: a small LangFIR report `page-langfir` of `sae` on three
    languages, its stored DiffMean vectors `page-langfir-<lang>-diffmean` and a small steering
    evaluation `page-langfir-eval` (idempotent; a few seconds)."""
    from steering.evaluation import SteerEvalConfig, run_steer_eval
    from steering.langfir import LangFIRConfig, run_langfir
    from steering.making import make_report_vectors

    if not lab.exists(PAGE_REPORT):
        run_langfir(lab, PAGE_REPORT, model, sae, corpus, list(PAGE_LANGUAGES),
                    LangFIRConfig(tau=0.2, tau_r=0.15, n_docs=30, stability_sizes=(10, 30),
                                  n_random=30, ablation_docs=4, guide_docs=10), device="cpu")
    make_report_vectors(lab, PAGE_REPORT, methods=("diffmean",), skip_existing=True)
    if not lab.exists(PAGE_EVAL):
        run_steer_eval(lab, PAGE_REPORT, PAGE_EVAL,
                       SteerEvalConfig(methods=("diffmean", "langfir"), strengths=(0.0, 4.0),
                                       prompts_per_source=1, max_new_tokens=6))
    return lab
