# Two entry points for a fresh machine: `make demo` (set up, train the debug config) and
# `make test` (set up, run the whole suite, the TorchRec backend's tests included). torch is
# pinned to the CPU build kept on disk.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCHREC_STAMP := $(VENV)/.torchrec
DEMO_OUT ?= runs/demo

.PHONY: setup torchrec demo test bench gpu-wheels clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0 triton==3.9.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The TorchRec backend (model.backend=torchrec). torchrec 1.8.0's metadata requires fbgemm-gpu, the
# CUDA build (GBs), and an extra cannot say --no-deps: so the [torchrec] extra holds what pip can
# resolve (fbgemm-gpu-cpu and torchrec's real needs), installed under the torch==2.13.0 constraint
# (any other torch downloads a CUDA build), then torchrec itself without its dependencies.
$(TORCHREC_STAMP): $(STAMP) constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[torchrec]'
	$(BIN)/python -m pip install -q --no-deps torchrec==1.8.0
	touch $(TORCHREC_STAMP)

torchrec: $(TORCHREC_STAMP)

demo: $(STAMP)
	$(BIN)/python launch/train.py --config configs/debug.yaml --out $(DEMO_OUT) --overwrite

# two workers (pytest-xdist): the multi-process tests wait on their ranks' start-up and messages, so
# a second worker fills the gaps (15m27s -> 12m40s on the 2-core CI machine); `pytest` alone runs serially
test: $(STAMP) $(TORCHREC_STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

# The wheels a GPU host without network needs for benchmarks/gpu_session.sh (Python 3.11-3.13, x86-64)
GPU_WHEEL_ARGS := --no-deps --only-binary=:all: --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download -q $(GPU_WHEEL_ARGS) nvidia-libnvcomp-cu13==6.0.0.12 nvidia-nvcomp-cu13==6.0.0.12
	for v in 3.11 3.12 3.13; do $(BIN)/python -m pip download -q $(GPU_WHEEL_ARGS) --python-version $$v zstandard; done

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
