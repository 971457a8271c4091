"""Issue 13, classes 1 and 2: an existing result is never replaced unless the user asked (``--resume``, ``--append``,
``--overwrite``), a resumed run only replaces its best checkpoint with a better one, and destructive flags only ever
delete what sopmoe itself wrote. The real CLI runs in-process on the tiny pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.config import load_config
from sopmoe_models.outputs import MARKER, written_by
from tests.reliability import cli, one_line_error, write_config


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # logs/, outputs/ and results/ land here; no configs/config.yaml is picked up


@pytest.fixture
def cfg(tmp_path, tiny_pair_dirs, tiny_data_dir) -> Path:
    return write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir)


# --- train-router ------------------------------------------------------------------------------------------------
def _router(cfg, out, router_type="token_level", *extra):
    return ["train-router", "--config", cfg, "--output_dir", out, "--router_type", router_type, "--no_progress", *extra]


def test_train_router_refuses_a_folder_holding_a_trained_router(capsys, cfg, tmp_path):
    out = tmp_path / "btm"
    assert cli(capsys, *_router(cfg, out))[0] == 0
    best = (out / "best_router.safetensors").read_bytes()
    one_line_error(capsys, *_router(cfg, out),
                   contains=("already holds a trained token_level router", "--resume", "--overwrite"))
    # a posterior run must not replace a trained token_level router: refused, and with --resume too
    one_line_error(capsys, *_router(cfg, out, "posterior"), contains="already holds a trained token_level router")
    one_line_error(capsys, *_router(cfg, out, "posterior", "--resume"), contains="holds a token_level router, not posterior")
    one_line_error(capsys, *_router(cfg, out, "token_level", "--resume", "--overwrite"), contains="contradict")
    assert (out / "best_router.safetensors").read_bytes() == best
    assert json.loads((out / "router.json").read_text())["type"] == "token_level"
    # asked for: --overwrite replaces it (and the token_level run's last/ goes with it)
    assert cli(capsys, *_router(cfg, out, "posterior", "--overwrite"))[0] == 0
    assert json.loads((out / "router.json").read_text())["type"] == "posterior" and not (out / "last").exists()


def test_train_router_output_dir_may_not_be_an_expert(capsys, cfg, tiny_pair_dirs):
    one_line_error(capsys, *_router(cfg, tiny_pair_dirs[1], "token_level", "--overwrite"), contains="is or contains an input")
    assert not (Path(tiny_pair_dirs[1]) / "best_router.safetensors").exists()


def test_resume_never_replaces_a_better_best_checkpoint(tiny_pair, tiny_data_dir, tmp_path, monkeypatch):
    from training import router_trainer

    cfg = load_config(None, {
        "models.foundation.path": tiny_pair.foundation_path, "models.sft.path": tiny_pair.sft_path,
        "data.train_file": str(tiny_data_dir / "train" / "train.jsonl"),
        "data.eval_file": str(tiny_data_dir / "eval" / "eval_all.jsonl"),
        "btm.router_type": "token_level", "btm.router_hidden_size": 8, "btm.batch_size": 2, "btm.num_epochs": 2})
    out = tmp_path / "ck"
    kw = dict(output_dir=out, pair=tiny_pair, progress=False, tensorboard_dir=tmp_path / "tb")
    first = router_trainer.train_router(cfg, max_steps=4, **kw)  # 3 steps per epoch: epoch 1 done, stopped in 2
    assert first["status"] == "max_steps" and first["best_epoch"] == 1
    best = (out / "best_router.safetensors").read_bytes()
    real = router_trainer.evaluate

    def worse(*args, **kwargs):  # epoch 2 scores worse than epoch 1 did
        return {**real(*args, **kwargs), "nll": first["best_eval_nll"] + 10.0}

    monkeypatch.setattr(router_trainer, "evaluate", worse)
    resumed = router_trainer.train_router(cfg, resume=True, **kw)
    assert resumed["status"] == "completed" and resumed["best_epoch"] == 1
    assert (out / "best_router.safetensors").read_bytes() == best
    assert json.loads((out / "router.json").read_text())["metrics"]["best_epoch"] == 1


# --- distill -------------------------------------------------------------------------------------------------------
def test_distill_refuses_a_folder_holding_a_trained_student(capsys, cfg, tmp_path):
    out = tmp_path / "distill"
    base = ["distill", "--config", cfg, "--teacher_type", "ensemble", "--student_init", "foundation",
            "--output_dir", out, "--log-file", tmp_path / "d.log"]
    assert cli(capsys, *base)[0] == 0
    weights = (out / "best_student" / "model.safetensors").read_bytes()
    one_line_error(capsys, *base, contains=("already holds a distillation run", "--resume", "--overwrite"))
    # --resume of a finished run continues nothing and keeps its best student
    assert cli(capsys, *base, "--resume")[0] == 0
    assert (out / "best_student" / "model.safetensors").read_bytes() == weights
    # a trained student without a checkpoint cannot be resumed (that used to restart and overwrite it)
    shutil.rmtree(out / "checkpoint")
    one_line_error(capsys, *base, "--resume", contains="no checkpoint to continue from")
    assert (out / "best_student" / "model.safetensors").read_bytes() == weights
    assert cli(capsys, *base, "--overwrite")[0] == 0
    assert (out / "checkpoint").is_dir() and (out / "distill.json").is_file()


# --- evaluate ------------------------------------------------------------------------------------------------------
def test_evaluate_into_an_existing_run_folder_needs_append_or_overwrite(capsys, cfg, tmp_path):
    run = tmp_path / "run"
    base = ["evaluate", "--config", cfg, "--tasks", "sop_strict", "--limit", "1", "--output_dir", run,
            "--log-file", tmp_path / "e.log"]
    assert cli(capsys, *base, "--models", "foundation")[0] == 0
    before = (run / "summary.json").read_text()
    one_line_error(capsys, *base, "--models", "sft", contains=("already holds an evaluation run (foundation)", "--append"))
    assert (run / "summary.json").read_text() == before
    assert cli(capsys, *base, "--models", "sft", "--append")[0] == 0
    assert [m["name"] for m in json.loads((run / "summary.json").read_text())["models"]] == ["foundation", "sft"]
    assert cli(capsys, *base, "--models", "sft", "--overwrite")[0] == 0
    assert [m["name"] for m in json.loads((run / "summary.json").read_text())["models"]] == ["sft"]
    assert not (run / "foundation").exists() and (run / "sft" / "results.json").is_file()
    assert written_by(run, "evaluate")
    # a folder sopmoe did not write is never a run folder, whatever the flag
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for flag in ([], ["--overwrite"], ["--append"]):
        one_line_error(capsys, *base[:-4], "--output_dir", mine, "--models", "sft", *flag,
                       contains="not a run folder written by `sopmoe evaluate`")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


# --- make-data, testbed --------------------------------------------------------------------------------------------
def test_make_data_refuses_an_existing_data_folder(capsys, tmp_path, monkeypatch):
    import training.datagen as datagen

    small = datagen.DataSpec(test_per_family=3, dev_per_family=3, train_per_kind=3, foundation_corpus=5, sft_corpus=5)
    real = datagen.make_data
    monkeypatch.setattr(datagen, "make_data", lambda out, seed, spec=None: real(out, seed, small))
    out = tmp_path / "data"
    assert cli(capsys, "make-data", "--out", out)[0] == 0
    before = (out / "train" / "train.jsonl").read_bytes()
    one_line_error(capsys, "make-data", "--out", out, "--seed", "1", contains=("a data folder already exists", "--overwrite"))
    assert (out / "train" / "train.jsonl").read_bytes() == before
    assert cli(capsys, "make-data", "--out", out, "--seed", "1", "--overwrite")[0] == 0
    assert (out / "train" / "train.jsonl").read_bytes() != before and written_by(out, "make-data")
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    one_line_error(capsys, "make-data", "--out", mine, "--overwrite", contains="holds files make-data did not write")
    assert not (mine / "train" / "train.jsonl").exists()


def test_testbed_refuses_a_folder_that_is_not_a_test_bed(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    one_line_error(capsys, "testbed", "--out", mine, contains=("already exists", "--overwrite"))
    one_line_error(capsys, "testbed", "--out", mine, "--overwrite", contains="not a test bed sopmoe built")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_demo_refuses_a_work_folder_it_did_not_write(tmp_path):
    from harness.demo import Demo
    from sopmoe_models.errors import UserError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    demo = Demo(out=mine, results=tmp_path / "results", baseline=tmp_path / "b.json", seeds=[0])
    with pytest.raises(UserError, match="not a demo folder"):
        demo.claim_folder()
    Demo(out=tmp_path / "fresh", results=tmp_path / "results", baseline=tmp_path / "b.json", seeds=[0]).claim_folder()
    assert written_by(tmp_path / "fresh", "demo")


# --- generate ------------------------------------------------------------------------------------------------------
def test_generate_never_writes_over_its_input_or_an_existing_file(capsys, cfg, tmp_path, tiny_pair_dirs, tiny_data_dir):
    data = tmp_path / "eval.jsonl"
    shutil.copy(tiny_data_dir / "eval" / "eval_all.jsonl", data)
    before = data.read_bytes()
    base = ["generate", "--config", cfg, "--eval_file", data, "--max_new_tokens", "2", "--log-file", tmp_path / "g.log"]
    for flags in ([], ["--overwrite"]):
        one_line_error(capsys, *base, "--output_file", data, *flags, contains="is an input of this command")
        one_line_error(capsys, *base, "--output_file", cfg, *flags, contains="is an input of this command")
    assert data.read_bytes() == before
    out = tmp_path / "gen.jsonl"
    assert cli(capsys, *base, "--output_file", out)[0] == 0
    first = out.read_bytes()
    one_line_error(capsys, *base, "--output_file", out, contains=("an output file already exists", "--overwrite"))
    assert out.read_bytes() == first
    assert cli(capsys, *base, "--output_file", out, "--overwrite")[0] == 0
    (tmp_path / "other.summary.json").write_text("mine")  # a companion file counts too
    one_line_error(capsys, *base, "--output_file", tmp_path / "other.jsonl", contains="other.summary.json")
    assert (tmp_path / "other.summary.json").read_text() == "mine"


# --- merge ---------------------------------------------------------------------------------------------------------
def test_merge_overwrite_never_deletes_an_input_or_a_foreign_folder(capsys, tmp_path, tiny_pair_dirs):
    f, s = map(Path, tiny_pair_dirs)
    base = ["merge", "--foundation", f, "--sft", s, "--method", "linear", "--weight", "0.5",
            "--log-file", tmp_path / "m.log"]
    for out in (f, s, f.parent):  # is an input, or contains one
        one_line_error(capsys, *base, "--out", out, "--overwrite", contains="is or contains an input")
    assert (f / "config.json").is_file() and (s / "model.safetensors").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    one_line_error(capsys, *base, "--out", mine, contains="already exists; pass --overwrite")
    one_line_error(capsys, *base, "--out", mine, "--overwrite", contains="was not written by sopmoe merge")
    (tmp_path / "file.txt").write_text("keep")
    one_line_error(capsys, *base, "--out", tmp_path / "file.txt", "--overwrite", contains="is not a folder")
    assert (mine / "notes.txt").read_text() == "keep" and (tmp_path / "file.txt").read_text() == "keep"
    # the user's own m.old / m.tmp are never touched by writing or replacing m
    out = tmp_path / "m"
    for sibling in ("m.old", "m.tmp"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "keep.txt").write_text("keep")
    assert cli(capsys, *base, "--out", out)[0] == 0
    assert written_by(out, "merge")
    assert cli(capsys, *base, "--out", out, "--overwrite")[0] == 0
    assert all((tmp_path / sib / "keep.txt").read_text() == "keep" for sib in ("m.old", "m.tmp"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no leftovers
    (out / MARKER).unlink()  # a merge written before markers: its merge.json tells
    assert cli(capsys, *base, "--out", out, "--overwrite")[0] == 0 and written_by(out, "merge")


# --- derived views -------------------------------------------------------------------------------------------------
def test_leaderboard_sweep_and_export_do_not_replace_other_files(capsys, tmp_path, cfg):
    runs = Path(__file__).parent / "data" / "leaderboard" / "seed0"
    readme = tmp_path / "README.md"
    readme.write_text("# my project\n")
    one_line_error(capsys, "leaderboard", runs, "--out", readme, "--quiet", contains="not a leaderboard sopmoe wrote")
    assert readme.read_text() == "# my project\n"
    board = tmp_path / "LEADERBOARD.md"
    assert cli(capsys, "leaderboard", runs, "--out", board, "--quiet")[0] == 0
    assert cli(capsys, "leaderboard", runs, "--out", board, "--quiet")[0] == 0  # its own output: regenerated
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    one_line_error(capsys, "sweep", "--config", cfg, "--output_dir", tmp_path / "sweep", contains="--overwrite")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "dataset_info.json").write_text("{}")
    one_line_error(capsys, "export-llamafactory", "--config", cfg, "--output_dir", tmp_path / "export",
                   contains="--overwrite")
    assert (tmp_path / "export" / "dataset_info.json").read_text() == "{}"
