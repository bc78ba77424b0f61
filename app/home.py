"""Dashboard home page: the lab's artifacts and jobs.

Run with `workbench app` (binds to 127.0.0.1:8501 unless told otherwise). The lab folder comes
from $WORKBENCH_LAB (set by the CLI's --lab option).
"""

from __future__ import annotations

import json
import time

import pandas as pd
import streamlit as st

from workbench.lab import Lab

st.set_page_config(page_title="Sparsity workbench", layout="wide")


@st.cache_resource
def _lab() -> Lab:
    return Lab()


def _artifact_table(lab: Lab) -> pd.DataFrame:
    rows = []
    for art in lab.list():
        scalar_metrics = {k: v for k, v in art.metrics.items() if isinstance(v, (int, float))}
        rows.append(
            {
                "name": art.name,
                "kind": art.kind,
                "parents": ", ".join(art.parents),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(art.created)),
                "metrics": ", ".join(f"{k}={v:.4g}" for k, v in list(scalar_metrics.items())[:4]),
            }
        )
    return pd.DataFrame(rows, columns=["name", "kind", "parents", "created", "metrics"])


def main() -> None:
    lab = _lab()
    st.title("Sparsity workbench")
    st.caption(f"Lab: `{lab.root}`")
    table = _artifact_table(lab)
    if table.empty:
        st.info("The lab is empty. Run `workbench demo` to build the default lab.")
        return
    counts = table.kind.value_counts()
    cols = st.columns(max(1, len(counts)))
    for col, (kind, count) in zip(cols, counts.items()):
        col.metric(kind, int(count))

    st.subheader("Artifacts")
    kinds = sorted(table.kind.unique())
    chosen = st.multiselect("Kinds", kinds, default=kinds)
    st.dataframe(table[table.kind.isin(chosen)], use_container_width=True, hide_index=True)

    name = st.selectbox("Details of", table.name.tolist())
    if name:
        art = lab.get(name)
        left, right = st.columns(2)
        left.markdown("**Config**")
        left.json(art.config)
        right.markdown("**Metrics**")
        right.json(json.loads(json.dumps(art.metrics, default=str)))

    jobs = lab.jobs(limit=20)
    if jobs:
        st.subheader("Recent jobs")
        job_table = pd.DataFrame(
            [
                {
                    "id": j["id"],
                    "kind": j["kind"],
                    "name": j["name"],
                    "status": j["status"],
                    "progress": f"{j['step']}/{j['total']}",
                    "message": j["message"],
                }
                for j in jobs
            ]
        )
        st.dataframe(job_table, use_container_width=True, hide_index=True)


main()
