"""sae-lens interop: load any SAE as a `sae_lens.SAE`, import sae-lens folders into the lab.

    load_sae("sae-topk-k32", lab=lab)                    # an `sae` artifact of the lab
    load_sae("/path/to/sae_lens_folder")                 # cfg.json + sae_weights.safetensors
    load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")  # sae-lens release/sae_id (network)
    import_sae(lab, "/path/to/folder", "imported-sae", model="lm", hook="blocks.1.hook_resid_post")

Our own architectures ("topafa", "structured") are registered with sae-lens when `saes` is
imported, so every folder the trainer writes loads here and in plain sae-lens alike.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
from sae_lens.registry import SAE_CLASS_REGISTRY
from safetensors import SafetensorError

import saes  # noqa: F401  (registers our architectures with sae-lens)
from workbench.device import resolve_device
from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError
from workbench.lab import Artifact, Lab, default_lab_root, read_json, validate_name, write_json


def load_sae(spec: str | Path, lab: Lab | None = None, device: Any = None) -> SAE:
    """An SAE by lab artifact name, sae-lens folder path, or sae-lens `release/sae_id`.

    lab: where names are looked up (None: the default lab, if one exists on disk).
    Returns the sae-lens object in eval mode on `device` (default: CUDA when present, else CPU).
    Raises NotFoundError when nothing matches, InvalidInputError for a broken folder.
    """
    device = str(resolve_device(device))
    text = str(spec)
    if lab is None and (default_lab_root() / "catalog.sqlite").exists():
        lab = Lab()  # the default lab, when there is one ($WORKBENCH_LAB or ./lab)
    if lab is not None and _is_artifact_name(text) and lab.exists(text):
        return load_sae_folder(lab.get(text, kind="sae").path, device)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_sae_folder(path, device)
    if "/" in text and not path.exists():
        return _load_pretrained(text, device)
    available = [a.name for a in lab.list("sae")] if lab is not None else []
    raise NotFoundError(
        f"no SAE {text!r}: not an sae artifact of the lab"
        + (f" (available: {', '.join(available[:30]) or 'none yet'})" if lab is not None else "")
        + ", not a folder with cfg.json, and not a sae-lens release/sae_id"
    )


def load_sae_folder(path: str | Path, device: Any = "cpu") -> SAE:
    """Load a sae-lens folder (cfg.json + sae_weights.safetensors), turning problems into
    clear errors: missing files, unknown architecture, corrupt or mismatched weights."""
    folder = Path(path)
    cfg = read_json(folder / SAE_CFG_FILENAME, f"the SAE config of {folder}")
    if not isinstance(cfg, dict):
        raise InvalidInputError(f"{folder / SAE_CFG_FILENAME} is not a JSON object; not a sae-lens SAE")
    arch = cfg.get("architecture", "standard")
    if arch not in SAE_CLASS_REGISTRY:
        raise InvalidInputError(
            f"{folder} holds an SAE of architecture {arch!r}, which sae-lens does not know; "
            f"known: {', '.join(sorted(SAE_CLASS_REGISTRY))}"
        )
    weights = folder / SAE_WEIGHTS_FILENAME
    if not weights.exists():
        raise NotFoundError(f"{folder} has no {SAE_WEIGHTS_FILENAME}; not a complete sae-lens SAE")
    try:
        sae = SAE.load_from_disk(folder, device=str(device))
    except (SafetensorError, RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(
            f"cannot load the SAE in {folder}: {type(exc).__name__}: {str(exc)[:300]}. The weights "
            "file is corrupt or does not match cfg.json; re-export or re-download it"
        ) from exc
    return sae.eval()


def _load_pretrained(spec: str, device: str) -> SAE:
    """`release/sae_id` from the sae-lens pretrained directory (downloads from the Hub)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    parts = spec.split("/")
    split = next((i for i in range(1, len(parts)) if "/".join(parts[:i]) in directory), None)
    if split is None:
        raise NotFoundError(
            f"{spec!r} is not a lab SAE, a folder, or a known sae-lens release/sae_id; sae-lens "
            f"releases look like {', '.join(list(directory)[:5])}, ..."
        )
    release, sae_id = "/".join(parts[:split]), "/".join(parts[split:])
    try:
        return SAE.from_pretrained(release, sae_id, device=device).eval()
    except ValueError as exc:
        raise NotFoundError(f"sae-lens release {release!r}: {exc}") from exc
    except Exception as exc:  # network / hub errors
        raise WorkbenchError(
            f"could not fetch {release}/{sae_id} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc)[:200]}); this needs network access (unset HF_HUB_OFFLINE) or a local "
            "copy of the folder"
        ) from exc


def _is_artifact_name(text: str) -> bool:
    try:
        validate_name(text)
    except InvalidInputError:
        return False
    return True


def import_sae(
    lab: Lab,
    path: str | Path,
    name: str,
    model: str | None = None,
    hook: str | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Copy a sae-lens folder into the lab as an `sae` artifact (validated by loading it).

    model / hook: recorded in the copied cfg.json metadata (and checked against the model when
    it is a lab model: the hook must exist and its width must equal the SAE's d_in).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotFoundError(f"{folder} is not a folder; pass a sae-lens SAE folder")
    sae = load_sae_folder(folder, "cpu")
    meta = sae.cfg.metadata
    model = model or meta.model_name
    hook = hook or meta.hook_name
    if model and hook and lab.exists(model):
        _check_hook_width(lab, model, hook, int(sae.cfg.d_in))
    parents = [model] if model and lab.exists(model) else []
    config = {"imported_from": str(folder.resolve()), "model": model, "hook": hook}
    with lab.new_artifact("sae", name, parents=parents, config=config, overwrite=overwrite) as art:
        for file in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME):
            if (folder / file).exists():
                shutil.copy2(folder / file, art.path / file)
        cfg = json.loads((art.path / SAE_CFG_FILENAME).read_text())
        cfg.setdefault("metadata", {}).update({"model_name": model, "hook_name": hook})
        write_json(art.path / SAE_CFG_FILENAME, cfg)
        copied = load_sae_folder(art.path, "cpu")
        art.manifest.update({
            "arch": copied.cfg.architecture(),
            "sae_lens_architecture": copied.cfg.architecture(),
            "model": model,
            "hook": hook,
            "d_in": int(copied.cfg.d_in),
            "d_sae": int(copied.cfg.d_sae),
            "imported_from": str(folder.resolve()),
        })
    return lab.get(name)


def _check_hook_width(lab: Lab, model_name: str, hook: str, d_in: int) -> None:
    """The hook must exist in the lab model and give activations of width d_in."""
    from saes.training.sources import hook_width
    from workbench.models.hooks import validate_hook
    from workbench.models.loading import load_model

    model = load_model(model_name, lab=lab, device="cpu")
    validate_hook(model, hook)
    width = hook_width(model, hook)
    if width != d_in:
        raise InvalidInputError(
            f"the SAE reads d_in={d_in} but {model_name!r} gives width {width} at {hook!r}; "
            "pick the hook the SAE was trained on"
        )
