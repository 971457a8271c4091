"""``sopmoe_btm`` through lm-eval: forced-gate parity with ``--model hf``, routing statistics, arguments, real CLI.

Parity uses a pair whose padded lm_head rows carry real probability mass (:func:`tests.tiny.make_parity_pair`; the
parity rule of sopmoe_models/experts.py) and is scaled up so greedy decoding has no near-ties.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sopmoe_models.experts import ExpertMismatchError, load_experts
from sopmoe_models.routers import build_router
from tests import tiny

TASKS = ["sop_strict", "reasoning", "mixed_gen"]


@pytest.fixture(scope="module")
def parity_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("btm_parity")
    dirs = tiny.make_parity_pair(root)
    pair = load_experts(dirs["foundation"], dirs["sft"], device="cpu")
    for router_type in ("token_level", "layer_level"):
        torch.manual_seed(0)
        router = build_router(router_type, pair, hidden_size=8)
        for p in router.parameters():
            torch.nn.init.normal_(p, std=0.5)
        router.save_router(root / router_type)
        dirs[router_type] = str(root / router_type / "best_router.safetensors")
    return dirs


@pytest.fixture(scope="module")
def runs(parity_dirs, tiny_data_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir

    register_all()
    # only our tasks: indexing lm-eval's ~15k built-in ones costs ~12 s (the full index: test_lm_eval_discovery)
    tm = TaskManager(include_path=tasks_dir(), include_defaults=False,
                     metadata={"data_dir": str(tiny_data_dir / "eval"), "tokenizer": parity_dirs["foundation"]})
    cache = {}

    def run(model: str, **model_args):
        key = (model, tuple(sorted(model_args.items())))
        if key not in cache:
            cache[key] = lm_eval.simple_evaluate(model=model, model_args={**model_args, "device": "cpu"}, tasks=TASKS,
                                                 task_manager=tm, batch_size=2, log_samples=True)
        return cache[key]

    return run


def _samples(result, task):
    return sorted(result["samples"][task], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("expert", ["foundation", "sft"])
@pytest.mark.parametrize("router_type", ["posterior", "token_level", "layer_level"])
def test_forced_router_equals_the_expert_run_by_hf(runs, parity_dirs, router_type, expert):
    hf = runs("hf", pretrained=parity_dirs[expert])
    if router_type == "posterior":  # training-free: no checkpoint
        btm = runs("sopmoe_btm", router_type="posterior", foundation=parity_dirs["foundation"], sft=parity_dirs["sft"],
                   force_gate=expert)
    else:
        btm = runs("sopmoe_btm", router=parity_dirs[router_type], force_gate=expert)
    assert btm["config"]["sopmoe"]["forced_gate"] == ([1.0, 0.0] if expert == "foundation" else [0.0, 1.0])
    for task in TASKS:
        for sa, sb in zip(_samples(hf, task), _samples(btm, task), strict=True):
            ra, rb = sa["resps"][0][0], sb["resps"][0][0]
            if task.endswith("_gen"):
                assert ra == rb and len(ra) > 0, (task, sa["doc_id"])
            else:
                assert abs(ra[0] - rb[0]) < 1e-4 and ra[1] == rb[1], (task, sa["doc_id"], ra, rb)
    routing = btm["config"]["sopmoe"]["routing"]["tasks"]
    assert set(routing) == set(TASKS)
    assert routing["reasoning"]["n_queries"] == len(_samples(btm, "reasoning"))
    assert routing["reasoning"][expert] == pytest.approx(1.0)


def test_learned_router_records_per_task_and_per_layer_statistics(runs, parity_dirs, tmp_path):
    btm = runs("sopmoe_btm", router=parity_dirs["layer_level"])
    routing = btm["config"]["sopmoe"]["routing"]["tasks"]
    sop = routing["sop_strict"]
    assert sop["n_tokens"] > 0 and 0 < sop["sft"] < 1 and sop["foundation"] + sop["sft"] == pytest.approx(1.0)
    assert list(sop["per_layer"])[0] == "embed" and list(sop["per_layer"])[-1] == "head"
    assert routing["mixed_gen"]["n_queries"] == len(_samples(btm, "mixed_gen"))
    hf = runs("hf", pretrained=parity_dirs["foundation"])
    lls = [(a["resps"][0][0][0], b["resps"][0][0][0]) for a, b in zip(_samples(hf, "sop_strict"), _samples(btm, "sop_strict"))]
    assert max(abs(a - b) for a, b in lls) > 1e-3  # a real mixture, not one expert


def test_stats_path_and_posterior_without_checkpoint(parity_dirs, tmp_path):
    from lm_eval.api.instance import Instance

    from sopmoe_models.adapters.btm import BTMLMEval

    stats = tmp_path / "routing_stats.json"
    lm = BTMLMEval(router_type="posterior", foundation=parity_dirs["foundation"], sft=parity_dirs["sft"],
                   device="cpu", stats_path=str(stats))
    reqs = [Instance("loglikelihood", {}, ("计算 12+7 等于多少\n答:", "12+7=19"), 0, metadata=("reasoning", 0, 1)),
            Instance("loglikelihood", {}, ("您好\n答:", "您好,请问"), 1, metadata=("eval", 0, 1))]
    assert len(lm.loglikelihood(reqs)) == 2
    saved = json.loads(stats.read_text())["router"]
    assert saved["router_type"] == "posterior" and saved["router"] is None
    assert saved["routing"]["tasks"]["reasoning"]["n_tokens"] == len("12+7=19")
    assert saved["routing"]["tasks"]["eval"]["n_queries"] == 1


def test_bad_arguments_are_clear_errors(parity_dirs, tmp_path, monkeypatch):
    from sopmoe_models.adapters.btm import BTMLMEval

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="pass router=PATH"):
        BTMLMEval(device="cpu")
    with pytest.raises(ValueError, match="router_type=token_level must be trained first"):
        BTMLMEval(router_type="token_level", foundation=parity_dirs["foundation"], sft=parity_dirs["sft"])
    with pytest.raises(ValueError, match="router_type=posterior but .* is a layer_level router"):
        BTMLMEval(router=parity_dirs["layer_level"], router_type="posterior")
    with pytest.raises(ValueError, match="force_gate must be foundation or sft"):
        BTMLMEval(router=parity_dirs["layer_level"], force_gate="both")
    with pytest.raises(FileNotFoundError, match="not found"):
        BTMLMEval(router=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ExpertMismatchError, match="sft expert of fingerprint"):  # other experts than router.json's
        BTMLMEval(router=parity_dirs["layer_level"], sft=parity_dirs["foundation"], device="cpu")


@pytest.mark.slow
def test_real_lm_eval_cli(parity_dirs, tiny_data_dir, tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "sopmoe_btm",
           "--model_args", f"router={parity_dirs['token_level']},stats_path={tmp_path / 'stats.json'}", "--device", "cpu",
           "--tasks", "sop_strict", "--batch_size", "2", "--output_path", str(out),
           "--metadata", json.dumps({"data_dir": str(tiny_data_dir / "eval")})]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(out.rglob("results_*.json")).read_text())
    assert "acc,none" in result["results"]["sop_strict"]
    assert result["config"]["sopmoe"]["routing"]["tasks"]["sop_strict"]["n_queries"] == 2
    assert json.loads((tmp_path / "stats.json").read_text())["router"]["router_type"] == "token_level"
