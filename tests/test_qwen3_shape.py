"""Qwen3's shape through the real interfaces: Qwen3's own tokenizer (151,669 tokens, chat template with thinking), an
lm_head padded to 151,936 rows whose padded rows carry real probability mass, bf16 weights, a tiny body.

One bed per module (:func:`training.qwen3_shape.build_bed`, the same as ``sopmoe qwen3-shape --out``); the commands
run in-process as a user types them (``harness.cli.main``), lm-eval through the adapters and the real ``lm_eval``
CLI. The command-line runs are marked slow (tens of seconds each: every run loads Qwen3's 11 MB tokenizer twice);
the tokenizer, parity and token-count tests are not. Parity with ``--model hf`` is exact here as on every checkpoint (the parity rule of
sopmoe_models/experts.py): both sides bf16, hf with ``softmax_dtype=float32`` (its default log-softmax of bf16 logits
is itself bf16, rounded to ~0.4 %: a different number, not a different rule).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main
from training.qwen3_tokenizer import PADDED_ROWS, TOKENS

PADDED_SCALE = 25.0  # the 267 padded rows then hold ~10 % of each position's mass in this random model
THINK_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def bed(tmp_path_factory, qwen3_tokenizer_dir):
    from training.qwen3_shape import build_bed

    root = tmp_path_factory.mktemp("qwen3_bed")
    record = build_bed(root, qwen3_tokenizer_dir, padded_scale=PADDED_SCALE)
    return {**record, "root": root}


@pytest.fixture(scope="module")
def pair(bed):
    from sopmoe_models.experts import load_experts

    return load_experts(bed["foundation"], bed["sft"], device="cpu", dtype="bfloat16")


def cli(bed, *args: str) -> int:
    return main([args[0], "--config", bed["config"], *args[1:]])


def test_qwen3_tokenizer_and_the_thinking_off_chat_prompt(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    from sopmoe_models.prompt import format_prompt

    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir))
    assert len(tok) == TOKENS and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    prompt = format_prompt("请按照SOP流程处理客户退款申请", "chat", tok)
    assert prompt == "<|im_start|>user\n请按照SOP流程处理客户退款申请<|im_end|>\n" + THINK_OFF
    assert format_prompt("x", "raw", tok) == "x\n答:"


@pytest.mark.slow  # a CLI run: loads the pair (two 11 MB tokenizers) in-process
def test_bed_is_qwen3_shaped_and_check_passes(bed, pair, capsys):
    from safetensors import safe_open

    assert (pair.vocab_size, pair.width) == (TOKENS, PADDED_ROWS)
    assert pair.foundation.dtype == torch.bfloat16
    with safe_open(str(Path(bed["foundation"]) / "model.safetensors"), "pt") as f:
        head = f.get_tensor("lm_head.weight")
    assert head.dtype == torch.bfloat16 and head.shape[0] == PADDED_ROWS
    ids = pair.tokenizer("请按照SOP流程处理客户退款申请", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lp = pair.foundation(ids).logits.float().log_softmax(-1)
    assert 0.02 < lp[..., TOKENS:].exp().sum(-1).mean() < 0.5  # the padded rows carry real mass
    assert cli(bed, "check") == 0
    out = capsys.readouterr().out
    assert "151669 tokens" in out and "all checks passed" in out


@pytest.mark.slow  # a CLI run: loads the pair (two 11 MB tokenizers) in-process
def test_generate_raw_and_chat_prompts_and_pure_weight_parity(bed, pair, monkeypatch):
    import sopmoe_models.prompt as prompt_module
    from sopmoe_models.ensemble import EnsembleLM
    from sopmoe_models.prompt import format_prompt

    seen = []
    monkeypatch.setattr(prompt_module, "format_prompt", lambda *a, **k: seen.append(format_prompt(*a, **k)) or seen[-1])
    for fmt in ("raw", "chat"):
        assert cli(bed, "generate", "--model", "ensemble", "--prompt", "请按照SOP流程处理客户退款申请",
                   "--prompt_format", fmt, "--max_new_tokens", "6") == 0
    assert seen[0].endswith("\n答:") and seen[1].endswith(THINK_OFF)  # chat: the template, thinking off
    # at a pure weight the fused model generates what the expert alone generates (chat prompt, thinking off)
    tok = pair.tokenizer
    prompts = [format_prompt(t, "chat", tok) for t in ("请按照SOP流程处理客户退款申请", "计算 12+7 等于多少")]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        hf = pair.sft.generate(**enc, max_new_tokens=8, do_sample=False)[:, enc["input_ids"].shape[1]:]
    ours = EnsembleLM(pair, 0, 1, "logit").generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=8,
                                                   eos_token_id=pair.sft.generation_config.eos_token_id)
    assert torch.equal(ours.sequences, hf)


def _requests(bed, tok, family="sop_strict"):
    from lm_eval.api.instance import Instance

    from sopmoe_models.data import load_jsonl
    from sopmoe_models.prompt import format_prompt

    rows = load_jsonl(Path(bed["root"]) / "data" / "tasks" / f"{family}.jsonl")
    return [Instance("loglikelihood", {}, (format_prompt(ex.input, "chat", tok), ex.output), i)
            for i, ex in enumerate(rows)]


@pytest.fixture(scope="module")
def hf_loglikelihoods(bed, pair):
    """``--model hf``'s answers for each expert, computed once for both mixes."""
    from lm_eval.models.huggingface import HFLM

    reqs = _requests(bed, pair.tokenizer)
    return {expert: HFLM(pretrained=bed[expert], device="cpu", dtype="bfloat16", softmax_dtype="float32",
                         batch_size=2).loglikelihood(reqs) for expert in ("foundation", "sft")}


@pytest.mark.parametrize("mix", ["prob", "logit"])
def test_loglikelihood_parity_with_hf_at_qwen3_width(bed, pair, hf_loglikelihoods, mix):
    """(1, 0) and (0, 1) equal ``--model hf`` within 1e-4 although the padded rows carry ~10 % of the mass."""
    from sopmoe_models.adapters.ensemble import EnsembleLMEval

    reqs = _requests(bed, pair.tokenizer)
    for expert, weights in (("foundation", (1, 0)), ("sft", (0, 1))):
        ens = EnsembleLMEval(pair=pair, foundation_weight=weights[0], sft_weight=weights[1], mix=mix, batch_size=2)
        a, b = hf_loglikelihoods[expert], ens.loglikelihood(reqs)
        assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) < 1e-4, (expert, a, b)
        assert [x[1] for x in a] == [y[1] for y in b]


def test_per_token_perplexity_counts_qwen3_tokens_as_lm_eval_splits_them(bed, pair):
    from lm_eval.models.huggingface import HFLM

    from tasks import utils

    docs = utils.load("sop_strict", data_dir=str(Path(bed["root"]) / "data" / "tasks"), prompt_format="chat",
                      tokenizer=bed["foundation"])["test"]
    hf = HFLM(pretrained=pair.foundation, tokenizer=pair.tokenizer, batch_size=1)
    for doc in docs:
        ctx, cont = hf._encode_pair(doc["prompt"], doc["output"])
        assert doc["n_target_tokens"] == len(cont)  # the chat prompt's final "\n\n" moves to the continuation
        assert doc["n_target_tokens"] < len(doc["output"])  # BPE tokens, not characters
    with pytest.raises(ValueError, match="no local tokenizer"):
        utils.load("sop_strict", data_dir=str(Path(bed["root"]) / "data" / "tasks"))


@pytest.mark.slow  # a CLI run: loads the pair (two 11 MB tokenizers) in-process
def test_sweep(bed, tmp_path):
    out = tmp_path / "sweep"
    assert cli(bed, "sweep", "--weights", "0,0.5,1", "--mix", "both", "--tasks", "sop_strict",
               "--output_dir", str(out), "--log-file", str(tmp_path / "sweep.log")) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert len(record["points"]) == 6
    for p in record["points"]:
        assert 0 <= p["results"]["sop_strict"]["acc"] <= 1 and p["results"]["sop_strict"]["perplexity"] > 1


@pytest.mark.slow
def test_router_distill_merge_evaluate_and_lm_eval_on_qwen3_shape(bed, tmp_path, monkeypatch):
    """``train-router``, ``distill`` (top-k teacher cache), ``merge``, ``evaluate`` of the whole zoo (every
    ``sopmoe_*`` model through lm-eval), then ``lm_eval --model sopmoe_ensemble`` through the real CLI."""
    monkeypatch.chdir(tmp_path)  # the config's relative output_dirs, logs/ and outputs/tensorboard land here
    root = Path(bed["root"])
    assert cli(bed, "train-router", "--no_progress") == 0
    router = tmp_path / "checkpoints" / "btm" / "best_router.safetensors"
    assert router.is_file()
    assert cli(bed, "distill", "--log-file", str(tmp_path / "distill.log")) == 0
    student = tmp_path / "checkpoints" / "distill" / "best_student"
    card = json.loads((student / "distill.json").read_text())
    assert card["teacher"]["type"] == "ensemble"
    (cache,) = [p for p in (tmp_path / "checkpoints" / "distill" / "teacher_cache").glob("*") if p.is_dir()][:1]
    from safetensors.torch import load_file

    part = load_file(str(next(cache.glob("part-*.safetensors"))))
    assert part["ids"].shape[1] == 8 and int(part["ids"].max()) < PADDED_ROWS
    merged = tmp_path / "merged"
    assert cli(bed, "merge", "--method", "linear", "--out", str(merged)) == 0
    assert (merged / "config.json").is_file()
    run = tmp_path / "eval"
    # every model through lm-eval in-process, by its registered name (get_model("sopmoe_btm"), ...)
    # every sopmoe_* model through lm-eval in-process, by its registered name (get_model("sopmoe_btm"), ...)
    assert cli(bed, "evaluate", "--models", "ensemble", "btm", "distill", "merge",
               "--tasks", "sop_strict", "--limit", "2", "--output_dir", str(run),
               "--btm_router", str(router), "--distill_model", str(student),
               "--log-file", str(tmp_path / "evaluate.log")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["failed"] and not summary["skipped"]
    assert {m["name"] for m in summary["models"]} == {"ensemble", "btm", "distill", "merge"}
    for m in summary["models"]:
        result = json.loads((run / m["name"] / "results.json").read_text())
        assert result["results"]["sop_strict"]["perplexity,none"] > 1, m["name"]

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    meta = json.dumps({"data_dir": str(root / "data" / "tasks"), "prompt_format": "chat"})
    pair_args = f"foundation={bed['foundation']},sft={bed['sft']},dtype=bfloat16"
    # and the real CLI as a user types it (half a minute: lm-eval indexes its ~15k tasks at start)
    runs = {"sopmoe_ensemble": pair_args + ",foundation_weight=0.5,sft_weight=0.5,mix=prob"}
    for model, args in runs.items():
        out = tmp_path / model
        cmd = [str(Path(sys.executable).parent / "lm_eval"), "--model", model, "--model_args", args, "--tasks",
               "sop_strict,sop_strict_gen", "--limit", "1", "--batch_size", "2", "--device", "cpu",
               "--output_path", str(out), "--metadata", meta]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (model, proc.stderr[-3000:])
        results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
        assert results["sop_strict"]["perplexity,none"] > 1 and "exact_match,none" in results["sop_strict_gen"]


@pytest.mark.slow
def test_scoring_memory_stays_bounded_at_qwen3_width(bed, tmp_path):
    """Peak RSS of lm-eval scoring above the loaded models (benchmarks/bench_memory.py, a fresh process each): at
    most ~2 float32 (B, T, W) tensors for every fused model (its output and HFLM's log-softmax copy of it), never
    one per expert and stage."""
    from sopmoe_models.experts import load_experts
    from sopmoe_models.routers import build_router

    pair_dir = tmp_path / "pair"
    pair_dir.mkdir()
    for role in ("foundation", "sft"):
        (pair_dir / role).symlink_to(bed[role])
    experts = load_experts(bed["foundation"], bed["sft"], device="cpu", dtype="bfloat16")
    build_router("token_level", experts, hidden_size=8).save_router(pair_dir / "token_level")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
    batch, length, cont = 2, 192, 8
    unit = batch * (length + cont) * PADDED_ROWS * 4 / 2**20  # MiB of one float32 (B, T, W)
    for mode in ("ensemble_prob", "token_level"):
        proc = subprocess.run([sys.executable, str(bench), "--child", mode, "--pair", str(pair_dir), "--batch",
                               str(batch), "--length", str(length), "--cont", str(cont), "--threads", "2"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_delta_mib"]
        # Below 2.4 units when run alone; token_level reached 2.49 once inside a full suite on a loaded machine
        # (2026-12-01), so the bound has headroom. It still fails on one (B, T, W) copy per expert and stage (>= 4).
        assert peak < 2.7 * unit, (mode, peak, unit)
