"""Analysis artifacts for the dashboard tests, made with the real analyses at the smallest sizes
they take: `attention-lm` and `depth-lm` on the lab's `lm`, and `law-small` (a sparsity-law
analysis) on `law-relu`, a tiny ReLU gated-MLP LM trained 32 steps with geometric checkpoints."""

from __future__ import annotations

from workbench.lab import Lab

ATTENTION, DEPTH, LAW, LAW_MODEL = "attention-lm", "depth-lm", "law-small", "law-relu"


def add_analyses(lab: Lab, corpus: str = "corpus", tokenizer: str = "tok",
                 model: str = "lm") -> Lab:
    """Add the three analyses (and the checkpointed model) unless they exist (idempotent)."""
    from workbench.analysis.attention import AttentionConfig, analyze_attention
    from workbench.analysis.depth import DepthConfig, analyze_depth
    from workbench.analysis.sparsity_law import SparsityLawConfig, analyze_sparsity_law
    from workbench.models.presets import lm_config
    from workbench.models.tokenizer import load_tokenizer
    from workbench.models.training import LMTrainConfig, train_lm

    if not lab.exists(ATTENTION):
        analyze_attention(model, lab, AttentionConfig(
            corpus=corpus, n_tokens=1024, whatif_tokens=512, block_keep=(2, 4),
            vs_levels=((4, 4),), blasst_lambdas=(0.2,)), ATTENTION, progress=False)
    if not lab.exists(DEPTH):
        analyze_depth(model, lab, DepthConfig(corpus=corpus, n_tokens=1024, fit_tokens=512),
                      DEPTH, progress=False)
    if not lab.exists(LAW_MODEL):
        tok = load_tokenizer(lab, tokenizer)
        train_lm(lab, LAW_MODEL, corpus, tokenizer,
                 lm_config("tiny", d_vocab=len(tok), n_ctx=64, act_fn="relu", gated=True),
                 LMTrainConfig(steps=32, batch_size=8, warmup_steps=4, checkpoints="geometric",
                               eval_every=32, eval_sequences=8, final_eval_sequences=16,
                               save_every=32),
                 progress=False)
    if not lab.exists(LAW):
        analyze_sparsity_law(lab, LAW, [LAW_MODEL], SparsityLawConfig(
            n_tokens=1024, threshold_tokens=256, joint_last=2, fit_min_step=1, max_evals=8),
            progress=False)
    return lab
