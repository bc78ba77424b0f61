"""Analyses of sparsity inside language models, on any model `workbench.models.load_model` loads.

One module per analysis, one entry each (all store Parquet tables + summary.json as an artifact
of kind `analysis` when given a `name`; the module docstrings list the tables' columns):

- `sparsity`: MLP activation sparsity by CETT / PPL-p% with baselines -> `analyze_sparsity`;
- `sparsity_law`: the PPL-p% activation ratio along training (kept checkpoints) and the fitted
  laws of "Sparsing Law" -> `analyze_sparsity_law` (`fit_law` for a curve);
- `attention`: k@p coverage, entropy, sink/local mass, pattern class per head, and the loss of
  block top-k / vertical-slash / BLASST sparse attention (through `sparse_ops`) ->
  `analyze_attention`; `attention_budget`: the same kind of what-if live on one text, through
  TransformerLens' hook_pattern (keep the top fraction or the top key blocks of each row) ->
  `text_whatif`;
- `depth`: angular distances, layer skipping, affine-replacement usefulness, variances, causal
  scores -> `analyze_depth` (`compare_depth` for a table across models);
- `bench`: timing of the three over a token budget and the attention metrics' peak memory.

Submodules are imported on use.
"""
