"""Language models: tokenizers, presets, training, loading and hook names.

Entry points (each module has one job):
- `tokenizer`: byte-level BPE (`train_tokenizer`, `load_tokenizer`, tokenizer artifacts);
- `presets`: `lm_config(preset, d_vocab, ...)` -> HookedTransformerConfig;
- `training`: `train_lm(lab, name, corpus, tokenizer, model_cfg, train_cfg)` with
  `LMTrainConfig` from `train_config`;
- `loading`: `load_model(spec, lab=None, device=None)` for lab models, TransformerLens names and
  local Hugging Face folders;
- `hooks`: `validate_hook(model, hook_name)`, `hook_layer(hook_name)`;
- `generation`: `generate_text(model, prompt, ...)`;
- `architectures`: registry of model kinds (HookedTransformer, MoE-X, ...);
- `model_io` (artifact folder format), `token_data`, `schedules`, `resume`, `losses`: the pieces
  the above are built from.

Submodules are imported on use (importing this package does not load torch).
"""
