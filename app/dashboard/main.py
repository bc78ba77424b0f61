"""Dashboard entry: `workbench app` serves this file (Streamlit multipage via st.navigation).

The lab comes from $WORKBENCH_LAB (set by the CLI's --lab). Pages live in `views/` (a folder
named `pages/` would also be listed by Streamlit as its own navigation when a page's URL is opened
directly); each page guards itself so errors show as messages, never as tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `streamlit run app/dashboard/main.py` from anywhere
    sys.path.insert(0, str(ROOT))

PAGES = Path(__file__).parent / "views"

# The pages, in navigation order. Areas add theirs here (MoE-X, steering, analyses) as
# st.Page(PAGES / "<area>.py", title=...) (no icon: see below).
NAVIGATION = {
    "Workbench": [
        st.Page(PAGES / "lab.py", title="Lab", default=True),
        st.Page(PAGES / "model.py", title="Model"),
    ],
    "Sparse autoencoders": [
        st.Page(PAGES / "saes.py", title="SAEs"),
        st.Page(PAGES / "features.py", title="Feature browser"),
    ],
    "Steering": [st.Page(PAGES / "steering.py", title="LangFIR and steering")],
    "Analyses": [
        st.Page(PAGES / "sparsity_laws.py", title="Sparsity laws"),
        st.Page(PAGES / "attention.py", title="Attention sparsity"),
        st.Page(PAGES / "depth.py", title="Depth utilization"),
    ],
    "MoE-X": [st.Page(PAGES / "moex.py", title="MoE-X")],
}

# No page_icon and no st.Page icons: Streamlit turns them into the favicon, fetched from
# Google's font CDN (Material symbols) or an emoji CDN, which an offline lab cannot reach.
st.set_page_config(page_title="Sparsity workbench", layout="wide")
st.navigation(NAVIGATION).run()
