"""Router training: frozen experts, resume equivalence, best/last checkpoints, NaN stop, posterior prior, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from harness.config import load_config
from training import router_trainer
from training.router_trainer import TrainingDiverged, epoch_groups, lr_factor, train_router


def config(tiny_pair, tiny_data_dir, **btm):
    overrides = {
        "models.foundation.path": tiny_pair.foundation_path,
        "models.sft.path": tiny_pair.sft_path,
        "models.foundation.device": "cpu",
        "models.sft.device": "cpu",
        "data.train_file": str(tiny_data_dir / "train" / "train.jsonl"),
        "data.eval_file": str(tiny_data_dir / "eval" / "eval_all.jsonl"),
        "btm.batch_size": 2,
        "btm.num_epochs": 2,
        "btm.learning_rate": 0.05,
        "btm.router_hidden_size": 8,
        "btm.load_balance_weight": 0.01,
        "btm.sparsity_weight": 0.01,
    }
    overrides.update({f"btm.{k}": v for k, v in btm.items()})
    return load_config(None, overrides, use_default=False)  # not the cwd's configs/config.yaml


def train(cfg, out, pair, tmp_path, **kw):
    return train_router(cfg, output_dir=out, pair=pair, progress=False, tensorboard_dir=tmp_path / "tb", **kw)


def expert_state(pair):
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(pair.experts) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("router_type", ["token_level", "layer_level"])
def test_training_leaves_experts_frozen_and_learns(tiny_pair, tiny_data_dir, tmp_path, router_type):
    before = expert_state(tiny_pair)
    cfg = config(tiny_pair, tiny_data_dir, router_type=router_type, num_epochs=3)
    result = train(cfg, tmp_path / "ck", tiny_pair, tmp_path)
    after = expert_state(tiny_pair)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for m in tiny_pair.experts for p in m.parameters())
    # the optimizer held the router's tensors only
    opt = load_file(str(tmp_path / "ck" / "last" / "optimizer.safetensors"))
    n_router = len(list(torch.nn.Module.parameters(router_trainer.build_router(router_type, tiny_pair, hidden_size=8))))
    assert {k.split(".")[1] for k in opt} == {str(i) for i in range(n_router)}
    hist = result["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and result["status"] == "completed"
    assert result["best_eval_nll"] == min(h["nll"] for h in hist)
    assert hist[-1]["nll"] < hist[0]["nll"] + 1e-6 or result["best_epoch"] < 3
    card = json.loads((tmp_path / "ck" / "router.json").read_text())
    assert card["type"] == router_type and card["metrics"]["best_epoch"] == result["best_epoch"]
    assert card["experts"]["foundation"]["fingerprint"] == tiny_pair.fingerprints()["foundation"]
    assert card["training"]["btm"]["num_epochs"] == 3 and card["metrics"]["train_seconds"] > 0
    assert (tmp_path / "ck" / "config.yaml").is_file()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_resume_mid_epoch_ends_with_the_same_router(tiny_pair, tiny_data_dir, tmp_path):
    cfg = config(tiny_pair, tiny_data_dir, router_type="token_level", num_epochs=2, batch_size=1,
                 gradient_accumulation_steps=2)
    full = train(cfg, tmp_path / "full", tiny_pair, tmp_path)
    # 6 examples, batches of 1, 2 per step: 3 steps per epoch; stop inside epoch 2, then resume
    part = train(cfg, tmp_path / "split", tiny_pair, tmp_path, max_steps=4)
    assert part["status"] == "max_steps" and part["steps"] == 4
    state = json.loads((tmp_path / "split" / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["group"]) == (1, 1)
    resumed = train(cfg, tmp_path / "split", tiny_pair, tmp_path, resume=True)
    assert resumed["steps"] == full["steps"] == 6
    for name in ("best_router.safetensors", "last/router.safetensors", "last/optimizer.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "split" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-7, rtol=0), (name, k)
    assert [h["nll"] for h in resumed["history"]] == pytest.approx([h["nll"] for h in full["history"]])
    changed = config(tiny_pair, tiny_data_dir, router_type="token_level", num_epochs=2, batch_size=2,
                     gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="settings differ.*batch_size"):
        train(changed, tmp_path / "split", tiny_pair, tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no resumable checkpoint"):
        train(cfg, tmp_path / "empty", tiny_pair, tmp_path, resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_pair, tiny_data_dir, tmp_path, monkeypatch):
    cfg = config(tiny_pair, tiny_data_dir, router_type="token_level", num_epochs=2)
    real, calls = router_trainer.batch_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 2
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(router_trainer, "batch_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="NaN/inf at epoch 2, step 5"):
        train(cfg, tmp_path / "ck", tiny_pair, tmp_path, save_steps=1)
    state = json.loads((tmp_path / "ck" / "last" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    weights = load_file(str(tmp_path / "ck" / "last" / "router.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert (tmp_path / "ck" / "best_router.safetensors").is_file()


def test_posterior_training_estimates_the_prior(tiny_pair, tiny_data_dir, tmp_path):
    cfg = config(tiny_pair, tiny_data_dir, router_type="posterior")
    result = train(cfg, tmp_path / "post", tiny_pair, tmp_path)
    prior = result["prior"]
    assert prior[0] + prior[1] == pytest.approx(1.0) and prior != pytest.approx([0.5, 0.5])
    weights = load_file(str(tmp_path / "post" / "best_router.safetensors"))
    assert torch.allclose(weights["log_prior"].exp(), torch.tensor(prior), atol=1e-6)
    card = json.loads((tmp_path / "post" / "router.json").read_text())
    assert card["type"] == "posterior" and card["metrics"]["prior"] == pytest.approx(prior)


def test_schedule_and_data_order_are_pure_functions():
    assert epoch_groups(7, 2, 2, seed=0, epoch=1) == epoch_groups(7, 2, 2, seed=0, epoch=1)
    assert epoch_groups(7, 2, 2, seed=0, epoch=1) != epoch_groups(7, 2, 2, seed=0, epoch=0)
    groups = epoch_groups(7, 2, 2, seed=0, epoch=0)
    assert [len(g) for g in groups] == [2, 2] and sorted(i for g in groups for b in g for i in b) == list(range(7))
    assert [lr_factor(s, 10, 2) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])


def test_train_router_cli(tiny_pair, tiny_data_dir, tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "models": {"foundation": {"path": tiny_pair.foundation_path}, "sft": {"path": tiny_pair.sft_path}},
        "data": {"train_file": str(tiny_data_dir / "train" / "train.jsonl"),
                 "eval_file": str(tiny_data_dir / "eval" / "eval_all.jsonl")},
        "btm": {"router_type": "layer_level", "router_hidden_size": 8, "batch_size": 3},
    }))
    rc = main(["train-router", "--config", str(cfg_file), "--output_dir", "ck", "--router_type", "token_level",
               "--num_epochs", "1", "--no_progress", "--run_name", "t"])
    assert rc == 0
    assert "router token_level (completed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "ck" / "router.json").read_text())["type"] == "token_level"
    assert "epoch 1/1" in (tmp_path / "logs" / "btm_training.log").read_text()
    assert list((tmp_path / "outputs" / "tensorboard" / "t").glob("events.out.tfevents.*"))
    assert main(["train-router", "--config", str(cfg_file), "--router_type", "moe"]) == 2
    assert "unknown router type 'moe'" in capsys.readouterr().err
