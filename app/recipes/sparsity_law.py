"""The sparsity-law lab (`workbench lab build sparsity-law [--quick]`).

Reproduces, at CPU scale, the qualitative laws of "Sparsing Law" (Luo et al. 2024):

1. a ReLU and a SiLU gated-MLP LM of the same size (2 layers x 128 by default) trained on the
   default corpus with geometric checkpoints (steps 1, 2, 4, ... and the last);
2. a width/depth sweep of ReLU gated-MLP LMs at (about) the same non-embedding parameter count
   (16 * n_layers * d_model^2 with d_mlp = 4 d_model: 1 x 192, 2 x 128, 4 x 96, 8 x 64), each
   with geometric checkpoints too;
3. the analysis artifact `sparsity-law` (`workbench.analysis.sparsity_law`): the PPL-p%
   activation ratio at every checkpoint (one CETT target searched jointly on the last
   checkpoints of each model), the fitted laws (ReLU: exp(-c D^alpha + b) + A0, SiLU:
   -c D^(-alpha) + A0) and the limit ratio against width/depth, with a verdict per paper claim
   in its summary.

Every step is skipped when its artifact exists, so an interrupted build resumes (training itself
also resumes from its work folder). Sized to finish in well under 40 minutes on 2 CPU cores;
`--quick` builds a miniature version (own small corpus, 2 small models, a few steps) for tests.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.recipes import run_step
from workbench.lab import Lab


@dataclass
class SparsityLawRecipe:
    """Sizes of the sparsity-law lab.

    pair: (n_layers, d_model) of the ReLU/SiLU pair; sweep: further (n_layers, d_model) shapes of
    the width/depth sweep (ReLU); d_mlp = mlp_ratio * d_model everywhere; heads of d_head.
    """

    corpus: str = "default-corpus"
    tokenizer: str = "default-tok"
    chars_per_language: int | None = None  # None: the default recipe's budget
    vocab_size: int = 4096
    prefix: str = "sl"
    analysis: str = "sparsity-law"
    pair: tuple[int, int] = (2, 128)
    pair_acts: tuple[str, ...] = ("relu", "silu")
    sweep: tuple[tuple[int, int], ...] = ((1, 192), (4, 96), (8, 64))
    sweep_act: str = "relu"
    d_head: int = 32
    mlp_ratio: int = 4
    n_ctx: int = 128
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    checkpoints: str = "geometric"
    eval_tokens: int = 8192
    threshold_tokens: int = 2048
    p: float = 1.0
    joint_last: int = 2
    max_evals: int = 16
    fit_min_step: int = 8
    train_extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> SparsityLawRecipe:
        return cls(corpus="slq-corpus", tokenizer="slq-tok", chars_per_language=6000,
                   vocab_size=384, prefix="slq", analysis="sparsity-law-quick", pair=(1, 64),
                   sweep=((2, 32),), d_head=16, n_ctx=32, steps=24, batch_size=8,
                   checkpoints="geometric:2", eval_tokens=1024, threshold_tokens=512,
                   joint_last=2, fit_min_step=1, train_extra={"warmup_steps": 4, "eval_every": 24,
                                              "eval_sequences": 8, "final_eval_sequences": 16,
                                              "save_every": 24})

    def model_shapes(self) -> list[tuple[str, str, int, int]]:
        """(model name, act_fn, n_layers, d_model) of every model, the pair first."""
        out = [(self.model_name(act, *self.pair), act, *self.pair) for act in self.pair_acts]
        for n_layers, d_model in self.sweep:
            out.append((self.model_name(self.sweep_act, n_layers, d_model), self.sweep_act,
                        n_layers, d_model))
        return out

    def model_name(self, act: str, n_layers: int, d_model: int) -> str:
        return f"{self.prefix}-{act}-L{n_layers}-d{d_model}"


def model_config(r: SparsityLawRecipe, d_vocab: int, act: str, n_layers: int, d_model: int):
    """A gated-MLP config of the given shape: the `tiny` preset's config (via `lm_config`) with
    its shape fields replaced."""
    from workbench.models.model_io import config_from_dict, config_to_dict
    from workbench.models.presets import lm_config

    base = lm_config("tiny", d_vocab=d_vocab, n_ctx=r.n_ctx, act_fn=act, gated=True)
    fields = config_to_dict(base)
    fields.update(n_layers=n_layers, d_model=d_model, d_head=r.d_head,
                  n_heads=d_model // r.d_head, d_mlp=r.mlp_ratio * d_model,
                  model_name=f"workbench-L{n_layers}-d{d_model}")
    return config_from_dict(fields)


def _corpus_and_tokenizer(lab: Lab, r: SparsityLawRecipe, echo: Callable[[str], None]) -> None:
    from workbench.data.build import build_corpus
    from workbench.models.tokenizer import train_tokenizer_artifact

    if not lab.exists(r.corpus):
        echo(f"[sparsity-law] building {r.corpus} ...")
        build_corpus(lab, "default", name=r.corpus, chars_per_language=r.chars_per_language)
    if not lab.exists(r.tokenizer):
        echo(f"[sparsity-law] training tokenizer {r.tokenizer} ...")
        train_tokenizer_artifact(lab, r.corpus, r.tokenizer, vocab_size=r.vocab_size)


def _train(lab: Lab, r: SparsityLawRecipe, name: str, act: str, n_layers: int, d_model: int,
           progress: bool) -> None:
    from workbench.models.tokenizer import load_tokenizer
    from workbench.models.training import LMTrainConfig, train_lm

    tokenizer = load_tokenizer(lab, r.tokenizer)
    cfg = model_config(r, len(tokenizer), act, n_layers, d_model)
    train_cfg = LMTrainConfig(steps=r.steps, batch_size=r.batch_size, lr=r.lr,
                              checkpoints=r.checkpoints, **r.train_extra)
    train_lm(lab, name, r.corpus, r.tokenizer, cfg, train_cfg, progress=progress)


def build_sparsity_law_lab(lab: Lab, echo: Callable[[str], None] = print,
                           recipe: SparsityLawRecipe | None = None,
                           progress: bool = True) -> None:
    """Build whatever of the sparsity-law lab is missing; prints one line per step and, at the
    end, the fitted laws and the verdict on each paper claim."""
    r = recipe or SparsityLawRecipe()
    start = time.time()
    _corpus_and_tokenizer(lab, r, echo)
    shapes = r.model_shapes()
    for name, act, n_layers, d_model in shapes:  # gated-MLP models, named by act and shape
        run_step(lab, "sparsity-law", name,
                 functools.partial(_train, lab, r, name, act, n_layers, d_model, progress), echo)
    if not lab.exists(r.analysis):
        from workbench.analysis.sparsity_law import SparsityLawConfig, analyze_sparsity_law

        echo(f"[sparsity-law] analysing {len(shapes)} models along training ...")
        t0 = time.time()
        analyze_sparsity_law(
            lab, r.analysis, [name for name, *_ in shapes],
            SparsityLawConfig(corpus=r.corpus, n_tokens=r.eval_tokens,
                              threshold_tokens=r.threshold_tokens, p=r.p,
                              joint_last=r.joint_last, max_evals=r.max_evals,
                              fit_min_step=r.fit_min_step),
            progress=progress)
        echo(f"[sparsity-law] {r.analysis} done in {time.time() - t0:.0f} s")
    summary = lab.get(r.analysis, kind="analysis").manifest.get("summary", {})
    for line in summary.get("report", []):
        echo(f"[sparsity-law] {line}")
    echo(f"[sparsity-law] lab ready in {lab.root} ({time.time() - start:.0f} s)")


def build(lab: Lab, echo: Callable[[str], None] = print, quick: bool = False) -> None:
    """Recipe entry (`workbench lab build sparsity-law [--quick]`)."""
    build_sparsity_law_lab(lab, echo=echo,
                           recipe=SparsityLawRecipe.quick() if quick else None,
                           progress=not quick)
