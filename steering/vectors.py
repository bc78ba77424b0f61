"""Steering vectors: the stored artifact (kind `steering`) and applying it to a model.

A steering vector is one unit-norm direction per steered hook plus what it means:

    direction[hook]   float32 [d_model], unit L2 norm, keyed by the TransformerLens hook name
                      (`blocks.{l}.hook_resid_post`, the output of block l)
    resid_norm[hook]  mean L2 norm of the residual stream at that hook on the lab corpus
    strength          the default multiplier, in units of resid_norm

Applying adds `strength * resid_norm[hook] * direction[hook]` to the residual at each hook, so a
strength means the same thing for every method (DiffMean, LangFIR sums, one SAE feature) and
every model: strength 1 moves the residual by its own typical length.

On disk (a lab artifact folder, or a standalone pair `NAME.safetensors` + `NAME.json`):

    vector.safetensors   {hook name: float32 [d_model]}, metadata {"format": "workbench-steering"}
    vector.json          the sidecar: format_version, model, hooks, layers, d_model, strength,
                         resid_norm {hook: float}, method, language, features [{source, index,
                         weight}], provenance {created, tool, ... (method inputs)}

The sidecar maps onto Neuronpedia's steering request (`vectors: [{steering_vector, strength,
hook}]`, `features: [{model, source, index, strength}]`) and, for block outputs >= 1, onto a
llama.cpp GGUF control vector (`direction.{l}`).

API (public names, stable)::

    SteeringVector(directions, model, resid_norm, strength=2.0, method="custom", language=None,
                   features=[], provenance={})
      .hooks -> list[str]; .layers -> list[int | None]; .d_model -> int
      .delta(hook, strength=None) -> Tensor [d_model]   strength * resid_norm * direction
      .save(path) -> (safetensors path, json path)     standalone pair (suffixes added)
      SteeringVector.load(path)                         a pair (either file or the stem) or an
                                                        artifact folder
      .save_to_lab(lab, name, parents=(), overwrite=False) -> Artifact   (kind "steering")
      SteeringVector.from_lab(lab, name)
      SteeringVector.from_feature(sae, index, resid_norm, *, source=None, strength=...)
      SteeringVector.from_tensor(tensor, hook, model, resid_norm, *, method="tensor", ...)
      .tl_hooks(strength=None, positions="all") -> list[(hook name, ResidualAdder)]
      .apply(model, strength=None, positions="all")     context manager: TransformerLens
                                                        HookedTransformer (hooks attached for the
                                                        block, removed after)
      .apply_hf(hf_model, strength=None, positions="all")  context manager: a forward hook on
                                                        the matching decoder layer of a Hugging
                                                        Face causal LM
    measure_resid_norm(model, hooks, tokens, attention_mask=None) -> {hook: float}
    POSITIONS = ("all", "prompt", "generated")

Positions: "all" steers every position; "prompt" only the prompt's positions (a padded batch's
prompt width); "generated" only the positions produced by generation. Both hook kinds track the
absolute position of each forward call, so the steered positions are the same with and without a
KV cache (with a cache, the first call is the whole prompt and later calls one new token each;
without one every call re-runs the whole sequence). A batch of left-padded prompts works as is:
the pads sit inside the prompt width and attention masks them out. Use one `apply` block per
generation for "prompt"/"generated" (or call `adder.reset()`), since the first forward call after
a reset defines the prompt width.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Artifact, Lab, write_json
from workbench.models.hooks import hook_layer

POSITIONS = ("all", "prompt", "generated")
FORMAT = "workbench-steering"
FORMAT_VERSION = 1
VECTOR_FILE = "vector.safetensors"
SIDECAR_FILE = "vector.json"
DEFAULT_STRENGTH = 2.0  # default lab: DiffMean reaches 97-100% target-language accuracy at 1.5-2
_NORM_TOLERANCE = 1e-3


def check_strength(strength: float, what: str = "strength") -> float:
    """`strength` as a float if it is a finite number, else a clear InvalidInputError."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a number, got {strength!r}") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a finite number, got {strength!r}")
    return value


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise InvalidInputError(f"unknown positions {positions!r}; choose one of {list(POSITIONS)}")
    return positions


@dataclass
class SteeringVector:
    """Unit directions per hook plus their meaning (see the module docstring).

    directions: {hook name: Tensor [d_model]} (normalized to unit norm, float32, CPU).
    model: the model the vector belongs to (lab model name, TransformerLens or HF name).
    resid_norm: {hook name: mean residual norm at the hook} (a float is used for every hook).
    strength: default multiplier in units of resid_norm.
    method: how it was made ("langfir-mean", "langfir-equal", "diffmean", "sae-diff",
        "feature", "tensor", ...). language: the target language, when there is one.
    features: [{"source": SAE id, "index": int, "weight": float}] for SAE-based vectors.
    provenance: free-form facts about where it came from (created, report, corpus, ...).
    """

    directions: dict[str, torch.Tensor]
    model: str
    resid_norm: dict[str, float] | float
    strength: float = DEFAULT_STRENGTH
    method: str = "custom"
    language: str | None = None
    features: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.directions, dict) or not self.directions:
            raise InvalidInputError("a steering vector needs at least one {hook: direction} entry")
        widths = set()
        clean: dict[str, torch.Tensor] = {}
        for hook, vec in self.directions.items():
            if not isinstance(hook, str) or not hook:
                raise InvalidInputError(f"hook names must be non-empty strings, got {hook!r}")
            t = torch.as_tensor(vec).detach().to("cpu", torch.float32).flatten()
            if not torch.isfinite(t).all():
                raise InvalidInputError(f"the direction for {hook} has NaN or infinite entries")
            norm = float(t.norm())
            if norm == 0.0:
                raise InvalidInputError(f"the direction for {hook} is all zeros; nothing to steer")
            clean[hook] = (t / norm).contiguous()
            widths.add(t.numel())
        if len(widths) != 1:
            raise InvalidInputError(f"directions of one vector must share d_model; got {sorted(widths)}")
        self.directions = clean
        if not isinstance(self.resid_norm, dict):
            self.resid_norm = {h: self.resid_norm for h in clean}
        missing = [h for h in clean if h not in self.resid_norm]
        if missing:
            raise InvalidInputError(f"resid_norm is missing for hooks {missing}")
        self.resid_norm = {h: check_strength(self.resid_norm[h], f"resid_norm[{h}]") for h in clean}
        for h, value in self.resid_norm.items():
            if value <= 0:
                raise InvalidInputError(f"resid_norm[{h}] must be positive, got {value}")
        self.strength = check_strength(self.strength)
        self.model = str(self.model)
        self.features = [dict(f) for f in self.features]

    # -- facts ------------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self.directions)

    @property
    def layers(self) -> list[int | None]:
        return [hook_layer(h) for h in self.directions]

    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).numel()

    def delta(self, hook: str, strength: float | None = None) -> torch.Tensor:
        """What applying adds at `hook`: strength * resid_norm[hook] * direction, [d_model]."""
        if hook not in self.directions:
            raise NotFoundError(f"the vector has no direction for {hook!r}; it has {self.hooks}")
        s = self.strength if strength is None else check_strength(strength)
        return s * self.resid_norm[hook] * self.directions[hook]

    def sidecar(self) -> dict[str, Any]:
        """The JSON sidecar (see the module docstring)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "hooks": self.hooks,
            "layers": self.layers,
            "d_model": self.d_model,
            "strength": self.strength,
            "resid_norm": dict(self.resid_norm),
            "method": self.method,
            "language": self.language,
            "features": self.features,
            "provenance": self.provenance,
        }

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_tensor(cls, tensor: torch.Tensor | Sequence[float], hook: str, model: str,
                    resid_norm: float, *, method: str = "tensor", strength: float = DEFAULT_STRENGTH,
                    language: str | None = None, features: list[dict[str, Any]] | None = None,
                    provenance: dict[str, Any] | None = None) -> SteeringVector:
        """A vector along any tensor [d_model] (normalized here) at one hook."""
        t = torch.as_tensor(tensor, dtype=torch.float32)
        if t.ndim != 1:
            raise InvalidInputError(f"a steering tensor must be 1-D [d_model], got shape {tuple(t.shape)}")
        return cls({hook: t}, model=model, resid_norm={hook: resid_norm}, strength=strength,
                   method=method, language=language, features=list(features or []),
                   provenance={"created": time.time(), **(provenance or {})})

    @classmethod
    def from_feature(cls, sae: Any, index: int, resid_norm: float, *, source: str | None = None,
                     strength: float = DEFAULT_STRENGTH, model: str | None = None,
                     hook: str | None = None) -> SteeringVector:
        """The unit decoder direction W_dec[index] of a sae-lens SAE as a vector.

        The hook and model come from the SAE's metadata (`cfg.metadata.hook_name`,
        `.model_name`) unless given; `source` names the SAE (lab name or release/id) in
        `features` (default: the SAE's metadata `sae_lens_id`, else its hook).
        """
        w_dec = sae.W_dec  # [d_sae, d_in]
        n = int(w_dec.shape[0])
        if not isinstance(index, int) or not 0 <= index < n:
            raise InvalidInputError(f"feature index {index!r} is out of range: the SAE has {n} features (0..{n - 1})")
        meta = getattr(sae.cfg, "metadata", None)
        hook = hook or (meta.hook_name if meta is not None else None)
        model = model or (meta.model_name if meta is not None else None)
        if not hook:
            raise InvalidInputError("the SAE names no hook (cfg.metadata.hook_name); pass hook=...")
        if not model:
            raise InvalidInputError("the SAE names no model (cfg.metadata.model_name); pass model=...")
        source = source or (meta.get("sae_lens_id") if meta is not None else None) or hook
        direction = w_dec[index].detach().float().cpu()
        return cls.from_tensor(direction, hook, model, resid_norm, method="feature",
                               strength=strength,
                               features=[{"source": source, "index": index, "weight": 1.0}],
                               provenance={"sae": source, "feature": index})

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the standalone pair `<path>.safetensors` + `<path>.json` (a given suffix
        .safetensors/.json is replaced). Returns both paths."""
        stem = _stem(Path(path))
        stem.parent.mkdir(parents=True, exist_ok=True)
        tensors, sidecar = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        self._write(tensors, sidecar)
        return tensors, sidecar

    def _write(self, tensors: Path, sidecar: Path) -> None:
        tmp = tensors.with_name(tensors.name + ".tmp")
        save_file(dict(self.directions), str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, tensors)
        write_json(sidecar, self.sidecar())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVector:
        """Read a vector: an artifact folder, or a pair given by either file or its stem."""
        p = Path(path).expanduser()
        if p.is_dir():
            return cls._read(p / VECTOR_FILE, p / SIDECAR_FILE)
        stem = _stem(p)
        return cls._read(stem.with_suffix(".safetensors"), stem.with_suffix(".json"))

    @classmethod
    def _read(cls, tensors: Path, sidecar: Path) -> SteeringVector:
        for file in (tensors, sidecar):
            if not file.exists():
                raise NotFoundError(f"no steering vector file {file}; a vector is a pair "
                                    "NAME.safetensors + NAME.json (or a lab `steering` artifact)")
        try:
            meta = json.loads(sidecar.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"the steering sidecar {sidecar} is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InvalidInputError(f"{sidecar} is not a workbench steering sidecar (format != {FORMAT!r})")
        try:
            directions = load_file(str(tensors))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot read the steering tensors {tensors} ({exc}); the "
                                    "file is corrupt, rewrite it") from exc
        if sorted(directions) != sorted(meta.get("hooks", [])):
            raise InvalidInputError(f"{tensors} holds hooks {sorted(directions)} but its sidecar "
                                    f"lists {meta.get('hooks')}; the pair does not belong together")
        for hook, vec in directions.items():
            if abs(float(vec.float().norm()) - 1.0) > _NORM_TOLERANCE:
                raise InvalidInputError(f"the direction for {hook} in {tensors} is not unit norm")
        try:
            return cls({h: directions[h] for h in meta["hooks"]}, model=meta["model"],
                       resid_norm=meta["resid_norm"], strength=meta.get("strength", DEFAULT_STRENGTH),
                       method=meta.get("method", "custom"), language=meta.get("language"),
                       features=meta.get("features", []), provenance=meta.get("provenance", {}))
        except KeyError as exc:
            raise InvalidInputError(f"the steering sidecar {sidecar} lacks the field {exc}") from exc

    def save_to_lab(self, lab: Lab, name: str, parents: Sequence[str] = (),
                    overwrite: bool = False) -> Artifact:
        """Store as a lab artifact of kind `steering` (atomic)."""
        with lab.new_artifact("steering", name, parents=list(parents), config=self.sidecar(),
                              overwrite=overwrite) as art:
            self._write(art.path / VECTOR_FILE, art.path / SIDECAR_FILE)
            art.manifest.update({"model": self.model, "hooks": self.hooks, "method": self.method,
                                 "language": self.language})
            art.metrics.update({"strength": self.strength, "n_features": len(self.features)})
        return lab.get(name, kind="steering")

    @classmethod
    def from_lab(cls, lab: Lab, name: str) -> SteeringVector:
        return cls.load(lab.get(name, kind="steering").path)

    # -- applying ---------------------------------------------------------------------------
    def tl_hooks(self, strength: float | None = None,
                 positions: str = "all") -> list[tuple[str, ResidualAdder]]:
        """(hook name, hook function) pairs for `model.hooks(...)` / `run_with_hooks`."""
        check_positions(positions)
        return [(h, ResidualAdder(self.delta(h, strength), positions)) for h in self.hooks]

    @contextmanager
    def apply(self, model: Any, strength: float | None = None,
              positions: str = "all") -> Iterator[list[ResidualAdder]]:
        """Steer a TransformerLens HookedTransformer inside the block (hooks removed after)."""
        self.check_model(model)
        pairs = self.tl_hooks(strength, positions)
        device = next(model.parameters()).device
        for _, adder in pairs:
            adder.to(device)
        with model.hooks(fwd_hooks=pairs):
            yield [adder for _, adder in pairs]

    def check_model(self, model: Any) -> None:
        """Raise a clear error unless every hook runs in `model` at width d_model."""
        from workbench.models.hooks import validate_hook

        for hook in self.hooks:
            validate_hook(model, hook)
        width = int(model.cfg.d_model)
        if width != self.d_model:
            raise InvalidInputError(f"the vector has d_model={self.d_model} but the model's "
                                    f"residual width is {width}; it belongs to {self.model!r}")

    @contextmanager
    def apply_hf(self, hf_model: Any, strength: float | None = None,
                 positions: str = "all") -> Iterator[list[ResidualAdder]]:
        """Steer a Hugging Face causal LM: a forward hook on decoder layer l for
        `blocks.{l}.hook_resid_post` (a forward pre-hook on layer l for `hook_resid_pre`)."""
        check_positions(positions)
        layers = hf_decoder_layers(hf_model)
        width = getattr(hf_model.config, "hidden_size", None) or getattr(hf_model.config, "n_embd", None)
        if width is not None and int(width) != self.d_model:
            raise InvalidInputError(f"the vector has d_model={self.d_model} but the Hugging Face "
                                    f"model's hidden size is {width}")
        handles, adders = [], []
        try:
            for hook in self.hooks:
                layer, kind = _hf_target(hook, len(layers))
                adder = ResidualAdder(self.delta(hook, strength), positions)
                param = next(hf_model.parameters())
                adder.to(param.device, param.dtype)
                if kind == "post":
                    handles.append(layers[layer].register_forward_hook(adder.hf_output_hook,
                                                                       with_kwargs=True))
                else:
                    handles.append(layers[layer].register_forward_pre_hook(adder.hf_input_hook,
                                                                           with_kwargs=True))
                adders.append(adder)
            yield adders
        finally:
            for handle in handles:
                handle.remove()


class ResidualAdder:
    """Adds a fixed delta [d_model] to a residual [batch, pos, d_model] at chosen positions.

    Tracks the absolute position of each call so that "prompt"/"generated" steer the same
    positions with and without a KV cache: the first call after `reset()` defines the prompt
    width P; a later call of one position continues a cache (offset = positions seen so far); a
    later call that re-runs the whole sequence starts at offset 0.
    """

    def __init__(self, delta: torch.Tensor, positions: str = "all"):
        self.delta = delta
        self.positions = check_positions(positions)
        self.reset()

    def reset(self) -> None:
        self.prompt_width: int | None = None
        self.seen = 0  # absolute positions processed so far in this generation

    def to(self, device: Any, dtype: torch.dtype = torch.float32) -> ResidualAdder:
        self.delta = self.delta.to(device=device, dtype=dtype)
        return self

    def _offset(self, length: int, cache_position: torch.Tensor | None) -> int:
        if cache_position is not None and cache_position.numel():
            offset = int(cache_position.flatten()[0])
            if offset == 0:
                self.prompt_width = length
        elif self.prompt_width is None:
            self.prompt_width, offset = length, 0
        elif length == 1 and self.seen >= self.prompt_width:
            offset = self.seen  # one new token on top of a KV cache
        elif length == self.seen + 1:
            offset = 0  # the whole sequence again, one token longer (no cache)
        else:
            self.prompt_width, offset = length, 0  # a new prompt
        self.seen = offset + length
        return offset

    def steer(self, resid: torch.Tensor, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """resid [batch, pos, d_model] -> resid with the delta added at the chosen positions."""
        length = resid.shape[1]
        offset = self._offset(length, cache_position)
        if self.positions == "all":
            return resid + self.delta
        prompt = self.prompt_width or 0
        absolute = torch.arange(offset, offset + length, device=resid.device)
        wanted = absolute < prompt if self.positions == "prompt" else absolute >= prompt
        if not bool(wanted.any()):
            return resid
        return resid + wanted[None, :, None].to(resid.dtype) * self.delta

    def __call__(self, resid: torch.Tensor, hook: Any = None) -> torch.Tensor:
        """TransformerLens hook function."""
        return self.steer(resid)

    def hf_output_hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        cache_position = kwargs.get("cache_position")
        if isinstance(output, torch.Tensor):
            return self.steer(output, cache_position)
        hidden = self.steer(output[0], cache_position)
        return (hidden, *output[1:])

    def hf_input_hook(self, module: Any, args: tuple, kwargs: dict) -> Any:
        cache_position = kwargs.get("cache_position")
        if args:
            return (self.steer(args[0], cache_position), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = self.steer(kwargs["hidden_states"], cache_position)
        return args, kwargs


# -- Hugging Face models ---------------------------------------------------------------------
_HF_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                   "transformer.layers", "layers")


def hf_decoder_layers(hf_model: Any) -> torch.nn.ModuleList:
    """The list of decoder layers of a Hugging Face causal LM (Llama/Mistral/Qwen/Gemma:
    model.layers; GPT-2: transformer.h; GPT-NeoX: gpt_neox.layers; OPT: model.decoder.layers)."""
    for dotted in _HF_LAYER_PATHS:
        obj = hf_model
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise InvalidInputError(
        f"cannot find the decoder layers of {type(hf_model).__name__}; looked for "
        f"{', '.join(_HF_LAYER_PATHS)}"
    )


def _hf_target(hook: str, n_layers: int) -> tuple[int, str]:
    layer = hook_layer(hook)
    kind = "post" if hook.endswith(".hook_resid_post") else "pre" if hook.endswith(".hook_resid_pre") else None
    if layer is None or kind is None:
        raise InvalidInputError(f"a Hugging Face model can be steered at blocks.L.hook_resid_post "
                                f"or blocks.L.hook_resid_pre, not {hook!r}")
    if layer >= n_layers:
        raise NotFoundError(f"hook {hook!r} needs layer {layer} but the model has {n_layers} "
                            f"decoder layers (0..{n_layers - 1})")
    return layer, kind


# -- residual norms --------------------------------------------------------------------------
@torch.no_grad()
def measure_resid_norm(model: Any, hooks: Sequence[str], tokens: torch.Tensor,
                       attention_mask: torch.Tensor | None = None,
                       skip_first: bool = True) -> dict[str, float]:
    """Mean L2 norm of the residual at each hook over the tokens [batch, pos] (positions where
    `attention_mask` [batch, pos] is 1; the first position, BOS, left out when `skip_first`)."""
    from workbench.models.hooks import validate_hook

    for hook in hooks:
        validate_hook(model, hook)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise InvalidInputError("measuring the residual norm needs tokens [batch, pos >= 2]")
    mask = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if skip_first:
        mask = mask.clone()
        mask[:, 0] = False
    if not mask.any():
        raise InvalidInputError("no tokens left to measure the residual norm on")
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device), names_filter=list(hooks), return_type=None)
    out = {}
    for hook in hooks:
        norms = cache[hook].float().norm(dim=-1).cpu()  # [batch, pos]
        out[hook] = float(norms[mask].mean())
    return out


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


__all__ = [
    "DEFAULT_STRENGTH",
    "POSITIONS",
    "ResidualAdder",
    "SteeringVector",
    "check_positions",
    "check_strength",
    "hf_decoder_layers",
    "measure_resid_norm",
]
