"""MoE-X against dense on text: validation loss and the language concept evaluation of MLP
hidden units (MoE-X's wide hidden vector, dense MLP neurons) and of SAE features trained on a
dense model's MLP hidden.

    rows = [TextRow("dense GELU neurons", "text-dense_gelu"),
            TextRow("SAE on dense GELU MLP", "text-dense_gelu", sae="text-dense-sae"),
            TextRow("MoE-X units", "text-moex")]
    records = evaluate_text_table(lab, "default-corpus", rows, layer=1, name="text-table")

Every row reads `blocks.{layer}.mlp.hook_post` of its model on `n_tokens` tokens of the
corpus's validation split (documents the LMs were not trained on; each in its own context,
labelled with its language) and runs `saes.evaluation.concepts.evaluate_concepts` on them: for
unit rows the "latents" are the units themselves (`UnitCodes`, an identity code), for SAE rows
the SAE's features. Reported per row: the model's validation loss, the units' mean L0 per token,
and the concept evaluation's headline numbers (`concept_scalars`): the probe on the hidden vector
(upper bound), the best single unit per language (test AUROC, F1) and the probe on those best
units (accuracy, log-posterior correlation with the upper bound).

The SAE baseline is an ordinary lab SAE on the dense model's MLP hidden (`workbench acts cache
--hook blocks.L.mlp.hook_post` over the train split, then `workbench sae train`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saes.board_eval import load_model_at_layer, mlp_hidden_hook
from workbench.errors import InvalidInputError
from workbench.lab import Lab

SPLIT = "validation"


class UnitCodes(torch.nn.Module):
    """Hidden units as their own latents, for evaluate_concepts: encode(x) = x [n, width]; the
    decoder W_dec [width, width] is the identity (what `sae_width` reads)."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("W_dec", torch.eye(width))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class TextRow:
    """One row: the MLP hidden units of `model` at the layer, or the features of `sae` (trained
    on that model's MLP hidden)."""

    label: str
    model: str
    sae: str | None = None


def evaluate_text_table(lab: Lab, corpus: str, rows: list[TextRow], layer: int,
                        n_tokens: int = 16384, name: str | None = None,
                        overwrite: bool = False, echo=print) -> list[dict]:
    """Validation loss and the language concept evaluation per row (module docstring); stored
    as an `analysis` artifact `name` (table.json) when a name is given."""
    from saes.evaluation.concepts import ConceptEvalConfig, concept_scalars, evaluate_concepts
    from saes.evaluation.lab_runs import json_safe
    from saes.interop import load_sae
    from workbench.data.store import load_corpus
    from workbench.lab import write_json
    from workbench.probes import probe_data_from_model

    if not rows:
        raise InvalidInputError("no models to evaluate; name at least one")
    if n_tokens < 1024:
        raise InvalidInputError(f"use at least 1024 tokens for the concept evaluation, got "
                                f"{n_tokens}")
    text = load_corpus(lab, corpus)
    hook = mlp_hidden_hook(layer)
    config = ConceptEvalConfig(n_tokens=n_tokens)
    data_of: dict[str, object] = {}
    out, results = [], {}
    for row in rows:
        if row.model not in data_of:
            model = load_model_at_layer(lab, row.model, layer)
            data_of[row.model] = probe_data_from_model(
                model, hook, text, "language", n_tokens=n_tokens, split=SPLIT,
                context_size=min(128, model.cfg.n_ctx))
        data = data_of[row.model]
        if row.sae is None:
            codes = UnitCodes(data.features.shape[1])
            l0 = float((data.features > 0).float().sum(1).mean())
        else:
            codes = load_sae(row.sae, lab=lab, device="cpu")
            with torch.no_grad():
                l0 = float(torch.cat([(codes.encode(c) > 0).float().sum(1)
                                      for c in data.features.split(4096)]).mean())
        result = evaluate_concepts(codes, data, config)
        results[row.label] = json_safe(result)
        art = lab.get(row.model, kind="model")
        record = {"variant": row.label, "model": row.model, "sae": row.sae,
                  "val_loss": art.metrics.get("val_loss"),
                  "tokens_per_s": art.metrics.get("tokens_per_s"),
                  "units": int(codes.W_dec.shape[0]), "l0": l0, "n_tokens": len(data.labels),
                  **json_safe(concept_scalars(result))}
        out.append(record)
        echo(format_text_table([record], header=False))
    if name is not None:
        with lab.new_artifact("analysis", name, parents=sorted({r.model for r in rows}
                                                                | {r.sae for r in rows if r.sae}),
                              config={"corpus": corpus, "layer": layer, "hook": hook,
                                      "split": SPLIT, "n_tokens": n_tokens,
                                      "rows": [r.__dict__ for r in rows]},
                              overwrite=overwrite) as writer:
            write_json(writer.path / "table.json", out)
            write_json(writer.path / "concepts.json", results)
            writer.manifest["analysis"] = "moex_text"
            writer.metrics.update({f"{r['variant']}_{m}": r[m] for r in out
                                   for m in ("val_loss", "concept_latent_auroc")})
    return out


COLUMNS = (("val_loss", "val loss", "{:.4f}"), ("units", "units", "{:d}"),
           ("l0", "L0", "{:.1f}"), ("concept_probe_accuracy", "probe acc", "{:.3f}"),
           ("concept_latent_auroc", "unit AUROC", "{:.3f}"),
           ("concept_latent_f1", "unit F1", "{:.3f}"),
           ("concept_group_accuracy", "group acc", "{:.3f}"),
           ("concept_group_logpost_corr", "group r", "{:.3f}"))


def format_text_table(records: list[dict], header: bool = True) -> str:
    """One line per row: val loss, units, L0 and the concept evaluation's headline numbers
    (probe acc = upper bound on the hidden vector; unit AUROC / F1 = best single unit per
    language, mean over languages; group acc / r = probe on those best units)."""
    width = max([24] + [len(r["variant"]) for r in records])
    lines = [f"{'variant':<{width}} " + " ".join(f"{t:>10}" for _, t, _ in COLUMNS)] \
        if header else []
    for r in records:
        cells = []
        for key, _, fmt in COLUMNS:
            value = r.get(key)
            cells.append(f"{'' if value is None else fmt.format(value):>10}")
        lines.append(f"{r['variant']:<{width}} " + " ".join(cells))
    return "\n".join(lines)

