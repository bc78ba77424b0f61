"""Export a lab language model (a `HookedTransformer`) as a Hugging Face `transformers` model.

Two layouts cover the presets (`workbench.models.presets`):

- GPT-2 style (`GPT2LMHeadModel`): LayerNorm, learned absolute positions, a plain MLP with GELU,
  ReLU or SiLU, multi-head attention (no key/value grouping), d_model = n_heads x d_head;
- Llama style (`LlamaForCausalLM`): RMSNorm, rotary positions (GPT-NeoX pairing over the whole
  head), a gated MLP (SiLU, GELU or ReLU), optional grouped-query attention. TransformerLens adds
  the gated MLP's `b_in` after the gate product; that constant goes through `W_out`, so it is
  folded into `down_proj.bias` exactly.

Everything else (other combinations, MoE layers, parallel attention+MLP, local attention, QK
norms, logit soft caps, ...) is refused with the reason. GPT-2 and Llama heads have no bias, so a
model with a nonzero unembedding bias `b_U` is refused too.

    hf_model = to_hf_model(model)                        # a transformers PreTrainedModel
    report = export_hf(model, tokenizer, "out/lm-hf")    # save_pretrained folder + tokenizer
    AutoModelForCausalLM.from_pretrained("out/lm-hf")    # logits equal the HookedTransformer's

Weight layouts: TransformerLens stores W_Q/W_K/W_V as [n_heads, d_model, d_head], W_O as
[n_heads, d_head, d_model], W_in/W_gate as [d_model, d_mlp], W_out as [d_mlp, d_model],
W_E as [d_vocab, d_model], W_U as [d_model, d_vocab]. GPT-2's Conv1D weights are [in, out];
Llama's nn.Linear weights are [out, in].
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from workbench.errors import InvalidInputError
from workbench.lab import Lab, write_json
from workbench.models.architectures import DEFAULT_ARCHITECTURE

GPT2_STYLE = "gpt2"
LLAMA_STYLE = "llama"
GPT2_ACTS = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "silu": "silu"}
LLAMA_ACTS = {"silu": "silu", "gelu": "gelu", "relu": "relu"}
EXPORT_INFO_FILE = "workbench_export.json"
_CHECK_TOLERANCE = 1e-3

# Config switches with the value a GPT-2 or Llama model has; any other value is refused.
_PLAIN_SWITCHES: dict[str, Any] = {
    "attn_only": False, "parallel_attn_mlp": False, "use_local_attn": False,
    "attention_dir": "causal", "use_qk_norm": False, "clip_qkv": None, "use_logn_attn": False,
    "attn_scores_soft_cap": -1.0, "output_logits_soft_cap": -1.0, "post_embedding_ln": False,
    "use_normalization_before_and_after": False, "use_attention_sinks": False,
    "num_experts": None, "use_attn_scale": True,
}
_PLAIN_ROTARY: dict[str, Any] = {
    "rotary_adjacent_pairs": False, "use_NTK_by_parts_rope": False, "use_yarn_rope": False,
    "use_dynamic_ntk_rope": False, "rotary_scaling_factor": 1.0,
}


@dataclass(frozen=True)
class HFExportReport:
    """What `export_hf` wrote: the folder, the layout, and the measured logit agreement."""

    out_dir: str
    style: str
    architecture: str
    n_params: int
    max_abs_logit_diff: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- which layout ----------------------------------------------------------------------------
def hf_style(model: HookedTransformer) -> str:
    """"gpt2" or "llama": the transformers layout that reproduces `model` exactly.

    Raises InvalidInputError naming every part that neither layout has.
    """
    cfg = model.cfg
    problems = [f"{key}={getattr(cfg, key, None)!r} (needs {want!r})"
                for key, want in _PLAIN_SWITCHES.items() if getattr(cfg, key, want) != want]
    if cfg.attn_scale != math.sqrt(cfg.d_head):
        problems.append(f"attn_scale={cfg.attn_scale} (needs sqrt(d_head)={math.sqrt(cfg.d_head)})")
    if getattr(cfg, "d_vocab_out", cfg.d_vocab) not in (-1, cfg.d_vocab):
        problems.append(f"d_vocab_out={cfg.d_vocab_out} differs from d_vocab={cfg.d_vocab}")
    b_u = getattr(model, "b_U", None)
    if b_u is not None and bool((b_u != 0).any()):
        problems.append(
            f"the unembedding bias b_U is nonzero (max |b_U| = {b_u.abs().max().item():.3g}): "
            "GPT-2 and Llama heads have no bias, so the logits could not be reproduced; train "
            "the model with a zero unembedding bias")
    if problems:
        raise InvalidInputError("cannot export this model to transformers: " + "; ".join(problems))

    gqa = cfg.n_key_value_heads is not None and cfg.n_key_value_heads != cfg.n_heads
    norm, pos, gated = cfg.normalization_type, cfg.positional_embedding_type, cfg.gated_mlp
    if norm == "LN" and pos == "standard" and not gated:
        reasons = []
        if gqa:
            reasons.append("grouped-query attention (GPT-2 has one key/value head per head)")
        if cfg.act_fn not in GPT2_ACTS:
            reasons.append(f"act_fn {cfg.act_fn!r} (GPT-2 style takes {sorted(GPT2_ACTS)})")
        if cfg.n_heads * cfg.d_head != cfg.d_model:
            reasons.append(f"n_heads x d_head = {cfg.n_heads * cfg.d_head} != d_model "
                           f"{cfg.d_model}")
        if cfg.scale_attn_by_inverse_layer_idx:
            reasons.append("scale_attn_by_inverse_layer_idx")
        if reasons:
            raise InvalidInputError("cannot export this LayerNorm/learned-position model as "
                                    "GPT-2: " + "; ".join(reasons))
        return GPT2_STYLE
    if norm == "RMS" and pos == "rotary" and gated:
        reasons = [f"{key}={getattr(cfg, key)!r}" for key, want in _PLAIN_ROTARY.items()
                   if getattr(cfg, key, want) != want]
        if cfg.rotary_dim != cfg.d_head:
            reasons.append(f"rotary_dim={cfg.rotary_dim} (Llama rotates the whole head, "
                           f"d_head={cfg.d_head})")
        if cfg.act_fn not in LLAMA_ACTS:
            reasons.append(f"act_fn {cfg.act_fn!r} (Llama style takes {sorted(LLAMA_ACTS)})")
        if reasons:
            raise InvalidInputError("cannot export this RMSNorm/rotary model as Llama: "
                                    + "; ".join(reasons))
        return LLAMA_STYLE
    raise InvalidInputError(
        f"cannot export a model with normalization={norm!r}, positional={pos!r}, "
        f"gated_mlp={gated} to transformers: the supported layouts are GPT-2 style "
        "(--norm LN --positional standard, no --gated, no --kv-heads) and Llama style "
        "(--norm RMS --positional rotary --gated); retrain with one of them")


# -- conversion ------------------------------------------------------------------------------
def to_hf_model(model: HookedTransformer) -> torch.nn.Module:
    """A `transformers` causal LM (float32, eval mode, on the CPU) with `model`'s weights."""
    style = hf_style(model)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if style == GPT2_STYLE:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_model = GPT2LMHeadModel(_gpt2_config(model.cfg, GPT2Config, model.tokenizer))
        # n_ctx is read by llama.cpp's and TransformerLens' converters; transformers 5 no
        # longer writes it
        hf_model.config.n_ctx = model.cfg.n_ctx
        weights = _gpt2_weights(model.cfg, state)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        has_attn_bias = any(bool(v.any()) for k, v in state.items()
                            if k.endswith(("attn.b_Q", "attn.b_K", "attn.b_V", "attn.b_O",
                                           "attn._b_K", "attn._b_V")))
        has_mlp_bias = any(bool(v.any()) for k, v in state.items()
                           if k.endswith(("mlp.b_in", "mlp.b_out")))
        hf_model = LlamaForCausalLM(_llama_config(model.cfg, LlamaConfig, model.tokenizer,
                                                  has_attn_bias, has_mlp_bias))
        weights = _llama_weights(model.cfg, state, has_attn_bias, has_mlp_bias)
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".masked_bias", "inv_freq"))]
    if missing or unexpected:  # a bug in the mapping, not bad input
        raise RuntimeError(f"HF export mapping incomplete: missing {missing}, unexpected "
                           f"{unexpected}")
    return hf_model.eval()


def _token_ids(tokenizer: Any) -> dict[str, int | None]:
    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer is not None:
        ids = {k: getattr(tokenizer, k, None) for k in ids}
    return ids


def _gpt2_config(cfg: Any, config_cls: type, tokenizer: Any) -> Any:
    return config_cls(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function=GPT2_ACTS[cfg.act_fn],
        layer_norm_epsilon=cfg.eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=False, scale_attn_weights=True, use_cache=True,
        **_token_ids(tokenizer),
    )


def _llama_config(cfg: Any, config_cls: type, tokenizer: Any, attn_bias: bool,
                  mlp_bias: bool) -> Any:
    return config_cls(
        vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads or cfg.n_heads, head_dim=cfg.d_head,
        hidden_act=LLAMA_ACTS[cfg.act_fn], max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.eps, rope_parameters={"rope_type": "default",
                                                "rope_theta": float(cfg.rotary_base)},
        attention_bias=attn_bias, mlp_bias=mlp_bias, tie_word_embeddings=False,
        attention_dropout=0.0, use_cache=True, **_token_ids(tokenizer),
    )


def _heads_in(w: torch.Tensor) -> torch.Tensor:
    """[n_heads, d_model, d_head] -> [d_model, n_heads * d_head]."""
    return w.permute(1, 0, 2).reshape(w.shape[1], -1)


def _gpt2_weights(cfg: Any, s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": s["embed.W_E"], "transformer.wpe.weight": s["pos_embed.W_pos"],
           "transformer.ln_f.weight": s["ln_final.w"], "transformer.ln_f.bias": s["ln_final.b"],
           "lm_head.weight": s["unembed.W_U"].T.contiguous()}
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv = [_heads_in(s[b + f"attn.W_{x}"]) for x in "QKV"]
        out.update({
            h + "ln_1.weight": s[b + "ln1.w"], h + "ln_1.bias": s[b + "ln1.b"],
            h + "ln_2.weight": s[b + "ln2.w"], h + "ln_2.bias": s[b + "ln2.b"],
            h + "attn.c_attn.weight": torch.cat(qkv, dim=1),
            h + "attn.c_attn.bias": torch.cat([s[b + f"attn.b_{x}"].reshape(-1) for x in "QKV"]),
            h + "attn.c_proj.weight": s[b + "attn.W_O"].reshape(-1, cfg.d_model),
            h + "attn.c_proj.bias": s[b + "attn.b_O"],
            h + "mlp.c_fc.weight": s[b + "mlp.W_in"], h + "mlp.c_fc.bias": s[b + "mlp.b_in"],
            h + "mlp.c_proj.weight": s[b + "mlp.W_out"], h + "mlp.c_proj.bias": s[b + "mlp.b_out"],
        })
    return {k: v.contiguous() for k, v in out.items()}


def _llama_weights(cfg: Any, s: dict[str, torch.Tensor], attn_bias: bool,
                   mlp_bias: bool) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": s["embed.W_E"], "model.norm.weight": s["ln_final.w"],
           "lm_head.weight": s["unembed.W_U"].T}
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        kv = "_" if f"{b}attn._W_K" in s else ""  # grouped-query attention stores _W_K / _W_V
        out.update({
            h + "input_layernorm.weight": s[b + "ln1.w"],
            h + "post_attention_layernorm.weight": s[b + "ln2.w"],
            h + "self_attn.q_proj.weight": _heads_in(s[b + "attn.W_Q"]).T,
            h + "self_attn.k_proj.weight": _heads_in(s[b + f"attn.{kv}W_K"]).T,
            h + "self_attn.v_proj.weight": _heads_in(s[b + f"attn.{kv}W_V"]).T,
            h + "self_attn.o_proj.weight": s[b + "attn.W_O"].reshape(-1, cfg.d_model).T,
            h + "mlp.gate_proj.weight": s[b + "mlp.W_gate"].T,
            h + "mlp.up_proj.weight": s[b + "mlp.W_in"].T,
            h + "mlp.down_proj.weight": s[b + "mlp.W_out"].T,
        })
        if attn_bias:
            out.update({
                h + "self_attn.q_proj.bias": s[b + "attn.b_Q"].reshape(-1),
                h + "self_attn.k_proj.bias": s[b + f"attn.{kv}b_K"].reshape(-1),
                h + "self_attn.v_proj.bias": s[b + f"attn.{kv}b_V"].reshape(-1),
                h + "self_attn.o_proj.bias": s[b + "attn.b_O"],
            })
        if mlp_bias:
            # TransformerLens: (act(x W_gate) * (x W_in) + b_in) W_out + b_out
            out.update({
                h + "mlp.gate_proj.bias": torch.zeros(cfg.d_mlp),
                h + "mlp.up_proj.bias": torch.zeros(cfg.d_mlp),
                h + "mlp.down_proj.bias": s[b + "mlp.b_out"] + s[b + "mlp.b_in"] @ s[b + "mlp.W_out"],
            })
    return {k: v.contiguous() for k, v in out.items()}


# -- writing ---------------------------------------------------------------------------------
def export_hf(model: HookedTransformer, tokenizer: Any, out_dir: str | os.PathLike,
              overwrite: bool = False, check: bool = True,
              source: dict[str, Any] | None = None) -> HFExportReport:
    """Write `model` as a transformers `save_pretrained` folder with `tokenizer` beside it.

    The folder is written under a temporary name and renamed into place, so a failure leaves
    nothing behind. With `check`, the written folder is loaded back with
    `AutoModelForCausalLM.from_pretrained` and its logits on a probe sequence are compared with
    `model`'s (the measured max |difference| is in the report; above 1e-3 is an error).
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{out} already exists; pick another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is a file, not a folder; pick another --out")
    if tokenizer is None:
        raise InvalidInputError("the model has no tokenizer to export with it; set one with "
                                "model.set_tokenizer(tok)")
    style = hf_style(model)
    hf_model = to_hf_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        hf_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        diff = max_logit_diff(model, tmp) if check else None
        if diff is not None and not diff <= _CHECK_TOLERANCE:
            raise InvalidInputError(f"the exported model's logits differ from the original by "
                                    f"{diff:.3g} (> {_CHECK_TOLERANCE}); not written")
        report = HFExportReport(out_dir=str(out), style=style,
                                architecture=type(hf_model).__name__,
                                n_params=sum(p.numel() for p in hf_model.parameters()),
                                max_abs_logit_diff=diff)
        write_json(tmp / EXPORT_INFO_FILE, {**report.to_dict(), "source": source or {}})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def probe_tokens(model: HookedTransformer, n_tokens: int = 32, seed: int = 0) -> torch.Tensor:
    """[1, n_tokens] token ids: BOS then random ids (reproducible), within the context length."""
    n = min(n_tokens, model.cfg.n_ctx)
    gen = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, model.cfg.d_vocab, (1, n), generator=gen)
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    if bos is not None:
        toks[0, 0] = bos
    return toks


@torch.no_grad()
def max_logit_diff(model: HookedTransformer, hf_dir: str | os.PathLike,
                   tokens: torch.Tensor | None = None) -> float:
    """max |logits(HF folder) - logits(model)| over `tokens` (default: `probe_tokens`)."""
    from transformers import AutoModelForCausalLM

    tokens = probe_tokens(model) if tokens is None else tokens
    hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    device = next(model.parameters()).device
    tl_logits = model(tokens.to(device)).float().cpu()
    hf_logits = hf_model(tokens).logits.float()
    return float((hf_logits - tl_logits).abs().max())


def export_lab_model_hf(lab: Lab, name: str, out_dir: str | os.PathLike,
                        overwrite: bool = False) -> HFExportReport:
    """`workbench lm export-hf NAME --out DIR`: export the lab model `name` (or `name@step`)."""
    from workbench.models.loading import load_model

    base = name.split("@", 1)[0]
    art = lab.get(base, kind="model")
    arch = art.manifest.get("architecture", DEFAULT_ARCHITECTURE)
    if arch != DEFAULT_ARCHITECTURE:
        raise InvalidInputError(
            f"model {base!r} has architecture {arch!r}; only plain HookedTransformer models "
            f"({DEFAULT_ARCHITECTURE!r}) export to GPT-2 or Llama layouts")
    model = load_model(name, lab=lab, device="cpu")
    return export_hf(model, model.tokenizer, out_dir, overwrite=overwrite,
                     source={"lab": str(lab.root), "model": name, "parents": art.parents})


def hf_model_type(cfg: Any) -> str | None:
    """The transformers `model_type` ("gpt2" or "llama") a model of this config exports to,
    or None when its layout is neither (the weights, e.g. b_U, are not looked at)."""
    norm, pos, gated = cfg.normalization_type, cfg.positional_embedding_type, cfg.gated_mlp
    if norm == "LN" and pos == "standard" and not gated:
        return GPT2_STYLE
    if norm == "RMS" and pos == "rotary" and gated:
        return LLAMA_STYLE
    return None
