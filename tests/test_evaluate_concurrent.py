"""Issue 23 item 3: evaluation jobs started together into one run folder (one job per model, as on a cluster) lose
nothing. Every change to the folder's shared state (summary.json, the cost ratios against foundation) is a
read-modify-write under the run folder's lock, so any interleaving keeps every job's models.

The fast test forces the worst interleaving in one process (a second job starts and finishes while the first is
evaluating); the slow one starts three real ``sopmoe evaluate --append`` processes together, as the issue did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.evaluate as ev
from harness.cli import main
from tests.reliability import write_config


@pytest.fixture
def cfg(tmp_path, tiny_pair_dirs, tiny_data_dir) -> Path:
    return write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir,
                        data={"task_data_dir": str(tiny_data_dir / "eval")})


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))


def _meta(run: Path, name: str) -> dict:
    return json.loads((run / name / "meta.json").read_text(encoding="utf-8"))


def _args(cfg: Path, run: Path, tmp_path: Path, *models: str, limit: int = 1) -> list[str]:
    return ["evaluate", "--config", str(cfg), "--tasks", "sop_strict", "--limit", str(limit), "--batch_size", "2",
            "--output_dir", str(run), "--log-file", str(tmp_path / "eval.log"), "--models", *models]


def test_a_job_that_finishes_while_another_runs_keeps_its_model(cfg, tmp_path, monkeypatch):
    """Job 1 evaluates foundation; while it does, job 2 appends sft and finishes. Both stay in summary.json, and
    sft's cost ratio against foundation is filled in when foundation (in the other job) lands."""
    run = tmp_path / "run"
    real = ev._evaluate_into
    started: list[str] = []

    def interleaved(p, out, **kw):
        started.append(p.spec.name)
        if p.spec.name == "foundation":  # the other job starts and ends in the middle of this one
            assert main([*_args(cfg, run, tmp_path, "sft"), "--append"]) == 0
        return real(p, out, **kw)

    monkeypatch.setattr(ev, "_evaluate_into", interleaved)
    assert main(_args(cfg, run, tmp_path, "foundation")) == 0
    assert started == ["foundation", "sft"]
    summary = _summary(run)
    assert sorted(summary["ran"]) == ["foundation", "sft"]
    assert len(summary["commands"]) == 2
    assert _meta(run, "foundation")["inference_cost"]["requests_cpu_s_vs_foundation"] == 1.0
    assert _meta(run, "sft")["inference_cost"]["requests_cpu_s_vs_foundation"] > 0


def test_a_model_landing_in_a_folder_replaced_meanwhile_is_refused(cfg, tmp_path, monkeypatch):
    """The rules of --append (same tasks and limit) hold at the moment a model lands, not only at the start: here
    another job replaced the run (--overwrite, limit 2) while sft was being scored, so sft is refused, not mixed in,
    and its unfinished folder is removed. A job started into a run with other settings is refused at once."""
    run = tmp_path / "run"
    real = ev._evaluate_into

    def interleaved(p, out, **kw):
        if p.spec.name == "sft":
            assert main([*_args(cfg, run, tmp_path, "foundation", limit=2), "--append"]) == 2  # limit 1 here
            assert main([*_args(cfg, run, tmp_path, "foundation", limit=2), "--overwrite"]) == 0
        return real(p, out, **kw)

    monkeypatch.setattr(ev, "_evaluate_into", interleaved)
    assert main([*_args(cfg, run, tmp_path, "sft"), "--append"]) == 2
    summary = _summary(run)
    assert summary["ran"] == ["foundation"] and summary["limit"] == 2
    assert not (run / "sft").exists() and not list(run.glob(".sft.*"))


@pytest.mark.slow
def test_three_append_jobs_started_together_keep_every_model(cfg, tmp_path):
    """The issue's recipe with real processes: foundation first, then sft, ensemble and ensemble@0.3 as three
    ``sopmoe evaluate --append`` processes started together; all four are in summary.json and the leaderboard."""
    run = tmp_path / "run"
    assert main(_args(cfg, run, tmp_path, "foundation")) == 0
    sopmoe = Path(sys.executable).parent / "sopmoe"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    jobs = [subprocess.Popen([str(sopmoe), *_args(cfg, run, tmp_path / m, m), "--append"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for m in ("sft", "ensemble", "ensemble@0.3")]
    for job in jobs:
        out, _ = job.communicate(timeout=300)
        assert job.returncode == 0, out[-3000:]
    summary = _summary(run)
    assert sorted(summary["ran"]) == ["ensemble", "ensemble@0.3", "foundation", "sft"]
    assert len(summary["commands"]) == 4
    for name in summary["ran"]:
        assert _meta(run, name)["inference_cost"]["requests_cpu_s_vs_foundation"] > 0
    assert main(["leaderboard", str(run), "--out", str(tmp_path / "LB.md"), "--quiet"]) == 0
    md = (tmp_path / "LB.md").read_text(encoding="utf-8")
    for name in summary["ran"]:
        assert f"| {name} |" in md
