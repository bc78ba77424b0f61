"""Evaluations of lab SAEs, stored with the SAE.

    evaluate_lab_sae(lab, "sae-topk-32")        # eval.json + scalar metrics in the catalog
    evaluate_lab_concepts(lab, "sae-topk-32")   # concepts.json + concept_* metrics

The SAE's activations artifact (its parent, or the one named) says which model, hook and
corpus it belongs to. Reconstruction, sparsity, ZF and splice metrics are computed on held-out
text: the corpus's validation split, packed into BOS-led windows the way activations are cached
(BOS positions are neither spliced nor scored). With `on_acts=True` the reconstruction
metrics run over the cached activations instead (the SAE's training distribution).
An SAE without an activations parent (e.g. imported from sae-lens) is evaluated through the
activations artifact named with `acts_name`, which must be of the SAE's hook.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch

from saes.evaluation.concepts import ConceptEvalConfig, concept_scalars, evaluate_concepts
from saes.evaluation.evaluate import EvalConfig, evaluate_sae, scalar_metrics
from workbench.errors import InvalidInputError
from workbench.lab import Artifact, Lab, write_json

EVAL_FILE = "eval.json"
CONCEPTS_FILE = "concepts.json"
DEFAULT_CONTEXT = 128


def json_safe(obj: Any) -> Any:
    """A copy of nested dicts/lists with NaN and infinities as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def activations_of_sae(lab: Lab, sae_artifact: Artifact, acts_name: str | None = None) -> str:
    """The activations artifact for an SAE: the one named, else the SAE's activations parent."""
    if acts_name:
        return acts_name
    named = sae_artifact.manifest.get("activations")
    if named:
        return str(named)
    for parent in sae_artifact.parents:
        if lab.exists(parent) and lab.get(parent).kind == "activations":
            return parent
    raise InvalidInputError(
        f"SAE {sae_artifact.name!r} does not record the activations it was trained on; pass "
        "--acts NAME"
    )


def heldout_windows(model: Any, corpus: Any, context_size: int, n_tokens: int,
                    split: str = "validation", seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed windows of a corpus split holding at least `n_tokens` text tokens (fewer if the
    split is smaller): tokens [n_seq, T] int64, keep [n_seq, T] bool (text positions)."""
    from workbench.activations.live import iter_documents
    from workbench.activations.windows import iter_window_batches

    context_size = min(context_size, int(model.cfg.n_ctx))
    batches, total = [], 0
    documents = iter_documents(corpus, split, shuffle=True, seed=seed)
    for batch in iter_window_batches(model.tokenizer, documents, context_size, batch_size=16):
        batches.append(batch)
        total += batch.n_text_tokens
        if total >= n_tokens:
            break
    if not batches:
        raise InvalidInputError(
            f"the {split} split of corpus {corpus.name!r} has fewer tokens than one context "
            f"window ({context_size}); build the corpus with a bigger validation split"
        )
    return torch.cat([b.tokens for b in batches]), torch.cat([b.is_text for b in batches])


def _sae_setting(lab: Lab, name: str, acts_name: str | None, device: str | None):
    """(artifact, sae, store, model) of lab SAE `name`."""
    from saes.interop import load_sae
    from workbench.activations import open_activations
    from workbench.models.loading import load_model

    art = lab.get(name, kind="sae")
    sae = load_sae(name, lab=lab, device=device)
    store = open_activations(lab, activations_of_sae(lab, art, acts_name))
    check_store_fits(sae, store, name)
    model = load_model(store.model_name, lab=lab, device=sae.W_dec.device)
    model.eval()
    return art, sae, store, model


def check_store_fits(sae: Any, store: Any, name: str) -> None:
    """The activations must come from the SAE's hook and have its width."""
    from saes.evaluation.encoding import hook_name_of, sae_width

    d_in, _ = sae_width(sae)
    hook = hook_name_of(sae)
    if store.d_in != d_in or (hook and store.hook != hook):
        raise InvalidInputError(
            f"activations {store.name!r} ({store.hook}, width {store.d_in}) do not fit SAE "
            f"{name!r} ({hook}, d_in {d_in}); name activations of the SAE's hook with --acts"
        )


def evaluate_lab_sae(lab: Lab, name: str, n_tokens: int = 32768, acts_name: str | None = None,
                     on_acts: bool = False, device: str | None = None, batch_size: int = 4096
                     ) -> dict[str, Any]:
    """Evaluate lab SAE `name`; writes `eval.json` into its folder and the scalar metrics into
    the catalog. Returns the full result (see the module docstring for the data used)."""
    from workbench.data.store import load_corpus

    config = EvalConfig(n_tokens=n_tokens, batch_size=batch_size)
    config.check()
    art, sae, store, model = _sae_setting(lab, name, acts_name, device)
    corpus = load_corpus(lab, store.corpus_name)
    tokens, keep = heldout_windows(model, corpus, store.context_size or DEFAULT_CONTEXT, n_tokens)
    with lab.job("sae-eval", name, asdict(config), total=1) as job:
        result = evaluate_sae(sae, store if on_acts else None, model=model, tokens=tokens,
                              keep=keep, hook_name=store.hook, config=config)
        result.update({"activations": store.name, "model": store.model_name,
                       "heldout_corpus": corpus.name, "heldout_split": "validation"})
        write_json(art.path / EVAL_FILE, json_safe(result))
        lab.update_metrics(name, json_safe(scalar_metrics(result)))
        job.update(1, force=True, nmse=result["nmse"], l0=result["l0"])
    return result


def evaluate_lab_concepts(lab: Lab, name: str, n_tokens: int = 16384,
                          acts_name: str | None = None, device: str | None = None
                          ) -> dict[str, Any]:
    """Concept (language) evaluation of lab SAE `name` on its activations; writes
    `concepts.json` and the headline numbers (concept_*) into the catalog."""
    from saes.interop import load_sae
    from workbench.activations import open_activations
    from workbench.probes import probe_data_from_store

    config = ConceptEvalConfig(n_tokens=n_tokens)
    art = lab.get(name, kind="sae")
    sae = load_sae(name, lab=lab, device=device)
    store = open_activations(lab, activations_of_sae(lab, art, acts_name))
    check_store_fits(sae, store, name)
    data = probe_data_from_store(store, "language", n_tokens=config.n_tokens)
    with lab.job("sae-concepts", name, asdict(config), total=1) as job:
        result = evaluate_concepts(sae, data, config)
        result["activations"] = store.name
        write_json(art.path / CONCEPTS_FILE, json_safe(result))
        lab.update_metrics(name, json_safe(concept_scalars(result)))
        job.update(1, force=True)
    return result
