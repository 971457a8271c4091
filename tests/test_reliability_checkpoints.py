"""Issue 13, class 3: checkpoints are written whole (a temporary folder, then a rename), checked file by file on
resume, and ``--resume`` on other training data (same path, other bytes) is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from harness.config import load_config
from sopmoe_models.errors import UserError
from tests.reliability import one_line_error, write_config


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def train_copy(tmp_path, tiny_data_dir):
    """A private copy of the training file (the tests change its bytes)."""
    path = tmp_path / "train.jsonl"
    shutil.copy(tiny_data_dir / "train" / "train.jsonl", path)
    return path


def _router_cfg(pair, train_file, eval_file):
    return load_config(None, {
        "models.foundation.path": pair.foundation_path, "models.sft.path": pair.sft_path,
        "data.train_file": str(train_file), "data.eval_file": str(eval_file),
        "btm.router_type": "token_level", "btm.router_hidden_size": 8, "btm.batch_size": 2, "btm.num_epochs": 2})


# --- router: last/ ---------------------------------------------------------------------------------------------------
def test_router_last_is_written_whole_and_a_kill_mid_save_keeps_the_previous_one(tiny_pair, tiny_data_dir, tmp_path,
                                                                                  train_copy, monkeypatch):
    from training import router_state
    from training.router_trainer import train_router

    cfg = _router_cfg(tiny_pair, train_copy, tiny_data_dir / "eval" / "eval_all.jsonl")
    out = tmp_path / "ck"
    kw = dict(output_dir=out, pair=tiny_pair, progress=False, tensorboard_dir=tmp_path / "tb")
    train_router(cfg, max_steps=1, save_steps=1, **kw)
    before = {p.name: p.read_bytes() for p in (out / "last").iterdir()}

    def killed(*args, **kwargs):  # the process dies after router + optimizer were written, before the state
        raise KeyboardInterrupt

    monkeypatch.setattr(router_state, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        train_router(cfg, resume=True, max_steps=2, save_steps=1, **kw)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (out / "last").iterdir()} == before  # untouched, not torn
    router_t, opt_t, state = router_state.load_last(out)
    assert state["global_step"] == 1
    # the next run clears the unfinished hidden folder and resumes from step 1
    result = train_router(cfg, resume=True, **kw)
    assert result["steps"] == 6 and not list(out.glob(".last.*"))


def test_router_resume_refuses_a_torn_or_corrupt_checkpoint(capsys, tiny_pair, tiny_pair_dirs, tiny_data_dir, tmp_path,
                                                            train_copy):
    from training.router_trainer import train_router

    cfg = _router_cfg(tiny_pair, train_copy, tiny_data_dir / "eval" / "eval_all.jsonl")
    kw = dict(pair=tiny_pair, progress=False, tensorboard_dir=tmp_path / "tb")
    train_router(cfg, output_dir=tmp_path / "a", max_steps=1, **kw)
    train_router(cfg, output_dir=tmp_path / "b", max_steps=2, **kw)
    # a mix of two steps (the optimizer of another save) is refused before anything loads
    shutil.copy(tmp_path / "b" / "last" / "optimizer.safetensors", tmp_path / "a" / "last" / "optimizer.safetensors")
    with pytest.raises(UserError, match="torn or damaged.*optimizer.safetensors"):
        train_router(cfg, output_dir=tmp_path / "a", resume=True, **kw)
    # a corrupt trainer_state.json names the file, through the CLI too
    (tmp_path / "b" / "last" / "trainer_state.json").write_text('{"epoch": 0, "gro', encoding="utf-8")
    yaml_cfg = write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir, data={"train_file": str(train_copy)},
                            btm={"batch_size": 2, "num_epochs": 2})
    one_line_error(capsys, "train-router", "--config", yaml_cfg, "--output_dir", tmp_path / "b", "--router_type",
                   "token_level", "--resume", "--no_progress", contains=("trainer_state.json", "not valid JSON"))


def test_router_resume_with_another_training_file_is_refused(capsys, tiny_pair, tiny_pair_dirs, tiny_data_dir, tmp_path,
                                                             train_copy):
    from training.router_trainer import train_router

    cfg = _router_cfg(tiny_pair, train_copy, tiny_data_dir / "eval" / "eval_all.jsonl")
    train_router(cfg, output_dir=tmp_path / "ck", max_steps=1, pair=tiny_pair, progress=False,
                 tensorboard_dir=tmp_path / "tb")
    lines = train_copy.read_text(encoding="utf-8").splitlines()
    train_copy.write_text("\n".join(lines[1:] + lines[:1]) + "\n", encoding="utf-8")  # same path, other order
    yaml_cfg = write_config(tmp_path / "c.yaml", tiny_pair_dirs, tiny_data_dir, data={"train_file": str(train_copy)},
                            btm={"batch_size": 2, "num_epochs": 2})
    one_line_error(capsys, "train-router", "--config", yaml_cfg, "--output_dir", tmp_path / "ck", "--router_type",
                   "token_level", "--resume", "--no_progress", contains=("data.train_file", "differs"))


# --- distill: checkpoint/ --------------------------------------------------------------------------------------------
def _tiny_training_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"epoch": 0, "batch": 1, "step": 1, "sums": [0.0, 0.0, 0.0, 0], "history": [], "best": None,
             "wall_s": 0.0, "cpu_s": 0.0, "done": False, "config": {}}
    return model, opt, state


def test_distill_checkpoint_is_whole_and_checked(tmp_path, monkeypatch):
    from training import distill_checkpoint as ckpt

    model, opt, state = _tiny_training_state()
    ckpt.save_checkpoint(tmp_path, model, opt, state)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir()}
    real = ckpt.write_json

    def killed(path, obj):
        if path.name == "state.json":
            raise KeyboardInterrupt  # dies after both tensor files were written
        real(path, obj)

    monkeypatch.setattr(ckpt, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, model, opt, {**state, "step": 2})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint").iterdir()} == before
    assert ckpt.load_checkpoint(tmp_path, model, opt)["step"] == 1

    # torn: a state from another step than its tensors
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({**saved, "step": 7}))
    with pytest.raises(UserError, match="written at step 1, state.json is at step 7"):
        ckpt.load_checkpoint(tmp_path, model, opt)
    # truncated tensors
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps(saved))
    data = (tmp_path / "checkpoint" / "optimizer.safetensors").read_bytes()
    (tmp_path / "checkpoint" / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="optimizer.safetensors has .* bytes"):
        ckpt.load_checkpoint(tmp_path, model, opt)
    # corrupt state.json names the file
    (tmp_path / "checkpoint" / "state.json").write_text("{nope")
    with pytest.raises(UserError, match="state.json: not valid JSON"):
        ckpt.load_checkpoint(tmp_path, model, opt)


def test_distill_resume_with_another_training_file_is_refused(tiny_pair_dirs, tiny_data_dir, tmp_path, train_copy):
    from training.distill_trainer import train

    f, s = tiny_pair_dirs
    over = {"models.foundation.path": str(f), "models.sft.path": str(s), "models.foundation.device": "cpu",
            "models.sft.device": "cpu", "data.train_file": str(train_copy),
            "data.eval_file": str(tiny_data_dir / "eval" / "eval_all.jsonl"), "distill.output_dir": str(tmp_path / "d"),
            "distill.num_epochs": 2, "distill.batch_size": 2, "distill.save_steps": 1, "data.max_length": 64}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cfg = load_config(empty, over)

    class Killed(Exception):
        pass

    def kill_at_2(step):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, on_step=kill_at_2)
    train_copy.write_text(train_copy.read_text(encoding="utf-8").replace("订单", "订 单"), encoding="utf-8")
    with pytest.raises(UserError, match="data.train_file has other content"):
        train(cfg, resume=True)
