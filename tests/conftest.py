"""Session fixtures: a tiny character tokenizer and a pair of tiny random Qwen3 experts, saved once, offline.

Odd sizes (hidden 32, intermediate 37) make shape mistakes fail loudly. The sft expert is the foundation with
perturbed weights, as a fine-tune would be.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory):
    """(foundation_dir, sft_dir) of two tiny random Qwen3 models sharing one tokenizer."""
    root = tmp_path_factory.mktemp("tiny_pair")
    return tiny.make_pair(root)


@pytest.fixture(scope="session")
def tiny_pair(tiny_pair_dirs):
    from sopmoe_models.experts import load_experts

    return load_experts(*tiny_pair_dirs, device="cpu")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A folder with small valid train/eval/task JSONL files."""
    return tiny.make_data(tmp_path_factory.mktemp("tiny_data"))
