# Two commands: `make demo` runs the main job, `make test` runs the tests.
# Both create or reuse the virtual environment in .venv/ and install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v1
# torch: an already-installed torch is kept (the venv sees system site-packages); otherwise the
# pinned CPU-compatible release is installed. Never an unpinned torch (it would pull a CUDA build).
TORCH_PIN := torch==2.13.0

.PHONY: venv demo test test-all bench clean-venv

venv: $(STAMP)

$(STAMP): setup.cfg Makefile
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	@$(PY) -m pip install -q numpy versioneer setuptools wheel
	@# pyradiomics: its 3.1.0 sdist has broken metadata; building without isolation works (REFERENCE.md s.5)
	@$(PY) -c "import radiomics" 2>/dev/null || $(PY) -m pip install -q --no-build-isolation pyradiomics
	@$(PY) -m pip install -q nibabel scipy scikit-image scikit-learn tqdm matplotlib pytest
	@touch $(STAMP)

demo: venv
	$(PY) -m data.phantom --summary

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ""

clean-venv:
	rm -rf $(VENV)
