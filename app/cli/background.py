"""Start workbench commands as background jobs (used by `workbench lab start` and the
dashboard's job forms). The job layer itself is `workbench.jobs`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from workbench.errors import InvalidInputError
from workbench.jobs import launch
from workbench.lab import Lab, validate_name

REPO_ROOT = Path(__file__).resolve().parents[2]


def names_of(args: list[str]) -> list[str]:
    """Artifact names a command line makes: the values of its --name options
    (comma-separated lists allowed, as sweeps take)."""
    names = []
    for i, arg in enumerate(args):
        value = None
        if arg == "--name" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--name="):
            value = arg.split("=", 1)[1]
        if value:
            names += [n for n in value.split(",") if n]
    return names


def start_command(lab: Lab, args: list[str], names: list[str] | None = None) -> int:
    """Launch `workbench ARGS` in the background over `lab`; returns the job id.

    names: the artifacts it makes (default: its --name values); refused at once (naming the
    running job) if one of them is being made.
    """
    args = [a for a in args if a != "--"] if args[:1] == ["--"] else list(args)
    if not args:
        raise InvalidInputError("no command given; e.g. `workbench lab start -- sae train ...`")
    if args[0] in ("app", "demo") or args[:2] == ["lab", "start"]:
        raise InvalidInputError(f"`workbench {args[0]}` cannot run as a background job")
    names = [validate_name(n) for n in (names if names is not None else names_of(args))]
    title = " ".join(args[:2]) + (f" {','.join(names)}" if names else "")
    command = [sys.executable, "-m", "app.cli", *args]
    pythonpath = str(REPO_ROOT)

    env = {"PYTHONPATH": os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH"))
                                         if p)}
    return launch(lab, command, title=title, names=names, env=env, cwd=REPO_ROOT)
