# Two commands: `make demo` runs the main job, `make test` runs the tests.
# Both create or reuse the virtual environment in .venv/ and install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v2
# torch: an already-installed torch is kept (the venv sees system site-packages); otherwise the
# pinned CPU-compatible release is installed. Never an unpinned torch (it would pull a CUDA build).
TORCH_PIN := torch==2.13.0

.PHONY: venv demo test test-all bench clean-venv

venv: $(STAMP)

$(STAMP): setup.cfg Makefile
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	@$(PY) -m pip install -q numpy versioneer setuptools wheel
	@# pyradiomics: its 3.1.0 sdist has broken metadata; building without isolation works (it needs numpy at build time)
	@$(PY) -c "import radiomics" 2>/dev/null || $(PY) -m pip install -q --no-build-isolation pyradiomics
	@$(PY) -m pip install -q nibabel scipy scikit-image scikit-learn tqdm matplotlib openpyxl pytest
	@touch $(STAMP)

# The main job on the default (phantom) dataset: data summary, MedNeXt k3 training (fold 0, the
# CPU plan on a machine without CUDA), ensemble inference on the test split, official evaluation,
# then the pCR model and its evaluation. Re-running resumes/reuses what is already done.
# The pCR model learns from its own phantom, 200 small cases drawn with seed 1 (no patient shared
# with the 40-case default set; generated once and cached, ~5 min with the radiomics): the 30
# labelled training cases of the default set leave it at chance. Its table shows the balanced
# accuracy with bootstrap intervals beside the receptor rule, LR, RF and the generator's oracle.
DEMO_RUN := demo_mednext_k3
DEMO_PRED := predictions/demo
# minutes of training: the 20 epochs take ~8 on the 2-core development machine; a slower CPU
# trains the epochs that fit (the first epoch is timed; the output says how many)
DEMO_TRAIN_MIN := 9
DEMO_PCR := --phantom-cases 200 --phantom-seed 1 --split all --clinical --run demo_pcr

demo: venv
	$(PY) -m data.phantom --summary
	$(PY) train.py --arch mednext --kernel 3 --run $(DEMO_RUN) --resume --time-budget $(DEMO_TRAIN_MIN)
	$(PY) train.py --task pcr $(DEMO_PCR)
	$(PY) infer.py --ensemble --runs $(DEMO_RUN) --output $(DEMO_PRED) --overwrite --pcr --pcr-run demo_pcr
	$(PY) eval.py --subgroups age,density --pred $(DEMO_PRED)
	$(PY) eval.py --task pcr --subgroups age,menopause --pred $(DEMO_PRED)

# The tests also cover the optional ONNX export and the Triton depthwise kernels (run on the CPU
# through Triton's interpreter), so they install those extras; without Triton its tests are skipped.
TRITON_PIN := triton==3.9.0
test: venv
	@$(PY) -c "import onnx, onnxruntime" 2>/dev/null || $(PY) -m pip install -q onnx onnxruntime
	@$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q $(TRITON_PIN) \
		|| echo "triton could not be installed: its kernel tests are skipped"
	$(PY) -m pytest -q

test-all: venv
	@$(PY) -c "import onnx, onnxruntime" 2>/dev/null || $(PY) -m pip install -q onnx onnxruntime
	$(PY) -m pytest -q -m ""

clean-venv:
	rm -rf $(VENV)

# Side-by-side benchmarks (bench/*.py, each ends with a JSON line). The peers are installed only
# here: nnU-Net v2 and its own packages without their dependency trees (which would pull timm,
# torchvision and, through them, a CUDA torch), then the few libraries they import, with torch
# pinned to the installed build so pip can never replace it.
PEER_PKGS := nnunetv2 dynamic-network-architectures batchgeneratorsv2 batchgenerators acvl-utils monai
PEER_DEPS := SimpleITK pandas blosc2 connected-components-3d seaborn tifffile threadpoolctl

bench: venv
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	@$(PY) -c "import nnunetv2, dynamic_network_architectures, batchgeneratorsv2, acvl_utils, monai" 2>/dev/null \
		|| $(PY) -m pip install -q --no-deps -c $(VENV)/torch-constraint.txt $(PEER_PKGS)
	@$(PY) -c "import SimpleITK, pandas, blosc2, cc3d, seaborn, tifffile, threadpoolctl" 2>/dev/null \
		|| $(PY) -m pip install -q -c $(VENV)/torch-constraint.txt $(PEER_DEPS)
	@status=0; for f in bench/*.py; do echo "== $$f"; $(PY) $$f || status=1; done; exit $$status
