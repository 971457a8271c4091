"""Quantized experts (issue 23): ``models.*.quantization`` / lm-eval's ``quantization=`` load int8 weights through
transformers' ``TorchAoConfig`` in the one expert loader, and every fused model runs on them.

Parity holds against the quantized expert alone: ``sopmoe_ensemble`` at a pure weight with ``quantization=int8``
equals lm-eval's ``HFLM`` on the same expert quantized by transformers directly, request by request (lm-eval's ``hf``
cannot be handed a ``TorchAoConfig`` through ``--model_args``, so the reference is ``HFLM`` over the model object),
and differs from the unquantized expert (the quantization really happened). int4 has no CPU kernel in torchao:
refused on the CPU in one line naming the key. Quantized weights are never merged or written.
"""

from __future__ import annotations

import sys

import pytest
import torch

from sopmoe_models.errors import UserError
from tests import tiny
from tests.reliability import one_line_error, write_config

pytest.importorskip("torchao", reason="quantization needs the quant extra (torchao)")

TASKS = ["sop_strict", "reasoning", "sop_strict_gen"]


@pytest.fixture(scope="module")
def parity_dirs(tmp_path_factory):
    return tiny.make_parity_pair(tmp_path_factory.mktemp("q_pair"))


def _direct_int8(path: str):
    """The expert quantized by transformers itself (no sopmoe code): the parity reference."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).eval()


def test_int8_loads_quantized_linear_weights_only(parity_dirs):
    from sopmoe_models.experts import load_experts, quantization_of

    pair = load_experts(parity_dirs["foundation"], parity_dirs["sft"], device="cpu", quantization="int8",
                        sft_quantization="none")
    f, s = pair.experts
    assert quantization_of(f) == "int8" and quantization_of(s) == "none"
    up = f.model.layers[0].mlp.up_proj.weight
    assert type(up) is not torch.nn.Parameter and type(s.model.layers[0].mlp.up_proj.weight) is torch.nn.Parameter
    assert type(f.lm_head.weight) is torch.nn.Parameter  # output rows unquantized: the parity rule's width
    assert pair.width == pair.vocab_size + 5


@pytest.fixture(scope="module")
def lm_eval_runs(parity_dirs, tiny_data_dir):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sopmoe_models.adapters.ensemble import EnsembleLMEval
    from sopmoe_models.experts import load_tokenizer
    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir

    register_all()
    tm = TaskManager(include_path=tasks_dir(), include_defaults=False,
                     metadata={"data_dir": str(tiny_data_dir / "eval"), "tokenizer": parity_dirs["foundation"]})
    tok = load_tokenizer(parity_dirs["foundation"])

    def run(lm):
        return lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=tm, log_samples=True)["samples"]

    f, s = parity_dirs["foundation"], parity_dirs["sft"]
    return {
        "hf_int8": run(HFLM(pretrained=_direct_int8(f), tokenizer=tok, batch_size=2)),
        "hf_full": run(HFLM(pretrained=f, device="cpu", batch_size=2)),
        "hf_sft_int8": run(HFLM(pretrained=_direct_int8(s), tokenizer=tok, batch_size=2)),
        "ens_int8": run(EnsembleLMEval(foundation=f, sft=s, foundation_weight=1, sft_weight=0, quantization="int8",
                                       device="cpu", batch_size=2)),
        "ens_sft_int8": run(EnsembleLMEval(foundation=f, sft=s, foundation_weight=0, sft_weight=1,
                                           sft_quantization="int8", device="cpu", batch_size=2)),
    }


def _responses(samples, task):
    return [s["resps"][0][0] for s in sorted(samples[task], key=lambda s: s["doc_id"])]


@pytest.mark.parametrize("fused, reference", [("ens_int8", "hf_int8"), ("ens_sft_int8", "hf_sft_int8")])
def test_ensemble_at_a_pure_weight_equals_the_quantized_expert_through_lm_eval(lm_eval_runs, fused, reference):
    for task in TASKS:
        a, b = _responses(lm_eval_runs[reference], task), _responses(lm_eval_runs[fused], task)
        assert len(a) == len(b) > 0, task
        for ra, rb in zip(a, b):
            if task.endswith("_gen"):
                assert ra == rb, (task, ra, rb)
            else:
                assert abs(ra[0] - rb[0]) < 1e-4 and ra[1] == rb[1], (task, ra, rb)


def test_int8_scores_differ_from_the_full_precision_expert(lm_eval_runs):
    q, full = (_responses(lm_eval_runs[k], "reasoning") for k in ("hf_int8", "hf_full"))
    assert max(abs(a[0] - b[0]) for a, b in zip(q, full)) > 1e-5  # quantized for real (and close: same argmaxes)
    assert max(abs(a[0] - b[0]) for a, b in zip(q, full)) < 0.5


@pytest.mark.parametrize("router_type", ["posterior", "token_level", "layer_level"])
def test_each_router_runs_on_int8_experts_and_a_forced_gate_is_the_quantized_expert(parity_dirs, router_type):
    from sopmoe_models.experts import load_experts
    from sopmoe_models.routers import build_router

    pair = load_experts(parity_dirs["foundation"], parity_dirs["sft"], device="cpu", quantization="int8")
    kw = {} if router_type == "posterior" else {"hidden_size": 8}
    router = build_router(router_type, pair, **kw)
    ids = pair.tokenizer(["请按照SOP流程处理"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    router.force_gate((0.0, 1.0))
    with torch.inference_mode():
        expert = torch.log_softmax(pair.sft(ids).logits.float(), -1)
        assert torch.allclose(router.logprobs(ids), expert, atol=1e-5)
        router.force_gate(None)
        out = router.generate(ids, max_new_tokens=4)
    assert out.sequences.shape == (1, 4)


def test_int4_on_the_cpu_is_one_clear_line(capsys, tmp_path, tiny_pair_dirs, tiny_data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "q4.yaml", tiny_pair_dirs, tiny_data_dir, models={"sft": {"quantization": "int4"}})
    one_line_error(capsys, "generate", "--config", cfg, "--model", "ensemble", "--prompt", "x",
                   contains=("models.sft.quantization", "int4 needs a CUDA device", "int8"))
    bad = write_config(tmp_path / "q3.yaml", tiny_pair_dirs, tiny_data_dir, models={"sft": {"quantization": "int3"}})
    one_line_error(capsys, "generate", "--config", bad, "--prompt", "x", contains="models.sft.quantization")


def test_without_torchao_the_error_names_the_key_and_the_extra(tiny_pair_dirs, monkeypatch):
    from sopmoe_models.experts import load_experts

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails as if torchao were absent
    with pytest.raises(UserError, match=r"models\.foundation\.quantization .*quantization=\)=int8 needs torchao: "
                                        r"pip install 'sopmoe\[quant\]'"):
        load_experts(*tiny_pair_dirs, device="cpu", quantization="int8")


def test_a_merge_refuses_quantized_experts(tiny_pair_dirs, tiny_data_dir, tmp_path):
    from sopmoe_models.config import load_config
    from sopmoe_models.factory import build_merge

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir,
                                   models={"sft": {"quantization": "int8"}}))
    with pytest.raises(UserError, match=r"a weight merge needs the sft's full-precision weights.*models\.sft\."
                                        r"quantization"):
        build_merge(cfg)


def test_evaluate_plans_quantized_rows(tiny_pair_dirs, tiny_data_dir, tmp_path):
    """``sopmoe evaluate`` honours models.*.quantization: the fused rows get quantization=, and a quantized
    foundation row runs as the ensemble at its pure weight (1 expert forward per token), not as unquantized ``hf``."""
    from harness.model_specs import parse_model_spec, plan
    from sopmoe_models.config import load_config

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir,
                                   models={"foundation": {"quantization": "int8"}}))
    f = plan(parse_model_spec("foundation"), cfg)
    assert f.lm_eval_model == "sopmoe_ensemble" and f.forwards_per_token == 1 and f.problem is None
    assert f.model_args["foundation_weight"] == 1.0 and f.model_args["sft_weight"] == 0.0
    assert f.model_args["quantization"] == "int8" and f.model_args["sft_quantization"] == "none"
    s = plan(parse_model_spec("sft"), cfg)
    assert s.lm_eval_model == "hf" and "quantization" not in s.model_args
    e = plan(parse_model_spec("ensemble@0.3"), cfg)
    assert e.model_args["quantization"] == "int8" and e.forwards_per_token == 2


def test_lm_eval_model_args_spell_quantization_as_on_the_command_line():
    """``--model_args quantization=int8,sft_quantization=none``: lm-eval parses the word none as None."""
    from lm_eval.utils import simple_parse_args_string

    from sopmoe_models.adapters.base import resolve_model_args

    args = simple_parse_args_string("foundation=f,sft=s,quantization=int8,sft_quantization=none")
    cfg, _ = resolve_model_args("sopmoe_ensemble", None, args, {})
    assert (cfg.models.foundation.quantization, cfg.models.sft.quantization) == ("int8", "none")
    with pytest.raises(UserError, match=r"models\.sft\.quantization \(given as a flag or model argument\)"):
        resolve_model_args("sopmoe_ensemble", None, simple_parse_args_string("sft_quantization=int3"), {})


@pytest.mark.slow
def test_real_lm_eval_cli_with_quantization(parity_dirs, tiny_data_dir, lm_eval_runs, tmp_path):
    """``lm_eval --model sopmoe_ensemble --model_args ...,quantization=int8,sft_quantization=none`` as typed: the
    results record the experts' quantization, and the scores are the quantized foundation's."""
    import json
    import os
    import subprocess
    from pathlib import Path

    out = tmp_path / "out"
    args = (f"foundation={parity_dirs['foundation']},sft={parity_dirs['sft']},foundation_weight=1,sft_weight=0,"
            "quantization=int8,sft_quantization=none")
    cmd = [str(Path(sys.executable).parent / "lm_eval"), "--model", "sopmoe_ensemble", "--model_args", args,
           "--tasks", "reasoning", "--batch_size", "2", "--output_path", str(out), "--log_samples",
           "--metadata", json.dumps({"data_dir": str(tiny_data_dir / "eval")})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    experts = json.loads(results_file.read_text())["config"]["sopmoe"]["experts"]
    assert experts["foundation"]["quantization"] == "int8" and experts["sft"]["quantization"] == "none"
    (samples_file,) = out.rglob("samples_reasoning_*.jsonl")
    cli = {json.loads(line)["doc_id"]: json.loads(line) for line in samples_file.read_text().splitlines()}
    for s in lm_eval_runs["hf_int8"]["reasoning"]:
        assert abs(float(cli[s["doc_id"]]["resps"][0][0][0]) - s["resps"][0][0][0]) < 1e-4
