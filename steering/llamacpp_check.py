"""End-to-end check of the llama.cpp path: a lab model and a steering vector taken to llama.cpp
the way a user does it, compared with TransformerLens.

1. the model is exported to transformers (`workbench.models.export_hf`) and converted to GGUF
   with llama.cpp's own converter (`workbench.models.llamacpp`, f32 weights);
2. the vector is exported as a GGUF control vector (`steering.export`);
3. llama.cpp (through the `llama_cpp` bindings of llama-cpp-python) loads the model, and the
   control vector is read the way llama.cpp's `--control-vector` loader reads it
   (`direction.N` -> layer N, scale 1) and set with `llama_set_adapter_cvec` over layers
   1..n_layer, as llama.cpp's common code does;
4. logits at every position of a prompt, without and with the vector, are compared with the
   HookedTransformer's, and the token ids of both tokenizers are compared on texts.

    figures = run_llamacpp_check(model, vector, texts, work_dir, llama_cpp_dir)

Needs `llama_cpp` (pip install llama-cpp-python; see docs/usage.md) and a llama.cpp source tree
(the converter); both are optional dependencies of the workbench.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steering.export import ModelShape, export_vector, read_gguf
from steering.vectors import SteeringVector
from workbench.errors import NotFoundError
from workbench.models.export_hf import export_hf
from workbench.models.llamacpp import convert_to_gguf


def import_llama_cpp() -> Any:
    """The `llama_cpp` module, or NotFoundError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise NotFoundError("llama_cpp is not installed: `pip install llama-cpp-python` builds "
                            "llama.cpp from source (see docs/usage.md)") from exc
    return llama_cpp


def control_vector_buffer(path: str | os.PathLike, n_layers: int, n_embd: int,
                          scale: float = 1.0) -> np.ndarray:
    """The float32 buffer [(n_layers - 1) * n_embd] that llama.cpp's control-vector loader
    builds from a GGUF file: `direction.N` times `scale` at rows N - 1 (layer 0 is never
    stored), summed when a layer appears twice."""
    _, tensors = read_gguf(path)
    data = np.zeros((max(n_layers - 1, 1), n_embd), dtype=np.float32)
    for name, values in tensors.items():
        prefix, _, index = name.partition(".")
        if prefix != "direction" or not index.isdigit() or int(index) == 0:
            raise ValueError(f"{path}: llama.cpp rejects the tensor {name!r}")
        if values.dtype != np.float32 or values.ndim != 1 or values.shape[0] != n_embd:
            raise ValueError(f"{path}: {name} is not float32 [{n_embd}]")
        data[int(index) - 1] += scale * values
    return data.reshape(-1)


class LlamaCppModel:
    """A GGUF model in llama.cpp with all-position logits and, given a GGUF control vector
    file, that vector applied from the start (as `--control-vector FILE` does)."""

    def __init__(self, gguf_file: str | os.PathLike, n_ctx: int,
                 control_vector: str | os.PathLike | None = None, scale: float = 1.0,
                 n_threads: int = 2):
        self.llama_cpp = import_llama_cpp()
        self.llm = self.llama_cpp.Llama(model_path=str(gguf_file), n_ctx=n_ctx, n_batch=n_ctx,
                                        n_ubatch=n_ctx, logits_all=True, n_threads=n_threads,
                                        verbose=False)
        self.n_layers = self.llama_cpp.llama_model_n_layer(self.llm.model)
        self.n_embd = self.llama_cpp.llama_model_n_embd(self.llm.model)
        if control_vector is not None:
            self.set_control_vector(control_vector, scale)

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), n_vocab] float32 logits at every position (a fresh KV cache)."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def set_control_vector(self, gguf_file: str | os.PathLike | None, scale: float = 1.0) -> None:
        """Apply a GGUF control vector (None clears it), as `--control-vector` does."""
        ctx = self.llm._ctx.ctx
        if gguf_file is None:
            err = self.llama_cpp.llama_set_adapter_cvec(ctx, None, 0, self.n_embd, 0, 0)
        else:
            self._cvec = control_vector_buffer(gguf_file, self.n_layers, self.n_embd, scale)
            ptr = self._cvec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            err = self.llama_cpp.llama_set_adapter_cvec(ctx, ptr, self._cvec.size, self.n_embd,
                                                        1, self.n_layers)
        if err:
            raise RuntimeError(f"llama_set_adapter_cvec failed ({err})")

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's token ids of `text`, BOS first (as the GGUF's add_bos_token says)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)


def run_llamacpp_check(model: Any, vector: SteeringVector, texts: list[str],
                       work_dir: str | os.PathLike, llama_cpp_dir: str | os.PathLike | None = None,
                       strength: float | None = None, prompt_tokens: int = 48) -> dict[str, Any]:
    """The figures of the end-to-end check (see the module docstring).

    model: a lab HookedTransformer (GPT-2 or Llama style) with its tokenizer; vector: a steering
    vector for it at blocks.L.hook_resid_post, L >= 1; texts: the prompt is texts[0], the
    tokenizers are compared on all of them.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tok = model.tokenizer
    hf_report = export_hf(model, tok, work / "hf", overwrite=True)
    gguf_model = convert_to_gguf(work / "hf", work / "model.gguf", llama_cpp_dir,
                                 overwrite=True)
    [cvec] = export_vector(vector, "gguf", work / "vector.gguf", strength=strength,
                           model=ModelShape.from_config(model.cfg), overwrite=True)
    cpp = LlamaCppModel(gguf_model, n_ctx=model.cfg.n_ctx)
    cpp_steering = LlamaCppModel(gguf_model, n_ctx=model.cfg.n_ctx, control_vector=cvec)

    prompt = tok(texts[0])["input_ids"][: min(prompt_tokens, model.cfg.n_ctx)]
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        tl_plain = model(tokens)[0].float().numpy()
        with vector.apply(model, strength=strength):
            tl_steered = model(tokens)[0].float().numpy()
    cpp_plain = cpp.logits(prompt)
    cpp_steered = cpp_steering.logits(prompt)

    agree, first_mismatch = 0, None
    n_tokens = 0
    for text in texts:
        hf_ids, cpp_ids = tok(text)["input_ids"], cpp.tokenize(text)
        n_tokens += len(hf_ids)
        if hf_ids == cpp_ids:
            agree += 1
        elif first_mismatch is None:
            first_mismatch = {"text": text[:200], "hf": hf_ids[:40], "llama_cpp": cpp_ids[:40]}
    return {
        "model_style": hf_report.style,
        "n_layers": model.cfg.n_layers,
        "hooks": vector.hooks,
        "strength": vector.strength if strength is None else strength,
        "prompt_tokens": len(prompt),
        "hf_export_max_abs_logit_diff": hf_report.max_abs_logit_diff,
        "unsteered_max_abs_diff": float(np.abs(cpp_plain - tl_plain).max()),
        "steered_max_abs_diff": float(np.abs(cpp_steered - tl_steered).max()),
        "steering_effect_max_abs": float(np.abs(tl_steered - tl_plain).max()),
        "steering_effect_max_abs_diff": float(np.abs((cpp_steered - cpp_plain)
                                                     - (tl_steered - tl_plain)).max()),
        "logit_scale_max_abs": float(np.abs(tl_plain).max()),
        "next_token_argmax_agree_unsteered": float((cpp_plain.argmax(-1)
                                                    == tl_plain.argmax(-1)).mean()),
        "next_token_argmax_agree_steered": float((cpp_steered.argmax(-1)
                                                  == tl_steered.argmax(-1)).mean()),
        "tokenizer_texts": len(texts),
        "tokenizer_texts_identical": agree,
        "tokenizer_tokens": n_tokens,
        "tokenizer_first_mismatch": first_mismatch,
        "files": {"model": str(gguf_model), "control_vector": str(cvec)},
    }
