"""Shared pieces of the dashboard pages: the lab, cached models/SAEs/tables keyed by artifact,
error handling (messages, never tracebacks), "missing data" notices that offer the job that
makes it, and plotly styling.

Caching: models and SAEs are `st.cache_resource` entries keyed by (lab, name, created time), so
switching artifacts is correct and a retrained artifact of the same name is loaded afresh;
tables and per-query results are `st.cache_data` entries keyed the same way.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from workbench.errors import WorkbenchError
from workbench.lab import Artifact, Lab

log = logging.getLogger("workbench.dashboard")


# -- the lab -----------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _lab(root: str | None) -> Lab:
    return Lab(root)


def lab() -> Lab:
    """The dashboard's lab ($WORKBENCH_LAB, set by `workbench app --lab`)."""
    import os

    return _lab(os.environ.get("WORKBENCH_LAB"))


def _log_file(the_lab: Lab) -> Path:
    folder = the_lab.root / "logs"
    folder.mkdir(exist_ok=True)
    return folder / "dashboard.log"


def _ensure_log_handler(the_lab: Lab) -> None:
    path = str(_log_file(the_lab))
    if not any(getattr(h, "baseFilename", None) == path for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


# -- errors ------------------------------------------------------------------------------------
def show_error(exc: BaseException, where: str = "") -> None:
    """An error as a message: WorkbenchError text as is, anything else with its type; the
    traceback goes to LAB/logs/dashboard.log."""
    the_lab = lab()
    _ensure_log_handler(the_lab)
    log.error("%s%s\n%s", f"{where}: " if where else "", exc,
              "".join(traceback.format_exception(exc)))
    if isinstance(exc, WorkbenchError):
        st.error(str(exc))
    else:
        st.error(f"Something went wrong{f' in {where}' if where else ''}: "
                 f"{type(exc).__name__}: {exc}. The details are in {_log_file(the_lab)}.")


@contextmanager
def guarded(where: str = "") -> Iterator[None]:
    """Run a block; an exception becomes a message (Streamlit's own control flow passes)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (every error is shown as a message)
        show_error(exc, where)


RENDER_SECONDS: dict[str, float] = {}
"""Seconds the last run of a page's main function took (read by `workbench bench dashboard`),
keyed by the first line of its docstring ("The Lab page")."""


def page(fn: Callable[[], None]) -> Callable[[], None]:
    """Decorate a page's main function so nothing it raises reaches the browser as a
    traceback (and its render time is recorded in RENDER_SECONDS)."""
    title = fn.__doc__.splitlines()[0].rstrip(".") if fn.__doc__ else fn.__name__

    def run() -> None:
        start = time.perf_counter()
        try:
            with guarded(title):
                fn()
        finally:
            RENDER_SECONDS[title] = time.perf_counter() - start
    return run


# -- artifacts ---------------------------------------------------------------------------------
def artifacts(kind: str | None = None) -> list[Artifact]:
    return lab().list(kind)


def created(name: str) -> float:
    """A stamp of artifact `name`'s current version: the modification time of its manifest
    (0 for things outside the lab, e.g. a TransformerLens name). Part of every cache key, so a
    retrained artifact (a new folder, a new manifest) is not served stale. A stat call, cheap
    enough for every rerun."""
    from workbench.lab import MANIFEST, validate_name

    try:
        return (lab().root / "artifacts" / validate_name(name) / MANIFEST).stat().st_mtime
    except (OSError, WorkbenchError):
        return 0.0


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def _model(root: str, spec: str, stamp: float):
    from workbench.models.loading import load_model

    model = load_model(spec, lab=Lab(root), device="cpu")
    return model.eval()


def model(spec: str):
    """A HookedTransformer by lab name or TransformerLens name (cached per artifact)."""
    the_lab = lab()
    return _model(str(the_lab.root), spec, created(spec))


@st.cache_resource(show_spinner="Loading the SAE ...", max_entries=8)
def _sae(root: str, name: str, stamp: float):
    from saes.interop import load_sae

    return load_sae(name, lab=Lab(root), device="cpu")


def sae(name: str):
    the_lab = lab()
    return _sae(str(the_lab.root), name, created(name))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner="Reading the feature statistics ...", max_entries=8)
def _tables(root: str, name: str, stamp: float, mtime: float):
    from saes.features.browse import FeatureTables

    return FeatureTables.load(Lab(root), name)


def feature_tables(name: str):
    """The FeatureTables of SAE `name` (shared, read-only), or None when not computed yet."""
    the_lab = lab()
    path = the_lab.get(name, kind="sae").path / "feature_stats.parquet"
    if not path.exists():
        return None
    return _tables(str(the_lab.root), name, created(name), _mtime(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _json(path: str, mtime: float) -> Any:
    from workbench.lab import read_json

    return read_json(Path(path), Path(path).name)


def artifact_json(art: Artifact, file: str) -> Any | None:
    """A JSON file of an artifact folder (e.g. eval.json), cached by its mtime; None if absent."""
    path = art.path / file
    if not path.exists():
        return None
    return _json(str(path), _mtime(path))


def sae_model_and_hook(art: Artifact) -> tuple[str | None, str | None]:
    """The model and hook an SAE belongs to (manifest, else the sae-lens metadata)."""
    model_name, hook = art.manifest.get("model"), art.manifest.get("hook")
    if not (model_name and hook):
        from saes.evaluation.encoding import hook_name_of

        try:
            loaded = sae(art.name)
            hook = hook or hook_name_of(loaded)
            meta = getattr(loaded.cfg, "metadata", None)
            model_name = model_name or getattr(meta, "model_name", None)
        except WorkbenchError:
            pass
    return model_name, hook


# -- notices -----------------------------------------------------------------------------------
def missing(what: str, job_label: str | None = None, args: list[str] | None = None,
            names: list[str] | None = None, key: str = "") -> None:
    """Say what is missing; offer the job that makes it (started in the background)."""
    st.info(what)
    if job_label and args:
        st.caption(f"Job: `workbench {' '.join(args)}`")
        if st.button(job_label, key=f"missing-{key or job_label}", type="primary"):
            start_job(args, names)


def start_job(args: list[str], names: list[str] | None = None) -> int | None:
    """Start `workbench ARGS` as a background job through the job layer; shows the outcome."""
    from app.cli.background import start_command

    try:
        job_id = start_command(lab(), args, names)
    except WorkbenchError as exc:
        st.error(str(exc))
        return None
    st.success(f"Started job {job_id}: `workbench {' '.join(args)}`. Follow it on the Lab page.")
    return job_id


def start_planned_job(kind: str, values: dict[str, Any]) -> int | None:
    """Check a job form's values (app.dashboard.job_forms.plan): show each problem, or start
    the job."""
    from app.dashboard.job_forms import plan

    job_plan = plan(kind, values, lab())
    if not job_plan.ok:
        for problem in job_plan.problems:
            st.error(problem)
        return None
    return start_job(job_plan.args, job_plan.names)


# -- charts ------------------------------------------------------------------------------------
def style(fig, height: int = 320, x: str | None = None, y: str | None = None):
    """Consistent plotly layout: compact margins, readable fonts, axis titles."""
    layout: dict[str, Any] = {"height": height, "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
                              "font": {"size": 13}, "legend": {"orientation": "h", "y": -0.25}}
    if x is not None:
        layout["xaxis_title_text"] = x
    if y is not None:
        layout["yaxis_title_text"] = y
    fig.update_layout(**layout)
    return fig


def chart(fig, key: str | None = None) -> None:
    st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False})


def table(frame: pd.DataFrame, **kwargs: Any) -> None:
    st.dataframe(frame, width="stretch", hide_index=True, **kwargs)
