"""The on-disk form of a workbench language model.

A model artifact folder (kind `model`) holds

    config.json                           HookedTransformerConfig fields (JSON)
    model.safetensors                     the weights (HookedTransformer state dict names)
    tokenizer/                            the tokenizer (`save_pretrained` folder)
    checkpoints/step_XXXXXXXX.safetensors optional weights along training
    history.json                          optional training / validation loss curves
    manifest.json                         architecture, training config, metrics

`write_model_folder` and `read_model_folder` convert between that folder and a
`HookedTransformer` with its tokenizer set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import read_json, write_json
from workbench.models.architectures import DEFAULT_ARCHITECTURE, get_architecture, move_model
from workbench.models.tokenizer import load_tokenizer_folder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^step_(\d+)\.safetensors$")
_RUNTIME_FIELDS = ("device", "n_devices", "tokenizer_prepends_bos", "n_params")


def config_to_dict(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The config as plain JSON values (dtype as a string; runtime-only fields dropped)."""
    out: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if key in _RUNTIME_FIELDS:
            continue
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        elif hasattr(value, "item") and callable(value.item):
            value = value.item()
        try:
            json.dumps(value)
        except TypeError:
            continue  # not representable; the default is rebuilt on load
        out[key] = value
    return out


def config_from_dict(data: dict[str, Any]) -> HookedTransformerConfig:
    """Rebuild a HookedTransformerConfig, ignoring fields this TransformerLens does not know."""
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    kwargs = {k: v for k, v in data.items() if k in known and k not in _RUNTIME_FIELDS}
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    try:
        return HookedTransformerConfig(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise InvalidInputError(f"invalid model config ({exc})") from exc


def checkpoint_file(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the model's weights to `path` atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    st_save_model(model, str(tmp))
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`, turning damage or mismatch into a clear error."""
    if not path.exists():
        raise NotFoundError(f"model weights are missing: {path}")
    try:
        missing, unexpected = st_load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise InvalidInputError(
            f"cannot load the weights {path} ({exc}); the file is damaged or belongs to a model "
            "of another shape: retrain or re-save the model"
        ) from exc
    missing = [k for k in missing if not _is_rebuildable_buffer(k)]
    if missing or unexpected:
        raise InvalidInputError(
            f"the weights {path} do not fit the model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; the config.json and model.safetensors do not match"
        )


def _is_rebuildable_buffer(key: str) -> bool:
    """Buffers that the model recomputes from its config (attention masks, rotary tables)."""
    return key.rsplit(".", 1)[-1] in {"mask", "IGNORE", "rotary_sin", "rotary_cos"}


def write_model_folder(folder: Path, model: HookedTransformer, tokenizer: Any) -> None:
    """Write config.json, model.safetensors and tokenizer/ for `model` into `folder`."""
    write_json(folder / CONFIG_FILE, config_to_dict(model.cfg))
    save_weights(model, folder / WEIGHTS_FILE)
    tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))


def architecture_manifest(architecture: str = DEFAULT_ARCHITECTURE,
                          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Manifest entries that tell the loader how to rebuild a model of `architecture`
    (merge them into `ArtifactWriter.manifest` next to `write_model_folder`)."""
    arch = get_architecture(architecture)
    return {"architecture": arch.name, "architecture_module": arch.module,
            "architecture_options": dict(options or {})}


def build_model(folder: Path, manifest: dict[str, Any]) -> HookedTransformer:
    """An uninitialized-weights model of the folder's architecture and config, on the CPU."""
    cfg_dict = read_json(folder / CONFIG_FILE, f"model config of {folder.name!r}")
    cfg_dict = {**cfg_dict, "init_weights": False}
    arch = get_architecture(
        manifest.get("architecture", DEFAULT_ARCHITECTURE), manifest.get("architecture_module")
    )
    return arch.build(config_from_dict(cfg_dict), dict(manifest.get("architecture_options", {})))


def read_model_folder(folder: Path, manifest: dict[str, Any], step: int | None = None,
                      device: torch.device | str = "cpu") -> HookedTransformer:
    """Load the model stored in `folder` (final weights, or checkpoint `step`) with its tokenizer."""
    model = build_model(folder, manifest)
    weights = folder / WEIGHTS_FILE
    if step is not None:
        weights = folder / CHECKPOINT_DIR / checkpoint_file(step)
        if not weights.exists():
            steps = list_checkpoints(folder)
            raise NotFoundError(
                f"model {folder.name!r} has no checkpoint at step {step}; available steps: "
                f"{steps or 'none (train with --checkpoints to keep some)'}"
            )
    load_weights(model, weights)
    tokenizer = load_tokenizer_folder(folder / TOKENIZER_DIR)
    model.set_tokenizer(tokenizer)
    move_model(model, device)
    return model.eval()


def list_checkpoints(folder: Path) -> list[int]:
    """Steps of the checkpoints kept in a model folder, ascending."""
    ckpt_dir = folder / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        return []
    steps = [int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name))]
    return sorted(steps)
