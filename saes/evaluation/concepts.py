"""Concept evaluation: how well SAE latents recover a labelled discrete concept.

The concept here is the language of the text (every token labelled with its document's
language). Data are split by document into a train and a test part; everything is selected
and fitted on train and reported on test.

- Upper bound ("probe"): a logistic probe on the raw activations (workbench.probes);
  accuracy, macro F1, per-language AUROC, and its log-posterior log p(c | x).
- Best single latent per language ("single_latent"): the latent whose activation has the best
  train AUROC for that language (one vs rest); reported: test AUROC, test F1 of the rule
  `activation > threshold` (threshold chosen for F1 on train), and the Pearson correlation of
  the activation with the probe's log-posterior of that language.
- Best group ("group"), defined for every architecture so they can be compared:
  * any SAE: the group is the set of best single latents (one per language, duplicates
    merged, so at most one latent per language); a logistic probe on just those latents gives
    accuracy / macro F1, and "logpost_corr" is the mean over languages of the Pearson
    correlation between that probe's log-posterior and the upper-bound probe's;
  * structured SAE (it has `group_posteriors`): additionally "posterior_group", the group g
    whose posterior p_g (m values + null) best predicts the language with a probe on p_g
    alone (selected by train accuracy among all groups), with the same test metrics, plus
    "direct_logpost_corr": each language matched one-to-one (Hungarian, on train) to a value v
    of g, and the test correlation of log p_{g,v} with the probe's log p(c | x) (the paper's
    criterion, no probe in between).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from saes.evaluation.concept_metrics import (
    auroc_per_latent,
    best_f1_threshold,
    f1_score,
    fit_batched_softmax,
    match_values_to_classes,
    pearson_columns,
)
from saes.evaluation.encoding import dense, flat_activations, sae_width
from workbench.errors import InvalidInputError


@dataclass
class ConceptEvalConfig:
    """n_tokens: labelled tokens read; test_fraction: share of documents held out;
    selection_rows: train rows used to rank the structured SAE's groups."""

    n_tokens: int = 16384
    test_fraction: float = 0.25
    selection_rows: int = 4096
    batch_size: int = 4096
    seed: int = 0


@torch.no_grad()
def _encode_all(sae: Any, x: torch.Tensor, batch_size: int, posteriors: bool = False
                ) -> torch.Tensor:
    """Codes f [N, h] (or group posteriors [N, G, m+1]) on the CPU, chunk by chunk."""
    device = sae.W_dec.device
    out = []
    with flat_activations(sae):
        for chunk in x.split(batch_size):
            chunk = chunk.to(device=device, dtype=torch.float32)
            code = sae.group_posteriors(chunk) if posteriors else dense(sae.encode(chunk))
            out.append(code.float().cpu())
    return torch.cat(out)


def _class_indices(labels: np.ndarray, classes: list[Any]) -> torch.Tensor:
    lookup = {c: i for i, c in enumerate(classes)}
    return torch.tensor([lookup[v] for v in labels.tolist()], dtype=torch.long)


def _log_posterior(probe, features: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(probe.scores(features), dim=1)


def _probe_summary(probe, features: torch.Tensor, reference_logp: torch.Tensor) -> dict[str, Any]:
    """Test metrics of a probe on `features` and the correlation of its log-posterior with
    the reference (upper-bound) probe's, per class and averaged."""
    val = probe.metrics["validation"]
    corr = pearson_columns(_log_posterior(probe, features), reference_logp)
    return {
        "accuracy": val["accuracy"],
        "macro_f1": val["macro_f1"],
        "logpost_corr": float(corr.mean()),
        "logpost_corr_per_class": dict(zip(map(str, probe.classes), corr.tolist())),
    }


def _single_latents(f_train, y_train, f_test, y_test, classes, reference_logp) -> dict[str, Any]:
    auroc_train = auroc_per_latent(f_train, y_train, len(classes))  # [C, h]
    best = auroc_train.argmax(1)
    per_class = {}
    for c, name in enumerate(classes):
        j = int(best[c])
        threshold, train_f1 = best_f1_threshold(f_train[:, j], y_train == c)
        test_auroc = float(auroc_per_latent(f_test[:, j:j + 1], y_test, len(classes))[c, 0])
        corr = pearson_columns(f_test[:, j:j + 1], reference_logp[:, c:c + 1])
        per_class[str(name)] = {
            "latent": j,
            "train_auroc": float(auroc_train[c, j]),
            "test_auroc": test_auroc,
            "threshold": threshold,
            "train_f1": train_f1,
            "test_f1": f1_score(f_test[:, j] > threshold, y_test == c),
            "logpost_corr": float(corr[0]),
        }
    values = list(per_class.values())
    return {
        "per_class": per_class,
        "mean_test_auroc": float(np.mean([v["test_auroc"] for v in values])),
        "mean_test_f1": float(np.mean([v["test_f1"] for v in values])),
        "latents": sorted({v["latent"] for v in values}),
    }


def _posterior_group(sae, train, test, y_train, classes, ref_logp_train, ref_logp_test,
                     config: ConceptEvalConfig) -> dict[str, Any]:
    """The structured SAE's best group by a probe on its posterior alone (see module doc)."""
    from workbench.probes import train_probe

    p_train = _encode_all(sae, train.features, config.batch_size, posteriors=True)  # [N, G, m+1]
    p_test = _encode_all(sae, test.features, config.batch_size, posteriors=True)
    generator = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(len(p_train), generator=generator)[:config.selection_rows]
    group_acc = fit_batched_softmax(p_train[rows].permute(1, 0, 2).contiguous(), y_train[rows],
                                    len(classes))
    g = int(group_acc.argmax())
    probe = train_probe(p_train[:, g], train.labels, kind="logistic",
                        validation=(p_test[:, g], test.labels), seed=config.seed)
    out = {"group": g, "selection_accuracy": float(group_acc[g]),
           **_probe_summary(probe, p_test[:, g], ref_logp_test)}
    m = p_train.shape[2] - 1
    log_train = p_train[:, g, :m].clamp_min(1e-12).log()
    log_test = p_test[:, g, :m].clamp_min(1e-12).log()
    corr_train = np.array([[float(pearson_columns(log_train[:, v:v + 1],
                                                  ref_logp_train[:, c:c + 1])[0])
                            for v in range(m)] for c in range(len(classes))])
    match = match_values_to_classes(corr_train)
    direct = {}
    for c, name in enumerate(classes):
        v = match[c]
        if v >= 0:
            corr = pearson_columns(log_test[:, v:v + 1], ref_logp_test[:, c:c + 1])
            direct[str(name)] = {"value": v, "logpost_corr": float(corr[0])}
    out["direct_per_class"] = direct
    out["direct_logpost_corr"] = (float(np.mean([d["logpost_corr"] for d in direct.values()]))
                                  if direct else float("nan"))
    return out


def evaluate_concepts(sae: Any, data, config: ConceptEvalConfig | None = None) -> dict[str, Any]:
    """Concept evaluation of `sae` on `data` (a workbench.probes.ProbeData: raw activations
    [N, d_in], labels [N], document ids [N]). Returns the nested result (module docstring)."""
    from workbench.probes import train_probe

    config = config or ConceptEvalConfig()
    d_in, _ = sae_width(sae)
    if data.features.shape[1] != d_in:
        raise InvalidInputError(
            f"activations of width {data.features.shape[1]} do not fit the SAE (d_in={d_in})"
        )
    train, test = data.split_by_group(config.test_fraction, config.seed)
    classes = sorted(set(train.labels.tolist()), key=str)
    if len(classes) < 2:
        raise InvalidInputError(
            f"the concept needs at least two values in the training documents, found {classes}; "
            "use more tokens or a corpus with several languages"
        )
    test = test.subset(torch.from_numpy(np.isin(test.labels, classes)))
    reference = train_probe(train.features, train.labels, kind="logistic",
                            validation=(test.features, test.labels), seed=config.seed)
    classes = list(reference.classes)
    y_train, y_test = _class_indices(train.labels, classes), _class_indices(test.labels, classes)
    ref_logp_train = _log_posterior(reference, train.features)
    ref_logp_test = _log_posterior(reference, test.features)
    probe_auroc = auroc_per_latent(ref_logp_test.exp(), y_test, len(classes)).diag()
    val = reference.metrics["validation"]
    result: dict[str, Any] = {
        "concept": "language",
        "classes": [str(c) for c in classes],
        "n_train": len(train), "n_test": len(test),
        "probe": {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"],
                  "mean_auroc": float(probe_auroc.mean()),
                  "auroc_per_class": dict(zip(map(str, classes), probe_auroc.tolist()))},
    }
    f_train = _encode_all(sae, train.features, config.batch_size)
    f_test = _encode_all(sae, test.features, config.batch_size)
    single = _single_latents(f_train, y_train, f_test, y_test, classes, ref_logp_test)
    result["single_latent"] = single
    members = single["latents"]
    group_probe = train_probe(f_train[:, members], train.labels, kind="logistic",
                              validation=(f_test[:, members], test.labels), seed=config.seed)
    result["group"] = {"definition": "best single latent per language", "latents": members,
                       **_probe_summary(group_probe, f_test[:, members], ref_logp_test)}
    if hasattr(sae, "group_posteriors"):
        result["posterior_group"] = _posterior_group(
            sae, train, test, y_train, classes, ref_logp_train, ref_logp_test, config)
    result["config"] = asdict(config)
    return result


def concept_scalars(result: dict[str, Any]) -> dict[str, float]:
    """Headline numbers of a concept evaluation, for the lab catalog and tables."""
    out = {
        "concept_probe_accuracy": result["probe"]["accuracy"],
        "concept_latent_auroc": result["single_latent"]["mean_test_auroc"],
        "concept_latent_f1": result["single_latent"]["mean_test_f1"],
        "concept_group_accuracy": result["group"]["accuracy"],
        "concept_group_logpost_corr": result["group"]["logpost_corr"],
    }
    if "posterior_group" in result:
        pg = result["posterior_group"]
        out.update({"concept_posterior_group_accuracy": pg["accuracy"],
                    "concept_posterior_group_logpost_corr": pg["logpost_corr"],
                    "concept_posterior_group_direct_corr": pg["direct_logpost_corr"]})
    return out
