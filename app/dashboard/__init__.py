"""The Streamlit dashboard: `main.py` is the entry (st.navigation over `views/`), `common.py`
the shared helpers, `job_forms.py` the jobs it can start. Pages only draw and call the library
packages (workbench, saes); see docs/usage.md."""
