"""Feature browsing: search SAE features and look at one feature live (the dashboard's feature
browser calls these; the stored tables come from `saes.feature_stats`).

    hits = search_by_token(features, contexts, " Hund")        # features firing on that token
    hits = search_by_logit(features, " Hund")                  # features promoting that token
    text = encode_text(sae, model, hook, "Der Hund schläft")   # tokens + codes [T, h]
    ranked = rank_on_text(text.codes, position=None)           # which features fire here
    effects = logit_effect_values(sae, model, feature=12)      # [V] all logit effects
    corr = correlated_features(sample_codes(sae, store), 12)   # most correlated features

Every function takes an SAE as a sae-lens object and a TransformerLens model, so lab SAEs,
imported sae-lens SAEs and models named by the user all work. Steering with a feature lives in
the `steering` package (`SteeringVector.from_feature`, `steering.generation.clamp_feature`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saes.evaluation.encoding import dense, flat_activations, sae_width
from workbench.errors import InvalidInputError
from workbench.models.hooks import validate_hook
from workbench.models.inspect import token_strings, tokenize


# -- search over the stored tables -------------------------------------------------------------
@dataclass
class FeatureTables:
    """The stored tables of one SAE with a per-feature index of the contexts (row positions),
    so one feature's examples are found without scanning the whole table."""

    features: pd.DataFrame
    contexts: pd.DataFrame
    rows_of: dict[int, Any]

    @classmethod
    def load(cls, lab: Any, sae_name: str) -> FeatureTables:
        from saes.feature_stats import load_feature_stats

        features, contexts = load_feature_stats(lab, sae_name)
        by_id = features.set_axis(features["feature"].to_numpy(), axis=0)  # row by feature id
        return cls(by_id, contexts,
                   {int(k): v for k, v in contexts.groupby("feature").indices.items()})

    def row(self, feature: int) -> pd.Series:
        if feature not in self.features.index:
            raise InvalidInputError(f"feature {feature} is not in the statistics table")
        return self.features.loc[feature]

    def contexts_of(self, feature: int) -> pd.DataFrame:
        return self.contexts.iloc[self.rows_of.get(int(feature), [])]


def _normalise(token: str) -> str:
    return token.strip().lower()


def search_by_token(features: pd.DataFrame, contexts: pd.DataFrame, token: str,
                    limit: int = 20) -> pd.DataFrame:
    """Features whose top-activating examples sit on `token` (case and surrounding spaces
    ignored): columns feature, hits (top examples on it), max_act (on it), frequency."""
    wanted = _normalise(token)
    if not wanted:
        raise InvalidInputError("type a token to search for")
    top = contexts[contexts.kind == "top"]
    centre = [toks[c] if 0 <= c < len(toks) else "" for toks, c in zip(top.tokens, top.centre)]
    on = top[[_normalise(t) == wanted for t in centre]]
    if on.empty:
        return pd.DataFrame(columns=["feature", "hits", "max_act", "frequency"])
    grouped = on.groupby("feature").agg(hits=("activation", "size"),
                                        max_act=("activation", "max")).reset_index()
    grouped = grouped.merge(features[["feature", "frequency"]], on="feature", how="left")
    return grouped.sort_values(["hits", "max_act"], ascending=False).head(limit)


def search_by_logit(features: pd.DataFrame, token: str, limit: int = 20) -> pd.DataFrame:
    """Features with `token` among their top positive logit effects: columns feature, rank
    (0 = strongest), effect, frequency."""
    wanted = _normalise(token)
    if not wanted:
        raise InvalidInputError("type a token to search for")
    rows = []
    for feature, tokens, values, freq in zip(features.feature, features.top_logit_tokens,
                                             features.top_logit_values, features.frequency):
        for rank, (tok, value) in enumerate(zip(tokens, values)):
            if _normalise(tok) == wanted:
                rows.append({"feature": int(feature), "rank": rank, "effect": float(value),
                             "frequency": float(freq)})
                break
    out = pd.DataFrame(rows, columns=["feature", "rank", "effect", "frequency"])
    return out.sort_values(["rank", "effect"], ascending=[True, False]).head(limit)


def feature_contexts(own: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top examples ordered by rank, quantile examples ordered by bin, highest first, then
    rank) of one feature's context rows."""
    top = own[own.kind == "top"].sort_values("rank")
    quant = own[own.kind == "quantile"].sort_values(["bin", "rank"], ascending=[False, True])
    return top, quant


# -- live encoding -----------------------------------------------------------------------------
@dataclass
class EncodedText:
    """A text through model and SAE: tokens [T] strings, token_ids [T], codes [T, h]."""

    tokens: list[str]
    token_ids: list[int]
    codes: torch.Tensor


@torch.no_grad()
def encode_acts(sae: Any, acts: torch.Tensor) -> torch.Tensor:
    """Dense SAE code of activations [n, d_in] -> [n, h] (float32, CPU)."""
    device = sae.W_dec.device
    with flat_activations(sae):
        return dense(sae.encode(acts.to(device=device, dtype=torch.float32))).float().cpu()


@torch.no_grad()
def encode_text(sae: Any, model: HookedTransformer, hook: str, text: str) -> EncodedText:
    """Run `text` through the model up to `hook` and encode it with the SAE."""
    validate_hook(model, hook)
    tokens = tokenize(model, text)
    layer = hook.split(".")[1] if hook.startswith("blocks.") else None
    stop = int(layer) + 1 if layer is not None and layer.isdigit() else None
    _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=stop)
    acts = cache[hook][0]
    if acts.dim() != 2:
        acts = acts.reshape(acts.shape[0], -1)
    if acts.shape[-1] != sae_width(sae)[0]:
        raise InvalidInputError(
            f"{hook} has width {acts.shape[-1]} but the SAE reads {sae_width(sae)[0]}; pick the "
            "model and hook the SAE was trained on"
        )
    ids = tokens[0].tolist()
    return EncodedText(token_strings(model, ids), ids, encode_acts(sae, acts))


def rank_on_text(codes: torch.Tensor, position: int | None = None, limit: int = 20,
                 skip_first: bool = True) -> pd.DataFrame:
    """Features ranked by activation on a text (codes [T, h]): at one `position`, or by their
    maximum over the text (BOS skipped). Columns feature, activation, fires_on (positions)."""
    body = codes[1:] if skip_first and len(codes) > 1 else codes
    offset = 1 if skip_first and len(codes) > 1 else 0
    if position is not None:
        if not 0 <= position < len(codes):
            raise InvalidInputError(f"position {position} is outside the text (0..{len(codes) - 1})")
        values = codes[position]
        fires = None
    else:
        values = body.max(0).values
        fires = (body > 0).sum(0)
    top = values.topk(min(limit, len(values)))
    rows = []
    for feature, value in zip(top.indices.tolist(), top.values.tolist()):
        if value <= 0:
            break
        rows.append({"feature": feature, "activation": value,
                     "fires_on": int(fires[feature]) if fires is not None else int(value > 0),
                     "peak_position": int(body[:, feature].argmax()) + offset})
    return pd.DataFrame(rows, columns=["feature", "activation", "fires_on", "peak_position"])


# -- weights -----------------------------------------------------------------------------------
@torch.no_grad()
def logit_effect_values(sae: Any, model: HookedTransformer, feature: int) -> torch.Tensor:
    """The feature's direct effect on every logit, W_dec[feature] @ W_U -> [V] (final layer
    norm ignored, as in `saes.features.weights`)."""
    d_in, h = sae_width(sae)
    if not 0 <= feature < h:
        raise InvalidInputError(f"feature {feature} does not exist; the SAE has {h} (0..{h - 1})")
    if model.W_U.shape[0] != d_in:
        raise InvalidInputError(
            f"the SAE's width {d_in} is not the model's d_model {model.W_U.shape[0]}: logit "
            "effects need an SAE on the residual stream"
        )
    return (sae.W_dec[feature].float().to(model.W_U.device) @ model.W_U.float()).cpu()


@torch.no_grad()
def sample_codes(sae: Any, read, n_tokens: int, chunk: int = 4096) -> torch.Tensor:
    """Dense codes of the first `n_tokens` activations: read(start, stop) -> [n, d_in];
    returns [n, h] float16 (for correlations)."""
    parts = []
    for start in range(0, n_tokens, chunk):
        parts.append(encode_acts(sae, read(start, min(start + chunk, n_tokens))).half())
    if not parts:
        raise InvalidInputError("no activations to sample feature codes from")
    return torch.cat(parts)


@torch.no_grad()
def correlated_features(codes: torch.Tensor, feature: int, k: int = 8) -> pd.DataFrame:
    """The k features whose activations correlate most (Pearson, over the sampled tokens) with
    `feature`: codes [n, h] -> columns feature, correlation, co_fires (tokens both fire)."""
    x = codes.float()
    if not 0 <= feature < x.shape[1]:
        raise InvalidInputError(f"feature {feature} is outside 0..{x.shape[1] - 1}")
    centred = x - x.mean(0, keepdim=True)
    target = centred[:, feature]
    norm = centred.norm(dim=0) * target.norm()
    corr = (centred.T @ target) / norm.clamp_min(1e-12)
    corr[feature] = -float("inf")
    corr[norm == 0] = -float("inf")
    top = corr.topk(min(k, len(corr) - 1))
    fires = x[:, feature] > 0
    rows = [{"feature": int(i), "correlation": float(c),
             "co_fires": int(((x[:, i] > 0) & fires).sum())}
            for i, c in zip(top.indices.tolist(), top.values.tolist()) if c > -float("inf")]
    return pd.DataFrame(rows, columns=["feature", "correlation", "co_fires"])


@torch.no_grad()
def window_predictions(model: HookedTransformer, windows: list[list[int]], k: int = 3
                       ) -> list[list[list[tuple[str, float]]]]:
    """The model's top-k next tokens after each token of each window (for hover text): windows
    of token ids -> [window][position][(token, prob)]. Windows run BOS-led, one batch each."""
    out = []
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    for ids in windows:
        if not ids:
            out.append([])
            continue
        prefix = [bos] if bos is not None else []
        tokens = torch.tensor([prefix + list(ids)], device=model.W_U.device)
        probs = model(tokens)[0, len(prefix):].float().softmax(-1)
        top = probs.topk(k, dim=-1)
        out.append([[(model.tokenizer.decode([i]), float(p)) for i, p in zip(ri, rp)]
                    for ri, rp in zip(top.indices.tolist(), top.values.tolist())])
    return out


def decoder_cosines(sae: Any, feature: int, k: int = 8) -> pd.DataFrame:
    """The k features with the most similar decoder direction: columns feature, cosine."""
    unit = F.normalize(sae.W_dec.detach().float(), dim=-1)
    sims = unit @ unit[feature]
    sims[feature] = -float("inf")
    top = sims.topk(min(k, len(sims) - 1))
    return pd.DataFrame({"feature": top.indices.tolist(), "cosine": top.values.tolist()})
