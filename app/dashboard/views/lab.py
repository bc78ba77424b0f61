"""Lab page: the artifacts and their lineage, jobs with live progress, forms that start jobs."""

from __future__ import annotations

import json
import time

import pandas as pd
import streamlit as st

from app.dashboard import common, steer_forms
from app.dashboard.analyses import job_fields as analysis_job_fields
from app.dashboard.job_forms import ANALYSIS_KINDS, JOB_KINDS, SAE_ARCHS, SAE_BATCH, plan
from app.dashboard.lineage import lineage_figure
from workbench.jobs import ACTIVE, cancel, log_path


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def artifact_table(arts) -> pd.DataFrame:
    rows = []
    for a in arts:
        scalars = {k: v for k, v in a.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append({"name": a.name, "kind": a.kind, "parents": ", ".join(a.parents),
                     "created": _when(a.created),
                     "metrics": ", ".join(f"{k}={v:.4g}" for k, v in list(scalars.items())[:4])})
    return pd.DataFrame(rows, columns=["name", "kind", "parents", "created", "metrics"])


def artifacts_section(arts) -> None:
    table = artifact_table(arts)
    kinds = sorted(table.kind.unique())
    chosen = st.multiselect("Kinds", kinds, default=kinds)
    common.table(table[table.kind.isin(chosen)])
    name = st.selectbox("Details of", table.name.tolist())
    if name:
        art = common.lab().get(name)
        st.caption(f"`{art.path}`")
        left, right = st.columns(2)
        left.markdown("**Config**")
        left.json(art.config, expanded=False)
        right.markdown("**Metrics**")
        right.json(json.loads(json.dumps(art.metrics, default=str)), expanded=False)


def _job_rows(jobs: list[dict]) -> pd.DataFrame:
    rows = []
    for j in jobs:
        rows.append({"id": j["id"], "kind": j["kind"], "makes": ", ".join(j["names"]),
                     "status": j["status"],
                     "progress": f"{j['step']}/{j['total']}" if j["total"] else "",
                     "parent": str(j["parent"]) if j.get("parent") else "", "started": _when(j["created"]),
                     "message": j["message"]})
    return pd.DataFrame(rows, columns=["id", "kind", "makes", "status", "progress", "parent",
                                       "started", "message"])


def _active_job(job: dict, children: list[dict]) -> None:
    lab = common.lab()
    running = [c for c in children if c["status"] in ACTIVE] or [job]
    current = running[-1]
    label = f"job {job['id']} · {', '.join(current['names'])} · {current['kind']}"
    fraction = current["step"] / current["total"] if current["total"] else 0.0
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in current["metrics"].items()
                        if isinstance(v, (int, float)))
    cols = st.columns([5, 1])
    cols[0].progress(min(max(fraction, 0.0), 1.0),
                     text=f"{label}: {current['status']} {current['step']}/{current['total']}"
                          f"{' · ' + metrics if metrics else ''}")
    if cols[1].button("Cancel", key=f"cancel-{job['id']}"):
        with common.guarded("cancelling the job"):
            row = cancel(lab, job["id"], timeout=10)
            st.toast(f"job {job['id']} {row['status']}")
    if job["kind"] == "command":
        log = log_path(lab, job["id"])
        if log.exists():
            with st.expander("Output"):
                st.code("\n".join(log.read_text(errors="replace").splitlines()[-15:])
                        .replace("\r", "\n")[-3000:] or "(no output yet)")


def jobs_section() -> None:
    lab = common.lab()
    jobs = lab.jobs(limit=60)
    tops = [j for j in jobs if not j.get("parent")]
    active = [j for j in tops if j["status"] in ACTIVE]
    if active:
        st.markdown(f"**Running** ({len(active)})")
        for job in active:
            _active_job(job, lab.jobs_of_parent(job["id"]))
    if not jobs:
        st.info("No jobs yet. Start one below, or from a terminal with `workbench ...`.")
        return
    st.markdown("**Recent jobs**")
    common.table(_job_rows(jobs[:30]))


@st.fragment(run_every=2.0)
def live_jobs() -> None:
    """Jobs, refreshed every 2 s (only this fragment reruns, so the page stays responsive)."""
    with common.guarded("the job list"):
        jobs_section()


def _names(kind: str) -> list[str]:
    return [a.name for a in common.artifacts(kind)]


def job_form() -> None:
    titles = {k.title: k for k in JOB_KINDS}
    chosen = titles[st.selectbox("Job", list(titles), key="job-kind")]
    st.caption(chosen.summary)
    if chosen.key in steer_forms.KINDS:
        steer_forms.job_form(chosen.key, key="lab")
        return
    values: dict = {}
    with st.form(f"form-{chosen.key}"):
        if chosen.key == "lm":
            values["corpus"] = st.selectbox("Corpus", _names("corpus"))
            values["tokenizer"] = st.selectbox("Tokenizer", [""] + _names("tokenizer"),
                                               help="empty: trained from the corpus")
            values["name"] = st.text_input("Name of the new model", "my-lm")
            values["preset"] = st.selectbox("Preset", ["tiny", "small"])
            values["steps"] = st.number_input("Steps", 1, 1_000_000, 1000)
        elif chosen.key == "acts":
            values["model"] = st.selectbox("Model", _names("model"))
            values["hook"] = st.text_input("Hook", "blocks.0.hook_resid_post")
            values["corpus"] = st.selectbox("Corpus", _names("corpus"))
            values["tokens"] = st.number_input("Tokens", 1000, 100_000_000, 200_000, step=1000)
            values["name"] = st.text_input("Name of the new activations", "my-acts")
        elif chosen.key in ("sae", "sweep"):
            values["acts"] = st.selectbox("Activations", _names("activations"))
            if chosen.key == "sae":
                values["name"] = st.text_input("Name of the new SAE", "my-sae")
                values["arch"] = st.selectbox("Architecture", SAE_ARCHS)
                values["latents"] = st.number_input("Latents", 2, 1_000_000, 2048)
                values["k"] = st.number_input("k (TopK / BatchTopK)", 1, 10_000, 32)
            else:
                values["prefix"] = st.text_input("Name prefix", "sweep")
                values["archs"] = st.multiselect("Architectures", SAE_ARCHS, ["topk"])
                values["latents"] = st.text_input("Latents (comma list)", "1024,2048")
                values["k"] = st.text_input("k (comma list, TopK / BatchTopK)", "16,32")
            values["tokens"] = st.number_input("Training tokens", 1, 1_000_000_000,
                                               400_000, step=4096,
                                               help=f"at least one batch ({SAE_BATCH})")
        elif chosen.key in ("eval", "stats"):
            values["sae"] = st.selectbox("SAE", _names("sae"))
            values["tokens"] = st.number_input("Tokens", 256, 10_000_000,
                                               16384 if chosen.key == "eval" else 50_000)
            values["acts"] = st.selectbox("Activations (for SAEs without their own)",
                                          [""] + _names("activations"))
        elif chosen.key in ANALYSIS_KINDS:
            values = analysis_job_fields(chosen.key, key=f"lab-{chosen.key}")
        submitted = st.form_submit_button("Start job", type="primary")
    if submitted:
        common.start_planned_job(chosen.key, values)


@common.page
def main() -> None:
    """The Lab page."""
    lab = common.lab()
    st.title("Sparsity workbench")
    st.caption(f"Lab: `{lab.root}`")
    arts, broken = lab.scan()
    for item in broken:
        st.warning(f"Artifact **{item['name']}** cannot be read: {item['error']}")
    if not arts:
        st.info("The lab is empty. Build the default lab (a multilingual corpus, a small LM, "
                "its activations and two SAEs) to fill every page.")
        with common.guarded("starting the default lab"):
            default = plan("default-lab", {}, lab)
            if default.ok and st.button("Build the default lab", type="primary"):
                common.start_job(default.args, default.names)
    else:
        counts = pd.Series([a.kind for a in arts]).value_counts()
        for col, (kind, count) in zip(st.columns(len(counts)), counts.items()):
            col.metric(kind, int(count))
    tab_art, tab_graph, tab_jobs, tab_start = st.tabs(
        ["Artifacts", "Lineage", "Jobs", "Start a job"])
    with tab_art:
        if arts:
            artifacts_section(arts)
        else:
            st.caption("No artifacts yet.")
    with tab_graph:
        if arts:
            common.chart(lineage_figure(arts), key="lineage")
        else:
            st.caption("The lineage graph appears once the lab has artifacts.")
    with tab_jobs:
        live_jobs()
    with tab_start:
        job_form()


main()
