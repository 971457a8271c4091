"""Data-parallel distillation: two CPU processes (gloo, via ``accelerate launch``) give the one-process result.

The global batch (5) does not split evenly over two processes and the last batch (1 example) leaves one process
with nothing, so the uneven-slice and dummy-example paths run too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.test_distill import make_cfg


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_pair_dirs, tiny_data_dir, monkeypatch):
    from training.distill_trainer import train

    monkeypatch.chdir(tmp_path)
    over = dict(distill__batch_size=5, distill__num_epochs=2, distill__teacher_cache_topk=16)
    one = train(make_cfg(tiny_pair_dirs, tiny_data_dir, tmp_path / "one", **over))
    assert one["num_processes"] == 1

    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, tmp_path / "two", **over)
    cfg.save(tmp_path / "two.yaml")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "harness.cli", "distill", "--config", str(tmp_path / "two.yaml")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "distill.json").read_text())
    assert two["num_processes"] == 2
    for a, b in zip(one["epochs"], two["epochs"]):
        assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-4)
        assert b["eval"]["loss"] == pytest.approx(a["eval"]["loss"], rel=1e-4)
        assert b["eval"]["tokens"] == a["eval"]["tokens"]
    wa = load_file(str(tmp_path / "one" / "best_student" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "best_student" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
    # The cache was built once by both processes together (one part each) and is complete.
    parts = sorted(p.name for p in (tmp_path / "two" / "teacher_cache").rglob("part-*.safetensors"))
    assert parts and all(name.endswith("-of-0002.safetensors") for name in parts)
