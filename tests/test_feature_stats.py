"""Feature statistics on a synthetic case where every latent fires on one known token."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from saes.feature_stats import FeatureStatsConfig, feature_statistics, load_feature_stats
from saes.features.source import IndexedActivations
from saes.features.tables import write_tables
from workbench.errors import NotFoundError
from workbench.lab import Lab

V = 12            # vocabulary = latents = d_in
N = 3000
DOC_LEN = 50


@pytest.fixture(scope="module")
def case():
    """Latent j fires (with activation in [0.5, 1.5]) exactly on token j; latent 11 only in
    German documents. Documents of 50 tokens, odd ones German."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V - 1, (N,), generator=gen)
    docs = torch.arange(N) // DOC_LEN
    german = docs % 2 == 1
    tokens[german & (torch.arange(N) % 7 == 0)] = V - 1
    scale = 1.0 + torch.rand(N, 1, generator=gen)
    acts = torch.eye(V)[tokens] * scale
    sae = StandardSAE(StandardSAEConfig(d_in=V, d_sae=V))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(V))
        sae.W_dec.copy_(torch.eye(V))
        sae.W_dec[4] = torch.nn.functional.normalize(torch.eye(V)[4] + 0.1 * torch.eye(V)[9], dim=0)
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
    languages = {int(d): ("de" if d % 2 else "en") for d in docs.unique()}
    source = IndexedActivations.from_tensors(acts, tokens, docs, torch.arange(N) % DOC_LEN,
                                             languages)
    W_U = torch.zeros(V, 20)
    W_U[torch.arange(V), torch.arange(V) + 3] = 1.0  # latent j promotes token j + 3
    W_U[torch.arange(V), torch.arange(V)] = -1.0     # ... and suppresses token j
    config = FeatureStatsConfig(chunk_size=700, top_k=5, n_quantile_bins=4, per_bin=3, radius=4)
    features, contexts = feature_statistics(sae, source, W_U=W_U, config=config)
    return tokens, docs, scale.squeeze(1) - 0.5, features, contexts


def test_frequency_and_activation_summary(case):
    tokens, _, expected_acts, features, _ = case
    counts = torch.bincount(tokens, minlength=V)
    assert features.n_fired.tolist() == counts.tolist()
    assert features.frequency.tolist() == pytest.approx((counts / N).tolist())
    for j in (0, 5, V - 1):
        on = expected_acts[tokens == j]
        assert features.max_act[j] == pytest.approx(float(on.max()), rel=1e-5)
        assert features.mean_act[j] == pytest.approx(float(on.mean()), rel=1e-4)
        assert sum(features.hist_counts[j]) == counts[j]


def test_top_contexts_centre_on_the_known_token(case):
    tokens, docs, expected_acts, _, contexts = case
    top3 = contexts[(contexts.feature == 3) & (contexts.kind == "top")].sort_values("rank")
    assert len(top3) == 5
    for row in top3.itertuples():
        assert row.token_ids[row.centre] == 3
        assert tokens[row.token_index] == 3
        assert row.acts[row.centre] == pytest.approx(row.activation, rel=1e-5)
        assert all(docs[row.token_index] == docs[row.token_index - row.centre + i]
                   for i in range(len(row.token_ids)))  # never crosses a document edge
        # the feature is zero on other tokens of the window and positive on its own token
        assert all((a > 0) == (t == 3) for a, t in zip(row.acts, row.token_ids))
    best = float(expected_acts[tokens == 3].max())
    assert top3.activation.iloc[0] == pytest.approx(best, rel=1e-5)
    assert top3.activation.is_monotonic_decreasing


def test_quantile_samples_fall_in_their_bins(case):
    _, _, _, features, contexts = case
    q = contexts[contexts.kind == "quantile"]
    assert set(q.bin) <= set(range(4))
    for row in q.itertuples():
        edges = features.quantile_edges[row.feature]
        assert edges[row.bin] - 1e-6 <= row.activation <= edges[row.bin + 1] + 1e-6
    # roughly equal-count bins: every bin of a common feature gets its samples
    assert q[q.feature == 0].groupby("bin").size().tolist() == [3, 3, 3, 3]


def test_language_logit_effects_and_neighbors(case):
    _, _, _, features, contexts = case
    assert features.top_language[V - 1] == "de"
    assert features.top_language_share[V - 1] == pytest.approx(1.0)
    assert set(contexts[contexts.feature == V - 1].language) == {"de"}
    assert features.top_logit_tokens[2][0] == "<5>"
    assert features.bottom_logit_tokens[2][0] == "<2>"
    assert features.neighbors[4][0] == 9 and features.neighbors[9][0] == 4
    assert features.neighbor_cosines[4][0] == pytest.approx(0.1 / (1.01 ** 0.5), rel=1e-4)


def test_dashboard_reader_round_trip(tmp_path, case):
    _, _, _, features, contexts = case
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("sae", "sae-a") as art:
        (art.path / "cfg.json").write_text("{}")
    with pytest.raises(NotFoundError, match="workbench sae stats"):
        load_feature_stats(lab, "sae-a")
    write_tables(lab.get("sae-a").path, features, contexts)
    got_features, got_contexts = load_feature_stats(lab, "sae-a")
    pd.testing.assert_frame_equal(got_features, features, check_dtype=False)
    assert got_contexts.tokens.map(list).tolist() == contexts.tokens.map(list).tolist()
    for got, want in zip(got_contexts.acts, contexts.acts):
        assert list(got) == pytest.approx(list(want))
    assert got_contexts.drop(columns=["token_ids", "tokens", "acts"]).equals(
        contexts.drop(columns=["token_ids", "tokens", "acts"]))
    assert not list(lab.get("sae-a").path.glob(".*tmp"))
