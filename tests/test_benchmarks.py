"""Smoke tests of the benchmarks in ``benchmarks/``: each script runs end to end at its smallest sizes.

They check that the scripts still run against the library (imports, call signatures, the report), not the numbers:
each runs as the user runs it (``python benchmarks/bench_x.py ...``, a subprocess with a timeout) on a random pair
of the test bed's shape, one thread, one repeat, a couple of tokens (~7 s each on 2 cores, most of it the child's
imports). They are end-to-end runs of separate programs, not unit tests, so all of them are marked slow: `make test`
(and CI) runs them, `make test-fast` does not (issue 14: the fast suite within 2 minutes on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180


def run_bench(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``benchmarks/<script>`` with ``args`` from the repository root; its stdout (a failure shows both)."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_bench_router():
    out = run_bench("bench_router.py", "--batch_size", "1", "--new_tokens", "2", "--repeats", "1",
                    "--router_hidden_size", "4", "--threads", "1")
    for router in ("posterior", "token_level", "layer_level"):
        assert router in out
    assert "target generation" in out


def test_bench_distill():
    out = run_bench("bench_distill.py", "--batch_size", "1", "--steps", "1", "--topk", "2", "--threads", "1")
    assert "cached teacher" in out and "live teacher" in out and "target cached" in out


def test_bench_generate():
    out = run_bench("bench_generate.py", "--shapes", "testbed", "--drafters", "foundation,random", "--repeats", "1",
                    "--new_tokens", "2", "--batches", "1", "--skip_scoring", "--threads", "1")
    assert "ensemble" in out and "random" in out


def test_bench_generate_quantized():
    """--quantization none,int8: both weight kinds timed in one table, scoring included (hf on the same int8 expert)."""
    out = run_bench("bench_generate.py", "--shapes", "testbed", "--drafters", "", "--repeats", "1", "--new_tokens",
                    "2", "--batches", "1", "--score_limit", "2", "--threads", "1", "--quantization", "none,int8")
    assert "int8 weights" in out and out.count("lm-eval scoring") == 2


def test_bench_generate_lookup():
    """The lookup drafter over a shipped task file, and HF's own prompt lookup as the single-model reference row."""
    out = run_bench("bench_generate.py", "--shapes", "testbed", "--drafters", "lookup", "--repeats", "1",
                    "--new_tokens", "3", "--batches", "1,2", "--skip_scoring", "--threads", "1",
                    "--draft_corpus", str(ROOT / "tasks" / "data" / "sop_strict.jsonl"), "--lookup_tokens", "4")
    assert "lookup" in out and "hf lookup" in out and "reference" in out and "NO" not in out


def test_replay_lookup(tiny_pair_dirs, tmp_path):
    """The lookup drafter's replay on a bed laid out as `sopmoe demo` writes it (the tiny pair, shipped task data)."""
    import shutil

    tb = tmp_path / "bed" / "testbed"
    for name, src in zip(("foundation", "sft"), tiny_pair_dirs):
        shutil.copytree(src, tb / name)
    (tb / "data" / "dev").mkdir(parents=True)
    (tb / "data" / "train").mkdir(parents=True)
    shutil.copy(ROOT / "tasks" / "data" / "sop_strict.jsonl", tb / "data" / "dev" / "sop_strict.jsonl")
    shutil.copy(ROOT / "tasks" / "data" / "reasoning.jsonl", tb / "data" / "train" / "train.jsonl")
    out = run_bench("replay_lookup.py", "--bed", str(tmp_path / "bed"), "--prompts", "2", "--new_tokens", "6",
                    "--ks", "2,4", "--min_shares", "0.5", "--min_chances", "0.2", "--time_forwards", "--repeats", "1")
    assert "2 dev answers" in out and "tok/fwd" in out and out.count("x\n") == 2 and "T=9" in out


def test_bench_memory(qwen3_tokenizer_dir):
    out = run_bench("bench_memory.py", "--batch", "1", "--length", "8", "--cont", "2", "--threads", "1",
                    "--modes", "hf,token_level", "--quantization", "none,int8",
                    env={"SOPMOE_CACHE_DIR": str(Path(qwen3_tokenizer_dir).parent)})
    assert "failed" not in out
    assert "hf" in out and "token_level" in out and out.count(" int8 ") == 2


def test_gpu_check_dry_run(qwen3_tokenizer_dir, tmp_path):
    """benchmarks/gpu_check.sh --size tiny: the GPU check's every code path on the CPU, as the GPU machine runs it
    (through the shell script), int8 rows included and int4 refused in the table's notes (no CPU kernel)."""
    report = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "SOPMOE_CACHE_DIR": str(Path(qwen3_tokenizer_dir).parent)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--size", "tiny", "--quantization",
                           "int8,int4", "--json", str(report)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"gpu_check.sh exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    import json

    record = json.loads(report.read_text())
    rows = {(r["model"], r["quantization"]) for r in record["rows"]}
    assert rows == {("hf", "bf16"), ("ensemble", "bf16"), ("token_level", "bf16"), ("moe top-1", "bf16"),
                    ("moe top-2", "bf16"), ("hf", "int8"), ("ensemble", "int8")}
    assert all(r["score_s"] > 0 and r["tok_s_b1"] > 0 and r["tok_s_b8"] > 0 for r in record["rows"])
    assert any("int4: not measured" in n and "CUDA" in n for n in record["notes"])
    assert "sopmoe GPU check: tiny pair on cpu" in proc.stdout


def test_router_features(tiny_pair_dirs, tiny_data_dir, tmp_path):
    """Issue 11's router-input experiment: the real trainer per variant, dev accuracy per family, a JSON."""
    f, s = tiny_pair_dirs
    bed = tmp_path / "bed"
    bed.mkdir()
    (bed / "config.yaml").write_text(
        f"models:\n  foundation:\n    path: {f}\n  sft:\n    path: {s}\n"
        f"data:\n  train_file: {tiny_data_dir / 'train' / 'train.jsonl'}\n"
        f"  eval_file: {tiny_data_dir / 'eval' / 'eval_all.jsonl'}\n  dev_dir: {tiny_data_dir / 'eval'}\n"
        "btm:\n  router_hidden_size: 4\n  batch_size: 2\n", encoding="utf-8")
    out = run_bench("router_features.py", "--beds", str(bed), "--variants", "last,all", "--epochs", "1",
                    "--limit", "2", "--json", str(tmp_path / "rf.json"))
    assert "| last |" in out and "| all |" in out and "dev mixed" in out
    import json

    rows = json.loads((tmp_path / "rf.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["last", "all"] and rows[1]["trainable_params"] > rows[0]["trainable_params"]
