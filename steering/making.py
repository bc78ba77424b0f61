"""Making steering vectors: from a LangFIR report, from one SAE feature, from a tensor file.

Methods from a report (vector `<report>-<language>-<method>`), every direction unit norm:

    langfir      sum over the kept features i of L of mu_L(i) * d_i   (d_i = W_dec[i] / |W_dec[i]|)
    langfir_eq   sum over the kept features of d_i (equal weights)
    diffmean     mean residual on L minus the mean of the other languages' mean residuals
    saediff      sum over the `top` features with the largest nu(i, L) = mu_L(i) - mean_{L' != L}
                 mu_L'(i) of nu(i, L) * d_i   (Deng et al. 2025)

    make_report_vectors(lab, "default-langfir")          # every language x method
    vector_from_report(report, "de", "diffmean", sae)    # one SteeringVector
    vector_from_lab_feature(lab, "default-topk", 123)    # resid_norm measured on the lab corpus
    vector_from_file(lab, "dir.safetensors", hook=..., model=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from steering.langfir import LangFIRReport, lab_names, load_report
from steering.text_batches import batches, encode_documents, pad_id_of
from steering.vectors import DEFAULT_STRENGTH, SteeringVector, measure_resid_norm
from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Artifact, Lab

METHODS = ("langfir", "langfir_eq", "diffmean", "saediff")
SAEDIFF_TOP = 5


def _unit_rows(w_dec: torch.Tensor, idx: Sequence[int]) -> torch.Tensor:
    rows = w_dec[list(idx)].float()
    return rows / rows.norm(dim=1, keepdim=True)


def vector_from_report(report: LangFIRReport, language: str, method: str, sae=None,
                       strength: float = DEFAULT_STRENGTH, top: int = SAEDIFF_TOP) -> SteeringVector:
    """One steering vector for `language` by `method` (see the module docstring)."""
    report.check_language(language)
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    meta = report.meta
    langs = report.languages
    features: list[dict] = []
    if method == "diffmean":
        if len(langs) < 2:
            raise InvalidInputError("DiffMean needs at least two languages in the report")
        others = torch.stack([report.mean_resid[o] for o in langs if o != language]).mean(0)
        direction = report.mean_resid[language] - others
    else:
        if sae is None:
            raise InvalidInputError(f"method {method!r} needs the report's SAE ({meta.get('sae')})")
        w_dec = sae.W_dec.detach().float().cpu()
        freq = report.frequencies
        if method == "saediff":
            mu = np.stack([freq[f"mu_{o}"].to_numpy() for o in langs])  # [n_lang, d_sae]
            own = mu[langs.index(language)]
            rest = np.delete(mu, langs.index(language), axis=0).mean(0)
            nu = own - rest
            idx = [int(i) for i in np.argsort(-nu)[:top] if nu[i] > 0]
            weights = [float(nu[i]) for i in idx]
        else:
            idx = report.kept(language)
            if not idx:
                raise InvalidInputError(
                    f"LangFIR kept no features for {language!r} in {report.name!r}; lower --tau "
                    "or --min-selectivity (or raise --tau-r) in `workbench langfir run`, or use "
                    "diffmean/saediff")
            mu_col = freq[f"mu_{language}"].to_numpy()
            weights = [float(mu_col[i]) for i in idx] if method == "langfir" else [1.0] * len(idx)
        if not idx:
            raise InvalidInputError(f"no SAE feature is more active on {language!r} than elsewhere")
        direction = (torch.tensor(weights)[:, None] * _unit_rows(w_dec, idx)).sum(0)
        features = [{"source": meta.get("sae"), "index": i, "weight": w}
                    for i, w in zip(idx, weights)]
    return SteeringVector.from_tensor(
        direction, meta["hook"], meta["model"], meta["resid_norm"], method=method,
        strength=strength, language=language, features=features,
        provenance={"report": report.name, "corpus": meta.get("corpus"), "sae": meta.get("sae")})


def make_report_vectors(lab: Lab, report_name: str, languages: Sequence[str] | None = None,
                        methods: Sequence[str] = METHODS, strength: float = DEFAULT_STRENGTH,
                        overwrite: bool = False, skip_existing: bool = False) -> list[Artifact]:
    """Store `<report>-<language>-<method>` for each language x method; languages without kept
    features get no LangFIR vectors (the others still come)."""
    from saes import load_sae

    report = load_report(lab, report_name)
    langs = list(languages) if languages else report.languages
    for lang in langs:
        report.check_language(lang)
    needs_sae = any(m != "diffmean" for m in methods)
    sae = load_sae(report.meta["sae"], lab=lab, device="cpu") if needs_sae else None
    out = []
    for lang in langs:
        for method in methods:
            name = f"{report_name}-{lang}-{method}"
            if skip_existing and lab.exists(name):
                out.append(lab.get(name))
                continue
            if method.startswith("langfir") and not report.kept(lang):
                continue
            vec = vector_from_report(report, lang, method, sae, strength)
            out.append(vec.save_to_lab(lab, name, parents=[report_name], overwrite=overwrite))
    return out


# -- one feature, any tensor -----------------------------------------------------------------
def lab_resid_norm(lab: Lab, model, model_name: str, hook: str, n_docs: int = 64) -> float:
    """Mean residual norm at `hook` on the validation text of the model's corpus (the corpus
    parent of a lab model; any corpus of the lab otherwise)."""
    from workbench.data.store import load_corpus

    corpus = None
    if lab_names(lab, [model_name]):
        parents = lab.get(model_name.partition("@")[0]).parents
        corpus = next((p for p in parents if lab.exists(p) and lab.get(p).kind == "corpus"), None)
    if corpus is None:
        corpora = lab.list("corpus")
        if not corpora:
            raise NotFoundError("no corpus in the lab to measure the residual norm on; build one "
                                "(`workbench data build`) or pass --resid-norm")
        corpus = corpora[0].name
    texts = load_corpus(lab, corpus).frame("validation")
    texts = texts.groupby("language").head(max(1, n_docs // max(1, texts.language.nunique())))
    docs = encode_documents(model.tokenizer, texts.text.tolist(), int(model.cfg.n_ctx))
    total, count = 0.0, 0
    for batch in batches([d for d in docs if len(d) >= 2], 32, pad_id_of(model.tokenizer)):
        norm = measure_resid_norm(model, [hook], batch.tokens, batch.mask, skip_first=False)[hook]
        n = int(batch.mask.sum())
        total, count = total + norm * n, count + n
    if count == 0:
        raise InvalidInputError(f"corpus {corpus!r} has no validation text to measure on")
    return total / count


def parse_feature(spec: str) -> tuple[str, int]:
    """"SAE:INDEX" -> (SAE spec, index)."""
    sae, sep, index = str(spec).rpartition(":")
    if not sep or not sae or not index.strip().isdigit():
        raise InvalidInputError(f"a feature is SAE:INDEX (e.g. default-topk:123), got {spec!r}")
    return sae, int(index)


def vector_from_lab_feature(lab: Lab, sae_spec: str, index: int,
                            strength: float = DEFAULT_STRENGTH, device: str | None = "cpu",
                            resid_norm: float | None = None) -> SteeringVector:
    """A single SAE feature's decoder direction, with resid_norm measured on the lab corpus."""
    from saes import load_sae
    from workbench.models.loading import load_model

    sae = load_sae(sae_spec, lab=lab, device=device)
    meta = sae.cfg.metadata
    if not meta.model_name or not meta.hook_name:
        raise InvalidInputError(f"the SAE {sae_spec!r} names no model/hook in its metadata")
    if resid_norm is None:
        model = load_model(meta.model_name, lab=lab, device=device)
        resid_norm = lab_resid_norm(lab, model, meta.model_name, meta.hook_name)
    return SteeringVector.from_feature(sae, index, resid_norm, source=sae_spec, strength=strength)


def vector_from_file(lab: Lab, path: str | Path, hook: str | None = None, model: str | None = None,
                     key: str | None = None, strength: float = DEFAULT_STRENGTH,
                     resid_norm: float | None = None, device: str | None = "cpu") -> SteeringVector:
    """A vector from a file: a steering pair (NAME.safetensors + NAME.json), a safetensors file
    with one tensor [d_model] (or `key`), or a .npy array; plain tensors need hook and model."""
    from safetensors.torch import load_file

    from workbench.models.loading import load_model

    file = Path(path).expanduser()
    if file.with_suffix(".json").exists() and file.suffix in (".safetensors", ""):
        return SteeringVector.load(file)
    if not file.exists():
        raise NotFoundError(f"no file {file}")
    if file.suffix == ".npy":
        tensor = torch.from_numpy(np.load(file, allow_pickle=False))
    elif file.suffix == ".safetensors":
        tensors = load_file(str(file))
        if key is None and len(tensors) != 1:
            raise InvalidInputError(f"{file} holds {sorted(tensors)}; pick one with --key")
        if key is not None and key not in tensors:
            raise NotFoundError(f"{file} has no tensor {key!r}; it has {sorted(tensors)}")
        tensor = tensors[key] if key else next(iter(tensors.values()))
    else:
        raise InvalidInputError(f"unsupported file {file}: use .safetensors or .npy")
    if not hook or not model:
        raise InvalidInputError("a plain tensor file needs --hook and --model")
    lm = load_model(model, lab=lab, device=device)
    from workbench.models.hooks import validate_hook

    validate_hook(lm, hook)
    if tensor.ndim != 1 or tensor.numel() != int(lm.cfg.d_model):
        raise InvalidInputError(f"the tensor has shape {tuple(tensor.shape)}; {model!r} needs "
                                f"[{lm.cfg.d_model}] at {hook}")
    if resid_norm is None:
        resid_norm = lab_resid_norm(lab, lm, model, hook)
    return SteeringVector.from_tensor(tensor, hook, model, resid_norm, strength=strength,
                                      provenance={"file": str(file)})
