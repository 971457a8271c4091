"""Issue 23 item 2: ``accelerate launch -m lm_eval --model sopmoe_*`` is data parallel.

Two CPU processes (gloo; accelerate's multi-process launcher with no CUDA visible) split the requests, each process
scoring about half, and give the one-process results: every document's scores identical (batch size 1, so no
request shares a batch with different neighbours), the metrics equal, and the adapters' statistics (routing shares,
dispatch counts) over all the requests, not rank 0's half. Slow: each launch starts two interpreters with torch and
lm-eval (~30-60 s on the shared 2-core machine).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sopmoe_models.data import Example, write_jsonl
from tests import data_parallel_driver

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sop_strict", "eval_gen"]  # one loglikelihood task, one generation task
N_DOCS = 5  # per task: an odd count, so one process gets a padding repeat
LINE = re.compile(r"process (\d) of 2 scored (\d+) (\w+) requests \((\d+) padding\)")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dp_data")
    for family in ("sop_strict", "eval"):
        rows = [Example(f"请按照SOP流程处理退款:订单A{i},价格{i + 3}元", f"步骤1:核实订单A{i};步骤2:退款{i + 3}元",
                        id=f"{family}-{i}", category=family) for i in range(N_DOCS)]
        write_jsonl(root / f"{family}.jsonl", rows)
    return root


def _launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` of two CPU processes (its multi-process launcher, with CUDA hidden: DDP over gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _split(lines: str) -> dict[int, int]:
    """{rank: requests it scored, padding repeats excluded} from the adapters' per-process lines."""
    counts = {0: 0, 1: 0}
    for rank, n, _kind, padding in LINE.findall(lines):
        counts[int(rank)] += int(n) - int(padding)
    return counts


def _check_halves(counts: dict[int, int]) -> None:
    assert sum(counts.values()) == N_DOCS * len(TASKS)  # every request scored once, by one process
    assert abs(counts[0] - counts[1]) <= len(TASKS)  # lm-eval deals each task's documents out in turn


def test_one_process_is_left_as_it_was(tiny_pair, monkeypatch):
    """Without a multi-process launch nothing changes: rank 0 of 1, no accelerator, the experts where asked."""
    from sopmoe_models.adapters.ensemble import EnsembleLMEval
    from sopmoe_models.adapters.parallel import launched_accelerator, process_device

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    launched_accelerator.cache_clear()
    lm = EnsembleLMEval(pair=tiny_pair, foundation=tiny_pair.foundation_path, sft=tiny_pair.sft_path, device="cpu")
    assert (lm.rank, lm.world_size, process_device()) == (0, 1, None) and not hasattr(lm, "accelerator")


def test_padding_repeats_are_not_counted_twice():
    """lm-eval pads a shorter shard with the same Instance again; statistics count each request once."""
    import torch

    from sopmoe_models.adapters.parallel import first_seen, unique
    from sopmoe_models.routers.stats import RoutingStats

    a, b = object(), object()
    assert first_seen([a, b, b, b]) == [True, True, False, False] and unique([a, b, b]) == [a, b]
    gates = [torch.tensor([[0.25, 0.75], [0.5, 0.5]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]] * 3)]
    whole, halves = RoutingStats(), [RoutingStats(), RoutingStats()]
    for i, g in enumerate(gates):
        whole.add("t", g)
        halves[i % 2].add("t", g)
    assert RoutingStats.merged(halves).summary() == whole.summary()


@pytest.mark.slow
def test_two_processes_split_the_requests_and_match_one(tiny_pair_dirs, tiny_data_dir, data_dir, tmp_path):
    from sopmoe_models.config import load_config
    from sopmoe_models.experts import load_experts
    from training.dispatch_trainer import train_dispatch

    f, s = map(str, tiny_pair_dirs)
    cfg = load_config(None, {"models.foundation.path": f, "models.sft.path": s,
                             "data.train_file": str(tiny_data_dir / "train" / "train.jsonl"),
                             "data.eval_file": str(tiny_data_dir / "eval" / "eval_all.jsonl"),
                             "data.train_kinds": ["sop_strict", "reasoning", "eval"]}, use_default=False)
    classifier = tmp_path / "dispatch"
    train_dispatch(cfg, load_experts(f, s, device="cpu"), classifier, batch_size=4)
    models = [
        ["btm", "sopmoe_btm", {"router_type": "posterior", "foundation": f, "sft": s}],
        ["dispatch", "sopmoe_dispatch", {"classifier": str(classifier), "foundation": f, "sft": s}],
        ["merge", "sopmoe_merge", {"foundation": f, "sft": s, "method": "linear", "weight": 0.3}],
        ["distill", "sopmoe_distill", {"pretrained": s}],
        ["lookup", "sopmoe_ensemble", {"foundation": f, "sft": s, "draft": "lookup"}],
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    data_parallel_driver.evaluate(one, str(data_dir), TASKS, models)
    _launch([str(ROOT / "tests" / "data_parallel_driver.py"), str(two), str(data_dir), ",".join(TASKS),
             json.dumps(models)], cwd=tmp_path)
    for name, *_ in models:
        a = json.loads((one / f"{name}.json").read_text())
        b = json.loads((two / f"{name}.json").read_text())
        assert b["docs"] == a["docs"], name  # every document's scores and generations, identical
        for task in TASKS:
            for metric, value in a["results"][task].items():
                assert b["results"][task][metric] == (pytest.approx(value, rel=1e-9)
                                                      if isinstance(value, float) else value), (name, task, metric)
        _check_halves(_split((two / f"{name}.rank0.log").read_text() + (two / f"{name}.rank1.log").read_text()))
    # the adapters' statistics cover both processes' requests
    a = json.loads((one / "btm.json").read_text())["sopmoe"]["routing"]["tasks"]
    b = json.loads((two / "btm.json").read_text())["sopmoe"]["routing"]["tasks"]
    for task in TASKS:
        assert b[task]["n_queries"] == a[task]["n_queries"] == N_DOCS
        assert b[task]["n_tokens"] == a[task]["n_tokens"] and b[task]["sft"] == pytest.approx(a[task]["sft"])
    a = json.loads((one / "dispatch.json").read_text())["sopmoe"]
    b = json.loads((two / "dispatch.json").read_text())["sopmoe"]
    assert b["requests_sent"] == a["requests_sent"] and sum(a["requests_sent"].values()) == N_DOCS * len(TASKS)
    # speculative counts are work done: both processes' (the padding repeat's generation included)
    a = json.loads((one / "lookup.json").read_text())["sopmoe"]["speculation"]
    b = json.loads((two / "lookup.json").read_text())["sopmoe"]["speculation"]
    assert a["rounds"] > 0 and b["rounds"] >= a["rounds"] and b["tokens"] >= a["tokens"]


@pytest.mark.slow
def test_the_readme_command(tiny_pair_dirs, data_dir, tmp_path):
    """``accelerate launch ... -m lm_eval --model sopmoe_ensemble`` as the README gives it: rank 0 alone writes the
    results, which equal one process's."""
    f, s = map(str, tiny_pair_dirs)
    args = {"foundation": f, "sft": s, "foundation_weight": 0.7, "sft_weight": 0.3}
    data_parallel_driver.evaluate(tmp_path / "one", str(data_dir), TASKS, [["ensemble", "sopmoe_ensemble", args]])
    proc = _launch(["-m", "lm_eval", "--model", "sopmoe_ensemble", "--model_args",
                    ",".join(f"{k}={v}" for k, v in args.items()), "--tasks", ",".join(TASKS), "--batch_size", "1",
                    "--output_path", str(tmp_path / "two"), "--log_samples",
                    "--metadata", json.dumps({"data_dir": str(data_dir)})], cwd=tmp_path)
    _check_halves(_split(proc.stderr))
    (results_file,) = (tmp_path / "two").rglob("results_*.json")  # one file: only rank 0 writes
    b = json.loads(results_file.read_text())
    a = json.loads((tmp_path / "one" / "ensemble.json").read_text())
    for task in TASKS:
        for metric, value in a["results"][task].items():
            assert b["results"][task][metric] == (pytest.approx(value, rel=1e-9)
                                                  if isinstance(value, float) else value), (task, metric)
        (samples,) = (tmp_path / "two").rglob(f"samples_{task}_*.jsonl")
        docs = {str(json.loads(line)["doc_id"]): json.loads(line)["filtered_resps"]
                for line in samples.read_text().splitlines()}
        assert docs == _text(a["docs"][task])  # lm-eval's CLI writes each response's parts as text


def _text(x):
    return [_text(v) for v in x] if isinstance(x, list) else {k: _text(v) for k, v in x.items()} \
        if isinstance(x, dict) else str(x)
