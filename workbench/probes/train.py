"""Fit a probe and measure it on held-out data; probes as lab artifacts (kind `probe`).

    probe = train_probe(features, labels, kind="logistic", groups=doc_ids)
    probe.metrics["validation"]["accuracy"]

    probe = run_probe(lab, "lang-probe", ProbeRun(model="lm", hook="blocks.1.hook_resid_post",
                                                  corpus="corpus", labels="language"))
    probe = load_probe(lab, "lang-probe")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from workbench.activations.cache import lab_model_artifact
from workbench.activations.store import open_activations
from workbench.data.store import load_corpus
from workbench.errors import InvalidInputError
from workbench.lab import Lab
from workbench.models.loading import load_model
from workbench.probes.data import (
    ProbeData,
    group_split_mask,
    probe_data_from_model,
    probe_data_from_store,
)
from workbench.probes.model import Probe, ProbeConfig, as_label_array, fit_probe


def train_probe(
    features: torch.Tensor,
    labels: Sequence[Any],
    kind: str = "logistic",
    groups: torch.Tensor | None = None,
    val_fraction: float = 0.2,
    validation: tuple[torch.Tensor, Sequence[Any]] | None = None,
    seed: int = 0,
    device=None,
    **config: Any,
) -> Probe:
    """Fit a probe on features [N, d] / labels [N] and record train and validation metrics.

    Validation data: `validation=(features, labels)` when given; else a `val_fraction` share of
    the groups (documents, `groups` [N]) is held out, or of the rows when there are no groups;
    `val_fraction=0` skips validation. Extra keyword arguments go to ProbeConfig (weight_decay,
    optimizer, max_iter, ...).
    """
    cfg = ProbeConfig(kind=kind, seed=seed, **config)
    data = ProbeData(torch.as_tensor(features), as_label_array(labels, len(features)),
                     groups if groups is not None else torch.arange(len(features)))
    if validation is None and val_fraction > 0:
        is_val = group_split_mask(data.groups, val_fraction, seed)
        data, held_out = data.subset(~is_val), data.subset(is_val)
        validation = (held_out.features, held_out.labels)
    probe = fit_probe(data.features, data.labels, cfg, device=device)
    probe.metrics["train"] = probe.evaluate(data.features, data.labels)
    if validation is not None:
        probe.metrics["validation"] = probe.evaluate(*validation)
    return probe


@dataclass
class ProbeRun:
    """A probe on a model's activations at `hook`, labelled from a corpus column.

    Features come from the activations artifact `acts` when given (its first `n_tokens` tokens,
    documents split into train/validation), else from the live model on `n_tokens` tokens of the
    corpus' train split, validated on the held-out validation split, each document read in a
    context of its own unless packing="concat"."""

    model: str
    hook: str
    corpus: str
    labels: str = "language"
    kind: str = "logistic"
    acts: str | None = None
    n_tokens: int = 50_000
    val_tokens: int = 20_000
    context_size: int = 128
    pool: str = "token"
    packing: str = "document"
    val_fraction: float = 0.2
    weight_decay: float = 1e-4
    seed: int = 0


def run_probe(lab: Lab, name: str, run: ProbeRun, device=None, overwrite: bool = False,
              model=None) -> Probe:
    """Collect features, train the probe, save it as artifact `name` (kind `probe`)."""
    if lab.exists(name) and not overwrite:
        raise InvalidInputError(
            f"artifact {name!r} already exists; pick another --name or pass --overwrite")
    validation = None
    if run.acts:
        store = open_activations(lab, run.acts)
        if store.hook != run.hook or store.model_name != run.model:
            raise InvalidInputError(
                f"activations {run.acts!r} are of {store.model_name!r} at {store.hook!r}, not of "
                f"{run.model!r} at {run.hook!r}; pass matching --model/--hook or drop --acts"
            )
        data = probe_data_from_store(store, run.labels, run.n_tokens, run.pool)
        parents = [run.acts]
    else:
        model = model if model is not None else load_model(run.model, lab=lab, device=device)
        corpus = load_corpus(lab, run.corpus)
        data = probe_data_from_model(model, run.hook, corpus, run.labels, run.n_tokens, "train",
                                     run.context_size, run.pool, run.seed, run.packing)
        held_out = probe_data_from_model(model, run.hook, corpus, run.labels, run.val_tokens,
                                         "validation", run.context_size, run.pool, run.seed,
                                         run.packing)
        validation = (held_out.features, held_out.labels)
        lab_model = lab_model_artifact(lab, run.model)
        parents = [run.corpus] + ([lab_model.name] if lab_model else [])
    probe = train_probe(data.features, data.labels, run.kind, data.groups, run.val_fraction,
                        validation, run.seed, device, weight_decay=run.weight_decay)
    probe.info.update({"model": run.model, "hook": run.hook, "labels": run.labels,
                       "pool": run.pool, "corpus": run.corpus, "acts": run.acts})
    save_probe(lab, name, probe, parents, asdict(run), overwrite)
    return probe


def save_probe(lab: Lab, name: str, probe: Probe, parents: Sequence[str] = (),
               config: dict[str, Any] | None = None, overwrite: bool = False) -> None:
    """Store a probe as an artifact of kind `probe` (probe.safetensors + probe.json)."""
    with lab.new_artifact("probe", name, list(parents), config, overwrite) as art:
        probe.save(art.path)
        art.manifest.update({"probe_kind": probe.kind, "classes": probe.classes,
                             "d_in": probe.d_in, "hook": probe.info.get("hook"),
                             "model": probe.info.get("model")})
        art.metrics.update(summary_metrics(probe))


def load_probe(lab: Lab, name: str) -> Probe:
    """The probe artifact `name`."""
    return Probe.load(lab.get(name, kind="probe").path)


def summary_metrics(probe: Probe) -> dict[str, float]:
    """Flat numbers for the catalog: accuracy / macro F1 per split, accuracy per class."""
    out: dict[str, float] = {}
    for split, m in probe.metrics.items():
        out[f"{split}_accuracy"] = m["accuracy"]
        out[f"{split}_macro_f1"] = m["macro_f1"]
        if split == "validation":
            out.update({f"validation_accuracy_{c}": v["accuracy"]
                        for c, v in m["per_class"].items()})
    return out
