"""``benchmarks/serve_vllm.py`` end to end: the MoE checkpoint that ``build_moe`` writes, and a dense student, served
by vLLM's CPU build give exactly the tokens of HF ``generate`` (greedy, float32).

The bed is a random Qwen3 pair in the test bed's shape (hidden 128, head_dim 32, 2 layers; vLLM's CPU attention
takes that head size) with an expert width of 376, which ``build_moe`` pads to 384, and the shipped task prompts. The
MoE is served top-1 with random gates of a trained scale, so routing really chooses an expert per token, and the
chosen expert's weight must be renormalised to 1 (``norm_topk_prob``); zero gates would tie and test neither. The sft
stands in for the distilled student: any plain HF folder.

vLLM lives in ``.venv-vllm`` (``make vllm-venv``). Without it the test is skipped, except under
``SOPMOE_REQUIRE_VLLM=1`` (CI, which builds it first), where that is a failure. Slow: each model starts an engine
in vLLM (~40-90 s each on 2 cores, eager mode).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
PROMPTS, NEW_TOKENS = 6, 12


def vllm_python() -> Path:
    if VLLM_PYTHON.is_file():
        return VLLM_PYTHON
    why = f"{VLLM_PYTHON.relative_to(ROOT)} is missing: build it with `make vllm-venv`"
    if os.environ.get("SOPMOE_REQUIRE_VLLM") == "1":
        pytest.fail(f"vLLM is required (SOPMOE_REQUIRE_VLLM=1) but {why}")
    pytest.skip(why)


def make_bed(root: Path) -> Path:
    """A bed folder as ``sopmoe testbed`` lays it out (foundation, sft, data/test, config.yaml) with random experts."""
    from sopmoe_models.data import load_jsonl
    from sopmoe_models.prompt import SEPARATOR
    from training.testbed import (
        TestbedSpec,
        build_tokenizer,
        new_model,
        perturb_like_a_fine_tune_,
        save_pair,
        write_bed_config,
    )

    tests = root / "data" / "test"
    tests.mkdir(parents=True)
    for family in ("mixed", "sop_strict"):
        shutil.copy(ROOT / "tasks" / "data" / f"{family}.jsonl", tests)
    texts = [SEPARATOR] + [ex.input + ex.output for f in sorted(tests.glob("*.jsonl")) for ex in load_jsonl(f)]
    tok = build_tokenizer(iter(texts), max_length=512)
    spec = replace(TestbedSpec(), intermediate_size=376)  # not a multiple of 16: build_moe pads it
    foundation, sft = new_model(spec, tok, seed=0), new_model(spec, tok, seed=0)
    perturb_like_a_fine_tune_(sft, foundation, 0.3, seed=1)
    save_pair(root, foundation, sft, tok)
    write_bed_config(root, "testbed", prompt_format="raw", max_length=192, max_new_tokens=NEW_TOKENS)
    return root


def randomize_gates(moe: Path, seed: int = 0) -> None:
    """Gate rows of std 1 (logits of std ~11 on normalised states, as trained gates): no routing near-ties."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(moe / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if name.endswith(".mlp.gate.weight"):
            tensors[name] = torch.randn(t.shape, generator=g, dtype=t.dtype)
    save_file(tensors, str(moe / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.slow
def test_moe_and_student_served_by_vllm_give_hf_greedy_tokens(tmp_path):
    from sopmoe_models.moe import build_moe

    python = vllm_python()
    bed = make_bed(tmp_path / "bed")
    moe = tmp_path / "moe"
    build_moe(bed / "foundation", bed / "sft", moe, attention="mean", top_k=1)
    randomize_gates(moe)
    config = json.loads((moe / "config.json").read_text())
    assert (config["moe_intermediate_size"], config["sopmoe_dense_intermediate_size"]) == (384, 376)
    out = tmp_path / "serve_vllm.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve_vllm.py"), "--bed", str(bed), "--moe", str(moe),
         "--student", str(bed / "sft"), "--out", str(out), "--prompts", str(PROMPTS), "--new_tokens", str(NEW_TOKENS),
         "--batches", "1,all", "--repeats", "1", "--vllm_models", "moe,student", "--enforce_eager",
         "--vllm_python", str(python)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"serve_vllm.py exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(out.read_text())
    served = [r for r in res["rows"] if r["engine"] == "vllm"]
    assert {(r["model"], r["batch"]) for r in served} == {(m, b) for m in ("moe", "student") for b in (1, PROMPTS)}
    for r in served:
        assert (r["identical"], r["first_divergence"]) == (PROMPTS, None), r
        assert r["tokens"] == PROMPTS * NEW_TOKENS and r["tok_s"] > 0
    assert res["identical"] and res["prompt_format"] == "raw" and res["versions"]["vllm"]["vllm"]
    # the routing is real: the top-1 MoE does not answer as either expert does
    ref = res["hf_reference"]
    assert ref["moe"] != ref["foundation"] and ref["moe"] != ref["student"]
    assert "identical: yes" in proc.stdout
