"""SAE evaluation: reconstruction, sparsity, eps_LBO / ZF plot, CE/KL splice, concepts.

    from saes.evaluation import evaluate_sae, evaluate_lab_sae, evaluate_concepts
    result = evaluate_sae(sae, store_or_tensor, model=model, tokens=heldout_tokens)

Modules: metrics (NMSE, FVU, L0, dead fraction, histograms, shrinkage), zf (eps_LBO, ZF plot),
downstream (CE/KL with the reconstruction spliced in), evaluate (evaluate_sae), concepts and
concept_metrics (language concept: probe upper bound vs best latent / group), lab_runs
(evaluations of lab SAEs, stored with them), encoding (chunked encode/decode of any
sae_lens.SAE), sampling (running per-group top-k / reservoirs).
"""

from saes.evaluation.concepts import ConceptEvalConfig, concept_scalars, evaluate_concepts
from saes.evaluation.downstream import downstream_metrics
from saes.evaluation.evaluate import EvalConfig, evaluate_sae, scalar_metrics
from saes.evaluation.lab_runs import (
    CONCEPTS_FILE,
    EVAL_FILE,
    evaluate_lab_concepts,
    evaluate_lab_sae,
    heldout_windows,
)
from saes.evaluation.metrics import explained_variance, fvu, nmse
from saes.evaluation.zf import eps_lbo, f_tilde_norm, zf_bands

__all__ = [
    "CONCEPTS_FILE",
    "EVAL_FILE",
    "ConceptEvalConfig",
    "EvalConfig",
    "concept_scalars",
    "downstream_metrics",
    "eps_lbo",
    "evaluate_concepts",
    "evaluate_lab_concepts",
    "evaluate_lab_sae",
    "evaluate_sae",
    "explained_variance",
    "f_tilde_norm",
    "fvu",
    "heldout_windows",
    "nmse",
    "scalar_metrics",
    "zf_bands",
]
