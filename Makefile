# Two commands: `make demo` (set up, build the default lab, serve the dashboard) and
# `make test` (set up, run the whole test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(VENV)/bin/workbench demo

test: setup
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider tests

clean-venv:
	rm -rf $(VENV)
