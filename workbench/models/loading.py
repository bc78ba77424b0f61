"""One way to load any language model the workbench can study: `load_model(spec)`.

`spec` may be
- a lab model name ("lm"), or a kept checkpoint of one ("lm@128" = weights after step 128);
- a lab model folder (holds manifest.json of kind `model`);
- a local Hugging Face checkpoint folder (config.json of an architecture TransformerLens can
  convert, plus tokenizer files), converted with TransformerLens' weight converters;
- a TransformerLens pretrained model name ("gpt2", "pythia-70m", ...), read from the local
  Hugging Face cache when offline (HF_HUB_OFFLINE=1) and downloaded otherwise.
A prefix forces one reading: "lab:NAME", "hf:PATH", "tl:NAME".

Every result is a `HookedTransformer` in eval mode with `.tokenizer` set.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as tl_loading

from workbench.device import resolve_device
from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError
from workbench.lab import MANIFEST, Lab, default_lab_root, read_json, write_json
from workbench.models.architectures import move_model, quiet_hooked_transformer
from workbench.models.model_io import list_checkpoints, read_model_folder

_PREFIXES = ("lab:", "hf:", "tl:")
# TransformerLens' default weight processing for pretrained models (see from_pretrained).
_TL_PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                      "fold_value_biases": True}


def load_model(spec: str | os.PathLike, lab: Lab | None = None,
               device: str | torch.device | None = None, **tl_kwargs: Any) -> HookedTransformer:
    """Load the model named by `spec` (see the module docstring) onto `device`.

    `tl_kwargs` go to TransformerLens for pretrained names and Hugging Face folders
    (e.g. fold_ln=False, center_writing_weights=False, dtype="bfloat16").
    """
    dev = resolve_device(device)
    text = str(spec)
    prefix, _, rest = text.partition(":") if text.startswith(_PREFIXES) else ("", "", text)
    lab = lab if lab is not None else _default_lab()
    if prefix == "lab":
        return _load_lab_model(_require_lab(lab, rest), rest, dev)
    if prefix == "hf":
        return load_hf_folder(Path(rest).expanduser(), dev, **tl_kwargs)
    if prefix == "tl":
        return load_tl_pretrained(rest, dev, **tl_kwargs)

    path = Path(text).expanduser()
    if path.is_dir():
        if (path / MANIFEST).exists():
            manifest = read_json(path / MANIFEST, f"manifest of {path}")
            if manifest.get("kind") == "model":
                return read_model_folder(path, manifest, device=dev)
        if (path / "config.json").exists():
            return load_hf_folder(path, dev, **tl_kwargs)
        raise InvalidInputError(
            f"the folder {path} holds neither a lab model (manifest.json) nor a Hugging Face "
            "checkpoint (config.json)"
        )
    if lab is not None and "/" not in text and lab.exists(text.partition("@")[0]):
        return _load_lab_model(lab, text, dev)
    if _official_tl_name(text) is not None:
        return load_tl_pretrained(text, dev, **tl_kwargs)
    raise NotFoundError(_unknown_model_message(text, lab))


# -- lab models ------------------------------------------------------------------------------
def _default_lab() -> Lab | None:
    """The default lab if one exists (never creates a lab folder just to look up a name)."""
    root = default_lab_root()
    return Lab(root) if (root / "catalog.sqlite").exists() else None


def _require_lab(lab: Lab | None, name: str) -> Lab:
    if lab is None:
        raise NotFoundError(f"no lab to look up model {name!r} in; pass --lab or set WORKBENCH_LAB")
    return lab


def _load_lab_model(lab: Lab, spec: str, device: torch.device) -> HookedTransformer:
    name, _, step_text = spec.partition("@")
    art = lab.get(name, kind="model")
    step = None
    if step_text:
        try:
            step = int(step_text)
        except ValueError:
            raise InvalidInputError(
                f"cannot read the checkpoint step in {spec!r}; use NAME@STEP with STEP one of "
                f"{list_checkpoints(art.path)}"
            ) from None
    return read_model_folder(art.path, art.manifest, step=step, device=device)


# -- TransformerLens pretrained names --------------------------------------------------------
def _official_tl_name(name: str) -> str | None:
    try:
        return tl_loading.get_official_model_name(name)
    except ValueError:
        return None


def hub_offline() -> bool:
    """Whether Hugging Face Hub access is switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(
        f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags
    )


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def load_tl_pretrained(name: str, device: torch.device, **tl_kwargs: Any) -> HookedTransformer:
    """`HookedTransformer.from_pretrained(name)` with clear errors offline or without network."""
    official = _official_tl_name(name)
    if official is None:
        raise NotFoundError(_unknown_model_message(name, None))
    offline = hub_offline()
    if offline and not _in_hf_cache(official):
        raise NotFoundError(
            f"TransformerLens model {name!r} ({official}) is not in the local Hugging Face cache "
            "and the Hub is offline (HF_HUB_OFFLINE=1). Download it once with network access, "
            f"or use a lab model / local folder. {_offline_listing(None)}"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            model = HookedTransformer.from_pretrained(official, device=str(device), **tl_kwargs)
    except OSError as exc:
        how = "offline" if offline else "without network access or a cached copy"
        raise WorkbenchError(
            f"cannot load TransformerLens model {name!r} {how} ({exc}). {_offline_listing(None)}"
        ) from exc
    return model.eval()


# -- local Hugging Face folders --------------------------------------------------------------
def load_hf_folder(folder: Path, device: torch.device, **tl_kwargs: Any) -> HookedTransformer:
    """Convert a local Hugging Face causal-LM checkpoint folder into a HookedTransformer.

    The folder needs config.json (an architecture TransformerLens converts: GPT-2, GPT-NeoX,
    Llama, Mistral, Qwen2/3, Gemma, OLMo, ...), the weights and the tokenizer files.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise NotFoundError(f"no Hugging Face checkpoint in {folder} (config.json is missing)")
    hf_cfg = read_json(folder / "config.json", f"Hugging Face config of {folder}")
    arch = (hf_cfg.get("architectures") or ["?"])[0]
    options = {**_TL_PROCESSING, **tl_kwargs}
    dtype = options.pop("dtype", torch.float32)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"cannot load the tokenizer of {folder} ({exc}); save it into the folder with "
            "tokenizer.save_pretrained(folder)"
        ) from exc
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"cannot load the Hugging Face model in {folder} ({exc})") from exc
    with tempfile.TemporaryDirectory() as tmp:
        # TransformerLens reads the config from a folder name and guesses some architectures
        # from that *name*; a neutral folder holding (a patched copy of) config.json makes it
        # read the architecture from the config instead.
        neutral = Path(tmp) / "model"
        neutral.mkdir()
        write_json(neutral / "config.json", _patched_hf_config(hf_cfg))
        try:
            cfg = tl_loading.get_pretrained_model_config(
                str(neutral), hf_cfg=hf_model.config.to_dict(), fold_ln=options["fold_ln"],
                device=str(device), dtype=dtype,
            )
            state_dict = tl_loading.get_pretrained_state_dict(str(neutral), cfg, hf_model,
                                                              dtype=dtype)
        except (ValueError, NotImplementedError, KeyError, AttributeError) as exc:
            raise InvalidInputError(
                f"TransformerLens cannot convert the {arch} checkpoint in {folder} ({exc}); "
                "supported are e.g. GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM, "
                "MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM, OlmoForCausalLM"
            ) from exc
    cfg.model_name = folder.name
    cfg.tokenizer_name = str(folder)
    model = quiet_hooked_transformer(cfg, tokenizer)
    model.load_and_process_state_dict(state_dict, **options)
    move_model(model, device)
    return model.eval()


def _patched_hf_config(hf_cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill config fields TransformerLens 3 reads but transformers 5 no longer writes."""
    out = dict(hf_cfg)
    if "GPT2LMHeadModel" in (out.get("architectures") or []) and "n_ctx" not in out:
        out["n_ctx"] = out.get("n_positions", 1024)
    return out


# -- what is available -----------------------------------------------------------------------
def available_models(lab: Lab | None) -> dict[str, list[str]]:
    """What `load_model` can load without network: lab models and Hugging Face cache entries
    (those TransformerLens knows by name are marked with their TransformerLens name)."""
    lab_models = [a.name for a in lab.list("model")] if lab is not None else []
    return {"lab": lab_models, "hf_cache": _cached_hf_models()}


def _cached_hf_models() -> list[str]:
    from huggingface_hub import CacheNotFound, CorruptedCacheException, scan_cache_dir

    try:
        info = scan_cache_dir()
    except (CacheNotFound, CorruptedCacheException, OSError):  # no cache yet, or unreadable
        return []
    names = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        tl_name = _official_tl_name(repo.repo_id)
        names.append(repo.repo_id if tl_name else f"{repo.repo_id} (not a TransformerLens name)")
    return names


def _offline_listing(lab: Lab | None) -> str:
    avail = available_models(lab)
    parts = []
    if lab is not None:
        parts.append("lab models: " + (", ".join(avail["lab"]) or "none"))
    parts.append("Hugging Face cache: " + (", ".join(avail["hf_cache"]) or "empty"))
    return "Available offline: " + "; ".join(parts) + "."


def _unknown_model_message(spec: str, lab: Lab | None) -> str:
    return (
        f"unknown model {spec!r}: not a lab model, not a local folder and not a TransformerLens "
        f"model name. {_offline_listing(lab)} A local Hugging Face checkpoint folder (with "
        "config.json) works too."
    )
