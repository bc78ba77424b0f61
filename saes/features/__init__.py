"""Pieces of the feature statistics (`saes.feature_stats` is the entry module): source
(activations with their token index), streaming (per-feature passes), contexts (token windows),
weights (logit effects, decoder neighbours), tables (Parquet files)."""
