"""Feature statistics for the dashboard: what each SAE latent responds to and what it does.

    features, contexts = feature_statistics(sae, IndexedActivations.from_store(store),
                                            tokenizer=model.tokenizer, W_U=model.W_U)
    compute_feature_stats(lab, "sae-topk-32", n_tokens=262144)   # writes both tables
    features, contexts = load_feature_stats(lab, "sae-topk-32")

Three streamed passes over the activations, `chunk_size` tokens at a time (memory bounded by
chunk_size x d_sae plus a few examples per feature):
1. firing frequency, mean (over firing tokens) and max activation, firings per language, a fine
   log10 histogram (for quantile edges) and the running top-k tokens per feature;
2. a linear activation histogram (0 .. max, `hist_bins` bins) and a uniform sample of
   `per_bin` tokens from each of `n_quantile_bins` activation-quantile bins per feature;
3. the feature's activation on every token of each example's window (+-radius tokens inside
   the document).

features table (one row per feature):
    feature, n_fired, frequency, mean_act (mean over firing tokens), max_act,
    hist_edges (list[float], hist_bins + 1), hist_counts (list[int]),
    quantile_edges (list[float], n_quantile_bins + 1),
    top_language, top_language_share (share of its firings in that language's documents),
    top_logit_tokens / top_logit_values, bottom_logit_tokens / bottom_logit_values (W_dec @ W_U,
    final layer norm ignored, as sae-lens and Neuronpedia do; empty when there is no unembed of
    the SAE's width), neighbors / neighbor_cosines (top decoder-cosine features)
contexts table (one row per example):
    feature, kind ("top" or "quantile"), bin (quantile bin, -1 for top), rank (within its
    feature/kind/bin), activation (at the centre token), token_index (in the store), doc_id,
    language, centre (index of the centre token in the window), token_ids, tokens (decoded
    strings), acts (the feature's activation on each window token)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from saes.evaluation.encoding import dense, flat_activations, sae_width
from saes.evaluation.lab_runs import activations_of_sae, check_store_fits
from saes.evaluation.sampling import rank_within_groups
from saes.features.contexts import build_windows, contexts_frame, gather_window_acts, token_strings
from saes.features.source import IndexedActivations
from saes.features.streaming import FiringStats, QuantileSamples, quantile_edges
from saes.features.tables import read_tables, write_tables
from saes.features.weights import decoder_neighbors, logit_effects
from workbench.errors import InvalidInputError
from workbench.lab import Lab


@dataclass
class FeatureStatsConfig:
    """How much to read and keep per feature (see module docstring)."""

    n_tokens: int = 262144
    chunk_size: int = 4096
    top_k: int = 10
    n_quantile_bins: int = 5
    per_bin: int = 3
    radius: int = 8
    hist_bins: int = 32
    n_logits: int = 10
    n_neighbors: int = 5
    seed: int = 0

    def check(self) -> None:
        for name, value in asdict(self).items():
            if name != "seed" and value < (0 if name == "radius" else 1):
                raise InvalidInputError(
                    f"feature-stats option {name} must be positive, got {value}"
                )


def _language_codes(acts: IndexedActivations) -> tuple[list[str], torch.Tensor]:
    """Sorted language names and each token's language index [n] (-1 unknown)."""
    names = sorted(set(acts.doc_language.values()))
    code = {name: i for i, name in enumerate(names)}
    ids = [code.get(acts.doc_language.get(int(d)), -1) for d in acts.doc_ids.tolist()]
    return names, torch.tensor(ids, dtype=torch.long)


def _examples(stats: FiringStats, samples: QuantileSamples) -> dict[str, Any]:
    """Selected examples (top-k and quantile samples) as flat tensors plus kind labels."""
    top = stats.top.result()
    quant = samples.samples.result()
    n_top, n_q = len(top["token"]), len(quant["token"])
    return {
        "centre": torch.cat([top["token"], quant["token"]]).long(),
        "feature": torch.cat([top["group"], quant["feature"]]).long(),
        "bin": torch.cat([torch.full((n_top,), -1), quant["bin"]]).long(),
        "rank": torch.cat([rank_within_groups(top["group"]), rank_within_groups(quant["group"])]),
        "kind": ["top"] * n_top + ["quantile"] * n_q,
    }


def _features_frame(stats: FiringStats, samples: QuantileSamples, edges: torch.Tensor,
                    languages: list[str], W_dec: torch.Tensor, W_U: torch.Tensor | None,
                    vocab: list[str], config: FeatureStatsConfig) -> pd.DataFrame:
    n = max(stats.n_tokens, 1)
    h = stats.d_sae
    fired = stats.fire_counts
    lang_total = stats.language_counts.sum(1).clamp_min(1)
    top_lang_count, top_lang = stats.language_counts.max(1)
    hist_edges = samples.max_acts[:, None] * torch.linspace(0, 1, config.hist_bins + 1)[None, :]
    frame: dict[str, Any] = {
        "feature": torch.arange(h).tolist(),
        "n_fired": fired.tolist(),
        "frequency": (fired.double() / n).tolist(),
        "mean_act": (stats.sum_acts / fired.clamp_min(1)).tolist(),
        "max_act": stats.max_acts.tolist(),
        "hist_edges": hist_edges.tolist(),
        "hist_counts": samples.hist.tolist(),
        "quantile_edges": edges.tolist(),
        "top_language": [languages[i] if languages and c > 0 else None
                         for i, c in zip(top_lang.tolist(), top_lang_count.tolist())],
        "top_language_share": (top_lang_count.double() / lang_total).tolist(),
    }
    if W_U is not None and W_U.shape[0] == W_dec.shape[1]:
        effects = logit_effects(W_dec, W_U, config.n_logits)
        for side in ("top", "bottom"):
            frame[f"{side}_logit_tokens"] = [[vocab[t] for t in row]
                                             for row in effects[f"{side}_ids"].tolist()]
            frame[f"{side}_logit_values"] = effects[f"{side}_values"].tolist()
    else:
        for side in ("top", "bottom"):
            frame[f"{side}_logit_tokens"] = [[] for _ in range(h)]
            frame[f"{side}_logit_values"] = [[] for _ in range(h)]
    neighbor_ids, neighbor_cos = decoder_neighbors(W_dec, config.n_neighbors)
    frame["neighbors"] = neighbor_ids.tolist()
    frame["neighbor_cosines"] = neighbor_cos.tolist()
    return pd.DataFrame(frame)


@torch.no_grad()
def feature_statistics(
    sae: Any,
    acts: IndexedActivations,
    tokenizer: Any = None,
    W_U: torch.Tensor | None = None,
    config: FeatureStatsConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables for `sae` over the first `config.n_tokens` tokens of `acts`.

    tokenizer: decodes token ids into strings (ids shown as '<id>' without one);
    W_U [d_in, d_vocab]: the model's unembedding for logit effects (skipped when None).
    """
    config = config or FeatureStatsConfig()
    config.check()
    sae.eval()
    d_in, d_sae = sae_width(sae)
    device = sae.W_dec.device
    if acts.n_tokens == 0:
        raise InvalidInputError("no tokens to compute feature statistics on")
    n = min(acts.n_tokens, config.n_tokens)
    acts = IndexedActivations(acts.read, acts.token_ids[:n], acts.doc_ids[:n],
                              acts.positions[:n], acts.doc_language)

    def encode(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != d_in:
            raise InvalidInputError(
                f"activations have width {x.shape[-1]} but the SAE expects d_in={d_in}; use the "
                "activations of the model and hook the SAE was trained on"
            )
        with flat_activations(sae):
            return dense(sae.encode(x.to(device=device, dtype=torch.float32))).float().cpu()

    languages, language_ids = _language_codes(acts)
    stats = FiringStats(d_sae, len(languages), config.top_k)
    for start, x in acts.chunks(config.chunk_size):
        stats.update(encode(x), start, language_ids[start:start + len(x)])

    edges = quantile_edges(stats.fine_hist, stats.max_acts, config.n_quantile_bins)
    samples = QuantileSamples(stats.max_acts, edges, config.hist_bins, config.per_bin, config.seed)
    for start, x in acts.chunks(config.chunk_size):
        samples.update(encode(x), start)

    chosen = _examples(stats, samples)
    windows = build_windows(chosen["centre"], chosen["feature"], acts.doc_ids, acts.positions,
                            config.radius)
    window_acts = gather_window_acts(windows, acts, encode, config.chunk_size)
    vocab_size = max(int(acts.token_ids.max()) + 1 if n else 0,
                     W_U.shape[1] if W_U is not None else 0,
                     len(tokenizer) if tokenizer is not None else 0)
    vocab = token_strings(tokenizer, vocab_size)
    contexts = contexts_frame(windows, window_acts, acts, vocab, chosen["kind"], chosen["bin"],
                              chosen["rank"])
    W_dec = sae.W_dec.detach().float().cpu()
    features = _features_frame(stats, samples, edges, languages, W_dec,
                               None if W_U is None else W_U.detach().float().cpu(), vocab, config)
    return features, contexts


def compute_feature_stats(
    lab: Lab,
    sae_name: str,
    n_tokens: int | None = None,
    acts_name: str | None = None,
    device: str | None = None,
    config: FeatureStatsConfig | None = None,
) -> dict[str, Any]:
    """Compute and store the feature statistics of lab SAE `sae_name` (both Parquet tables in
    its artifact folder, summary in its metrics). Returns the summary."""
    from saes.interop import load_sae
    from workbench.activations import open_activations
    from workbench.models.loading import load_model

    config = config or FeatureStatsConfig()
    if n_tokens is not None:
        config.n_tokens = int(n_tokens)
    config.check()
    art = lab.get(sae_name, kind="sae")
    sae = load_sae(sae_name, lab=lab, device=device)
    store = open_activations(lab, activations_of_sae(lab, art, acts_name))
    check_store_fits(sae, store, sae_name)
    model = load_model(store.model_name, lab=lab, device="cpu")
    acts = IndexedActivations.from_store(store, config.n_tokens)
    with lab.job("feature-stats", sae_name, asdict(config), total=3) as job:
        features, contexts = feature_statistics(sae, acts, tokenizer=model.tokenizer,
                                                W_U=model.W_U, config=config)
        write_tables(art.path, features, contexts)
        summary = {
            "feature_stats_tokens": int(min(acts.n_tokens, config.n_tokens)),
            "feature_stats_activations": store.name,
            "feature_stats_dead_fraction": float((features.n_fired == 0).mean()),
        }
        lab.update_metrics(sae_name, summary)
        job.update(3, force=True)
    return summary


def load_feature_stats(lab: Lab, sae_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, contexts) tables of lab SAE `sae_name` (see module docstring for columns)."""
    art = lab.get(sae_name, kind="sae")
    return read_tables(art.path, f"SAE {sae_name!r}")
