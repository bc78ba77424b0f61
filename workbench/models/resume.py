"""Resumable training state in a job's work folder.

Layout of `lab.work_dir(name)` while a model trains:

    resume/latest.json                         {"step": s, "folder": "state_XXXXXXXX"}
    resume/state_XXXXXXXX/model.safetensors    weights after step s
    resume/state_XXXXXXXX/state.pt             optimizer, scheduler, RNG, data position, logs
    kept/step_XXXXXXXX.safetensors             checkpoints that go into the model artifact

A new state folder is written completely before `latest.json` points to it (atomic rename), so
a crash at any moment leaves the previous state usable. `state.pt` holds only tensors and plain
Python values and is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from workbench.errors import InvalidInputError
from workbench.lab import read_json, write_json
from workbench.models.model_io import checkpoint_file, load_weights, save_weights

STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"


class ResumeStore:
    """Save and restore the full training state of one run in `work_dir`."""

    def __init__(self, work_dir: Path):
        self.work_dir = Path(work_dir)
        self.resume_dir = self.work_dir / "resume"
        self.kept_dir = self.work_dir / "kept"
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        self.kept_dir.mkdir(parents=True, exist_ok=True)

    @property
    def _latest(self) -> Path:
        return self.resume_dir / "latest.json"

    def latest_step(self) -> int | None:
        """Step of the last complete saved state, or None when there is none."""
        if not self._latest.exists():
            return None
        return int(read_json(self._latest, "resume pointer")["step"])

    def save(self, step: int, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """Save weights and `state` (plain values and tensors) as the state after `step`."""
        folder_name = f"state_{step:08d}"
        tmp = self.resume_dir / f".{folder_name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        save_weights(model, tmp / MODEL_FILE)
        torch.save({**state, "step": step}, tmp / STATE_FILE)
        final = self.resume_dir / folder_name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        write_json(self._latest, {"step": step, "folder": folder_name})
        for old in self.resume_dir.iterdir():
            if old.is_dir() and old.name != folder_name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, model: torch.nn.Module) -> dict[str, Any]:
        """Load the latest weights into `model` and return the saved state dict."""
        pointer = read_json(self._latest, "resume pointer")
        folder = self.resume_dir / str(pointer["folder"])
        load_weights(model, folder / MODEL_FILE)
        try:
            return torch.load(folder / STATE_FILE, weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise InvalidInputError(
                f"the training state in {folder} is damaged ({exc}); rerun with --restart to "
                "train from scratch"
            ) from exc

    def keep(self, step: int, model: torch.nn.Module) -> Path:
        """Write the weights after `step` as a kept checkpoint."""
        path = self.kept_dir / checkpoint_file(step)
        save_weights(model, path)
        return path

    def kept_files(self, steps: list[int]) -> list[Path]:
        return [self.kept_dir / checkpoint_file(s) for s in steps]

    def clear(self) -> None:
        """Forget every saved state and kept checkpoint (a fresh start)."""
        shutil.rmtree(self.resume_dir, ignore_errors=True)
        shutil.rmtree(self.kept_dir, ignore_errors=True)
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        self.kept_dir.mkdir(parents=True, exist_ok=True)
