"""Streaming per-feature statistics over chunks of latent codes (bounded memory).

Pass 1 (`FiringStats`): firing counts, sum and max of activations, firing counts per language,
a fine histogram of log10 activation on fixed global edges (for approximate quantiles), and the
running top-k activating tokens per feature.
Pass 2 (`QuantileSamples`): a linear histogram from 0 to each feature's max and a uniform sample
of tokens from each activation-quantile bin of each feature (quantile edges from pass 1).
"""

from __future__ import annotations

import torch

from saes.evaluation.sampling import GroupedBottomK

LOG10_RANGE = (-4.0, 4.0)
LOG10_BINS = 400
"""Global edges of the fine log10 histogram: 0.02 decades per bin from 1e-4 to 1e4."""


def log10_bin(values: torch.Tensor) -> torch.Tensor:
    """Fine-histogram bin of positive activations [m] -> [m] int64 in [0, LOG10_BINS)."""
    low, high = LOG10_RANGE
    scaled = (torch.log10(values.clamp_min(1e-30)) - low) / (high - low) * LOG10_BINS
    return scaled.floor().long().clamp(0, LOG10_BINS - 1)


def log10_edges() -> torch.Tensor:
    """Edges [LOG10_BINS + 1] (in activation units) of the fine histogram."""
    return torch.logspace(LOG10_RANGE[0], LOG10_RANGE[1], LOG10_BINS + 1, dtype=torch.float64)


def quantile_edges(fine_hist: torch.Tensor, max_act: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Approximate quantile edges of each feature's firing activations from its fine histogram.

    fine_hist [h, LOG10_BINS], max_act [h] -> edges [h, n_bins + 1]: edges[:, 0] = 0,
    edges[:, -1] = max_act; inner edge q is the upper edge of the fine bin where the cumulative
    count first reaches q / n_bins of the feature's firings (0.02-decade resolution, about 5%).
    """
    cum = fine_hist.double().cumsum(-1)
    total = cum[:, -1:].clamp_min(1)
    targets = torch.arange(1, n_bins, dtype=torch.float64) / n_bins  # [n_bins - 1]
    idx = torch.searchsorted(cum / total, targets.expand(len(cum), -1).contiguous())
    upper = log10_edges()[1:]
    inner = upper[idx.clamp(max=LOG10_BINS - 1)].float()
    inner = torch.minimum(inner, max_act[:, None].float())
    zeros = torch.zeros(len(cum), 1)
    return torch.cat([zeros, inner, max_act[:, None].float()], dim=1)


def bin_of(values: torch.Tensor, features: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each firing event among its feature's edges: values, features [m];
    edges [h, n_bins + 1] -> [m] int64 in [0, n_bins)."""
    n_bins = edges.shape[1] - 1
    inner = edges[features][:, 1:-1].contiguous()  # [m, n_bins - 1]
    return torch.searchsorted(inner, values[:, None].contiguous(), right=True).squeeze(1).clamp(
        0, n_bins - 1
    )


def firing_events(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token rows, features, values) of the positive entries of a code f [n, h]."""
    rows, features = torch.nonzero(f > 0, as_tuple=True)
    return rows, features, f[rows, features]


class FiringStats:
    """Pass 1 over codes f [n, h] (see module docstring)."""

    def __init__(self, d_sae: int, n_languages: int, top_k: int):
        self.d_sae = d_sae
        self.n_tokens = 0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long)
        self.sum_acts = torch.zeros(d_sae, dtype=torch.float64)
        self.max_acts = torch.zeros(d_sae)
        self.language_counts = torch.zeros(d_sae, max(n_languages, 1), dtype=torch.long)
        self.fine_hist = torch.zeros(d_sae, LOG10_BINS, dtype=torch.long)
        self.top = GroupedBottomK(top_k, d_sae)

    @torch.no_grad()
    def update(self, f: torch.Tensor, offset: int, language_ids: torch.Tensor) -> None:
        """f [n, h] dense code of tokens offset..offset+n; language_ids [n] int64 (-1 unknown)."""
        f = f.float().cpu()
        self.n_tokens += len(f)
        rows, features, values = firing_events(f)
        self.fire_counts += torch.bincount(features, minlength=self.d_sae)
        self.sum_acts += torch.bincount(features, weights=values.double(), minlength=self.d_sae)
        self.max_acts.scatter_reduce_(0, features, values, reduce="amax")
        flat = features * LOG10_BINS + log10_bin(values)
        self.fine_hist += torch.bincount(flat, minlength=self.d_sae * LOG10_BINS).view(
            self.d_sae, LOG10_BINS)
        n_lang = self.language_counts.shape[1]
        lang = language_ids[rows]
        known = lang >= 0
        self.language_counts += torch.bincount(
            features[known] * n_lang + lang[known], minlength=self.d_sae * n_lang
        ).view(self.d_sae, n_lang)
        self.top.add(features, -values, token=rows + offset, act=values)


class QuantileSamples:
    """Pass 2: linear activation histograms and uniform samples per quantile bin."""

    def __init__(self, max_acts: torch.Tensor, edges: torch.Tensor, hist_bins: int,
                 per_bin: int, seed: int = 0):
        self.max_acts = max_acts.float()
        self.edges = edges
        self.n_bins = edges.shape[1] - 1
        self.hist_bins = hist_bins
        self.hist = torch.zeros(len(max_acts), hist_bins, dtype=torch.long)
        self.samples = GroupedBottomK(per_bin, len(max_acts) * self.n_bins)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, f: torch.Tensor, offset: int) -> None:
        f = f.float().cpu()
        rows, features, values = firing_events(f)
        d_sae = len(self.max_acts)
        scale = self.max_acts[features].clamp_min(1e-30)
        hist_bin = (values / scale * self.hist_bins).floor().long().clamp(0, self.hist_bins - 1)
        self.hist += torch.bincount(features * self.hist_bins + hist_bin,
                                    minlength=d_sae * self.hist_bins).view(d_sae, self.hist_bins)
        q_bin = bin_of(values, features, self.edges)
        keys = torch.rand(len(values), generator=self.generator)
        self.samples.add(features * self.n_bins + q_bin, keys,
                         token=rows + offset, act=values, feature=features, bin=q_bin)
