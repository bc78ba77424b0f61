"""Export steering vectors (`steering.vectors.SteeringVector`) for other tools.

Formats (`FORMATS`):

- "safetensors": the artifact's own format as a standalone pair `NAME.safetensors` (unit
  directions keyed by hook) + `NAME.json` (the sidecar); `SteeringVector.load(NAME)` reads it
  back with the same effect.
- "gguf": a llama.cpp control vector (`--control-vector FILE`, `--control-vector-scaled FILE S`),
  the layout repeng writes: `general.architecture = "controlvector"`,
  `controlvector.model_hint` (the transformers model_type, e.g. "gpt2" or "llama"),
  `controlvector.layer_count` (uint32, the number of direction tensors), and per steered block
  l one 1-D float32 tensor `direction.l` of length d_model holding
  strength x resid_norm x direction. llama.cpp adds `direction.l` to the output of block l
  (0-based) and rejects l = 0, so only `blocks.{l}.hook_resid_post` with l >= 1 exports.
- "neuronpedia": a Neuronpedia-style steering request body: `vectors: [{steering_vector,
  strength, hook}]` (strength x steering_vector is exactly what the vector adds),
  `features: [{model, source, index, strength}]` for SAE-based vectors, the steering method,
  and the workbench sidecar under "workbench".

    paths = export_vector(vec, "gguf", "out/de.gguf", model=model_cfg)
    files = export_files(vec, "safetensors", "de")   # {"de.safetensors": bytes, "de.json": ...}

Every writer checks everything first and writes atomically (temporary file + rename), so bad
input leaves nothing behind and an existing output is only replaced with `overwrite=True`.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from steering.vectors import SteeringVector, check_strength
from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Lab, read_json

FORMATS = ("safetensors", "gguf", "neuronpedia")
GGUF_ARCH = "controlvector"
_BLOCK_OUTPUT = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


@dataclass(frozen=True)
class ModelShape:
    """What the exports check a vector against: residual width, depth, transformers type."""

    d_model: int
    n_layers: int
    model_type: str | None = None  # "gpt2", "llama", ... (the GGUF model hint)

    @classmethod
    def from_config(cls, cfg: Any) -> ModelShape:
        """From a TransformerLens HookedTransformerConfig."""
        from workbench.models.export_hf import hf_model_type

        return cls(int(cfg.d_model), int(cfg.n_layers), hf_model_type(cfg))


# -- checks ----------------------------------------------------------------------------------
def check_fits(vector: SteeringVector, model: ModelShape | None) -> None:
    """Raise InvalidInputError unless every hook's block exists in `model` at width d_model."""
    if model is None:
        return
    if vector.d_model != model.d_model:
        raise InvalidInputError(
            f"the vector has d_model={vector.d_model} but the model {vector.model!r} has a "
            f"residual width of {model.d_model}; export a vector made for this model")
    for hook, layer in zip(vector.hooks, vector.layers):
        if layer is not None and layer >= model.n_layers:
            raise InvalidInputError(f"hook {hook!r} is at block {layer} but the model has "
                                    f"{model.n_layers} blocks (0..{model.n_layers - 1})")


def gguf_layer(hook: str) -> int:
    """The llama.cpp control-vector layer of `hook`: l for `blocks.l.hook_resid_post`, l >= 1.

    Raises InvalidInputError saying why another hook cannot be exported and what to pick.
    """
    match = _BLOCK_OUTPUT.match(hook)
    if match is None:
        pre = _RESID_PRE.match(hook)
        hint = ""
        if pre and int(pre.group(1)) >= 2:
            hint = (f" The residual at {hook} is the output of block {int(pre.group(1)) - 1}: "
                    f"make the vector at blocks.{int(pre.group(1)) - 1}.hook_resid_post.")
        raise InvalidInputError(
            f"hook {hook!r} is not a block output: llama.cpp adds a control vector to the "
            "output of a block only, so a GGUF control vector needs hooks "
            f"blocks.L.hook_resid_post with L >= 1.{hint}")
    layer = int(match.group(1))
    if layer == 0:
        raise InvalidInputError(
            f"hook {hook!r} is the output of block 0, and llama.cpp rejects a control vector "
            "for layer 0 (direction.0); make the vector at blocks.L.hook_resid_post with L >= 1 "
            "(the default lab's activations are at a middle block for this reason)")
    return layer


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    return fmt


def _check_free(paths: Sequence[Path], overwrite: bool) -> None:
    for path in paths:
        if path.is_dir():
            raise InvalidInputError(f"{path} is a folder; give a file path for --out")
        if path.exists() and not overwrite:
            raise InvalidInputError(f"{path} already exists; pick another --out or pass "
                                    "--overwrite")


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; renamed onto `path` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- the formats -----------------------------------------------------------------------------
def with_strength(vector: SteeringVector, strength: float | None) -> SteeringVector:
    """The vector with its default strength replaced (unchanged when `strength` is None)."""
    if strength is None:
        return vector
    return replace(vector, strength=check_strength(strength))


def safetensors_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """(`NAME.safetensors`, `NAME.json`) for an output path given with or without a suffix."""
    path = Path(out).expanduser()
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")  # as SteeringVector.load


def write_safetensors_pair(vector: SteeringVector, out: str | os.PathLike,
                           overwrite: bool = False) -> list[Path]:
    """The standalone pair; `SteeringVector.load(out)` reads it back."""
    tensors, sidecar = safetensors_paths(out)
    _check_free([tensors, sidecar], overwrite)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    tmp_stem = tensors.with_name(f".{tensors.stem}.{uuid.uuid4().hex[:8]}.tmp")
    tmp_tensors, tmp_sidecar = vector.save(tmp_stem)
    try:
        os.replace(tmp_tensors, tensors)
        os.replace(tmp_sidecar, sidecar)
    finally:
        tmp_tensors.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
    return [tensors, sidecar]


def gguf_directions(vector: SteeringVector) -> dict[int, np.ndarray]:
    """{layer l: float32 [d_model] strength x resid_norm x direction}, checked for llama.cpp."""
    out: dict[int, np.ndarray] = {}
    for hook in vector.hooks:
        layer = gguf_layer(hook)
        out[layer] = vector.delta(hook).numpy().astype(np.float32)
    return dict(sorted(out.items()))


def write_gguf(vector: SteeringVector, out: str | os.PathLike, model_hint: str | None = None,
               overwrite: bool = False) -> list[Path]:
    """A llama.cpp control vector (see the module docstring); `model_hint` defaults to
    the vector's model name."""
    import gguf

    directions = gguf_directions(vector)
    path = Path(out).expanduser()
    _check_free([path], overwrite)
    with _atomic(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint or vector.model)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(directions))
        for layer, values in directions.items():
            writer.add_tensor(f"direction.{layer}", values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return [path]


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata {key: value}, tensors {name: array}) of a GGUF control vector file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {key: field.contents() for key, field in reader.fields.items()
            if not key.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return meta, tensors


def neuronpedia_request(vector: SteeringVector) -> dict[str, Any]:
    """A Neuronpedia-style steering request body for the vector (see the module docstring)."""
    s = vector.strength
    return {
        "modelId": vector.model,
        "vectors": [{"hook": hook, "strength": s,
                     "steering_vector": (vector.resid_norm[hook] * vector.directions[hook]).tolist()}
                    for hook in vector.hooks],
        "features": [{"model": vector.model, "source": f.get("source"), "index": f.get("index"),
                      "strength": s * float(f.get("weight", 1.0))} for f in vector.features],
        "steer_method": "SIMPLE_ADDITIVE",
        "normalize_steering": False,
        "workbench": vector.sidecar(),
    }


def write_neuronpedia(vector: SteeringVector, out: str | os.PathLike,
                      overwrite: bool = False) -> list[Path]:
    path = Path(out).expanduser()
    _check_free([path], overwrite)
    body = json.dumps(neuronpedia_request(vector), indent=1)
    with _atomic(path) as tmp:
        tmp.write_text(body)
    return [path]


def export_vector(vector: SteeringVector, fmt: str, out: str | os.PathLike,
                  strength: float | None = None, model: ModelShape | None = None,
                  overwrite: bool = False) -> list[Path]:
    """Write `vector` in format `fmt` to `out`; returns the files written.

    `strength` overrides the vector's default (in units of resid_norm); `model`, when known,
    is checked against the vector (d_model, block range) and gives the GGUF model hint.
    """
    _check_format(fmt)
    vector = with_strength(vector, strength)
    check_fits(vector, model)
    if fmt == "safetensors":
        return write_safetensors_pair(vector, out, overwrite=overwrite)
    if fmt == "gguf":
        hint = model.model_type if model is not None else None
        return write_gguf(vector, out, model_hint=hint, overwrite=overwrite)
    return write_neuronpedia(vector, out, overwrite=overwrite)


FILE_SUFFIXES = {"safetensors": ".safetensors", "gguf": ".gguf", "neuronpedia": ".neuronpedia.json"}


def export_files(vector: SteeringVector, fmt: str, stem: str, strength: float | None = None,
                 model: ModelShape | None = None) -> dict[str, bytes]:
    """The files `export_vector` writes, as {file name: bytes} (for downloads): written into a
    temporary folder as `<stem><suffix>` and read back. Raises InvalidInputError like
    `export_vector` (e.g. a GGUF of a block-0 vector)."""
    import tempfile

    _check_format(fmt)
    name = Path(stem).name
    if not name or name in (".", ".."):
        raise InvalidInputError(f"give a file name stem for the export, got {stem!r}")
    with tempfile.TemporaryDirectory(prefix="steer-export-") as tmp:
        paths = export_vector(vector, fmt, Path(tmp) / f"{name}{FILE_SUFFIXES[fmt]}",
                              strength=strength, model=model)
        return {p.name: p.read_bytes() for p in paths}


# -- from a lab ------------------------------------------------------------------------------
def load_vector(lab: Lab, name: str) -> SteeringVector:
    """A lab `steering` artifact, or a vector file pair / artifact folder given by path."""
    if lab.exists(name):
        return SteeringVector.from_lab(lab, name)
    path = Path(name).expanduser()
    if path.exists() or path.with_suffix(".json").exists() or Path(f"{path}.json").exists():
        return SteeringVector.load(path)
    kept = ", ".join(a.name for a in lab.list("steering")) or "none"
    raise NotFoundError(f"no steering vector named {name!r} in lab {lab.root} (steering "
                        f"vectors: {kept}) and no vector files at that path")


def lab_model_shape(lab: Lab, model_name: str) -> ModelShape | None:
    """The shape of lab model `model_name` from its config.json; None if it is not in the lab."""
    from workbench.models.model_io import CONFIG_FILE, config_from_dict

    base = model_name.split("@", 1)[0]
    if not base or not lab.exists(base):
        return None
    art = lab.get(base, kind="model")
    return ModelShape.from_config(config_from_dict(read_json(art.path / CONFIG_FILE,
                                                             f"config of model {base!r}")))


def export_lab_vector(lab: Lab, name: str, fmt: str, out: str | os.PathLike,
                      strength: float | None = None, overwrite: bool = False) -> list[Path]:
    """`workbench steer export NAME --format F --out PATH`: checked against the vector's
    model when that model is in the lab."""
    _check_format(fmt)
    vector = load_vector(lab, name)
    return export_vector(vector, fmt, out, strength=strength,
                         model=lab_model_shape(lab, vector.model), overwrite=overwrite)


__all__ = [
    "FORMATS",
    "ModelShape",
    "check_fits",
    "export_files",
    "export_lab_vector",
    "export_vector",
    "gguf_directions",
    "gguf_layer",
    "neuronpedia_request",
    "read_gguf",
    "write_gguf",
    "write_neuronpedia",
    "write_safetensors_pair",
]
