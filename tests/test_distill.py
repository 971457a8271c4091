"""The distillation trainer end to end on the tiny pair (ensemble teacher): full and LoRA students, the CLI,
resume after a kill, the teacher cache inside training, and NaN handling. Each run is a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.config import load_config

BASE = {
    "distill.num_epochs": 2,
    "distill.batch_size": 2,
    "distill.learning_rate": 5e-3,
    "distill.warmup_ratio": 0.0,
    "distill.save_steps": 2,
    "data.max_length": 64,
}


def make_cfg(pair_dirs, data_dir, out: Path, **overrides):
    f, s = pair_dirs
    o = {
        "models.foundation.path": str(f), "models.sft.path": str(s), "models.foundation.device": "cpu",
        "models.sft.device": "cpu", "data.train_file": str(data_dir / "train" / "train.jsonl"),
        "data.eval_file": str(data_dir / "eval" / "eval_all.jsonl"), "distill.output_dir": str(out), **BASE,
    }
    o.update({k.replace("__", "."): v for k, v in overrides.items()})
    empty = out.parent / "empty.yaml"  # not configs/config.yaml of whatever the working directory is
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("")
    return load_config(empty, o)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distill_runs")


@pytest.fixture(scope="module")
def full_run(workdir, tiny_pair_dirs, tiny_data_dir):
    """An uninterrupted full fine-tune through the real CLI (config YAML + flags)."""
    import os

    import yaml

    from harness.cli import main

    out = workdir / "full"
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, out)
    cfg.save(workdir / "config.yaml")
    doc = yaml.safe_load((workdir / "config.yaml").read_text())
    assert doc["distill"]["teacher_type"] == "ensemble"
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        rc = main(["distill", "--config", str(workdir / "config.yaml"), "--teacher_type", "ensemble",
                   "--student_init", "foundation", "--output_dir", str(out)])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return out


def test_full_run_writes_a_plain_hf_student(full_run, workdir, tiny_pair_dirs):
    from transformers import AutoModelForCausalLM

    best = full_run / "best_student"
    card = json.loads((best / "distill.json").read_text())
    assert card["teacher"]["type"] == "ensemble" and card["student_init"] == "foundation"
    assert card["teacher"]["fingerprint"]["weights"] == [0.5, 0.5]
    assert card["finetuning"] == "full" and card["inference_cost"] == 1.0
    assert len(card["epochs"]) == 2 and card["best"]["metric"] == "eval_loss"
    assert card["epochs"][-1]["train"]["loss"] < card["epochs"][0]["train"]["loss"]
    assert all(e["eval"]["tokens"] > 0 for e in card["epochs"])
    assert json.loads((full_run / "distill.json").read_text()) == card
    model = AutoModelForCausalLM.from_pretrained(str(best))  # a plain folder: no sopmoe code needed
    assert type(model).__name__ == "Qwen3ForCausalLM"
    init = weights(Path(tiny_pair_dirs[0]))
    got = weights(best)
    assert set(got) == set(init)
    assert any(not torch.equal(got[k], init[k]) for k in got), "the student did not change"
    assert (workdir / "logs" / "distill.log").is_file()
    assert any((workdir / "outputs" / "tensorboard").rglob("events.out.tfevents*"))
    assert (full_run / "checkpoint" / "state.json").is_file() and (full_run / "config.yaml").is_file()


def test_teacher_experts_stay_frozen_and_untouched(full_run, tiny_pair_dirs):
    # The student was a separate copy: the foundation folder the teacher used is unchanged on disk.
    from sopmoe_models.experts import fingerprint

    card = json.loads((full_run / "distill.json").read_text())
    assert card["teacher"]["fingerprint"]["experts"]["foundation"] == fingerprint(tiny_pair_dirs[0])


def test_resume_after_kill_equals_uninterrupted(full_run, workdir, tiny_pair_dirs, tiny_data_dir, monkeypatch):
    from training.distill_trainer import train

    monkeypatch.chdir(workdir)
    out = workdir / "killed"
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, out)

    class Killed(Exception):
        pass

    def kill_at_5(step):
        if step == 5:  # step 5 updated the weights but was never checkpointed (last checkpoint: step 4)
            raise Killed

    with pytest.raises(Killed):
        train(cfg, on_step=kill_at_5)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and state["epoch"] == 1 and state["batch"] == 1
    train(cfg, resume=True)
    a, b = weights(full_run / "best_student"), weights(out / "best_student")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    ca = json.loads((full_run / "distill.json").read_text())
    cb = json.loads((out / "distill.json").read_text())
    for ea, eb in zip(ca["epochs"], cb["epochs"]):
        assert eb["eval"]["loss"] == pytest.approx(ea["eval"]["loss"], abs=1e-6)
        assert eb["train"]["loss"] == pytest.approx(ea["train"]["loss"], abs=1e-6)


def test_resume_refuses_other_settings(full_run, tiny_pair_dirs, tiny_data_dir, monkeypatch, workdir):
    from training.distill_trainer import train

    monkeypatch.chdir(workdir)
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, full_run, distill__learning_rate=1e-3)
    with pytest.raises(ValueError, match="learning_rate"):
        train(cfg, resume=True)


def test_cached_teacher_with_k_equal_w_matches_live(full_run, workdir, tiny_pair_dirs, tiny_data_dir, tiny_pair, monkeypatch):
    from training.distill_trainer import train

    monkeypatch.chdir(workdir)
    out = workdir / "cached"
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, out, distill__teacher_cache_topk=tiny_pair.width)
    card = train(cfg)
    assert card["teacher_cache"]["train"]["built"]
    # The tiny eval file has the same content as the train file, hence the same key: one cache serves both.
    assert card["teacher_cache"]["eval"]["path"] == card["teacher_cache"]["train"]["path"]
    live = json.loads((full_run / "distill.json").read_text())
    for ea, eb in zip(live["epochs"], card["epochs"]):
        assert eb["train"]["loss"] == pytest.approx(ea["train"]["loss"], abs=1e-5)
        assert eb["eval"]["loss"] == pytest.approx(ea["eval"]["loss"], abs=1e-5)
    # A second run (replacing the first: --overwrite) reuses both caches.
    again = train(make_cfg(tiny_pair_dirs, tiny_data_dir, out, distill__teacher_cache_topk=tiny_pair.width),
                  overwrite=True)
    assert not again["teacher_cache"]["train"]["built"] and not again["teacher_cache"]["eval"]["built"]


def test_lora_student_is_merged(workdir, tiny_pair_dirs, tiny_data_dir, monkeypatch, recwarn):
    from transformers import AutoModelForCausalLM

    from training.distill_trainer import train

    monkeypatch.chdir(workdir)
    out = workdir / "lora"
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, out, distill__student_init="sft", distill__lora__enabled=True,
                   distill__lora__r=4, distill__lora__alpha=8, distill__learning_rate=2e-2, distill__teacher_cache_topk=8,
                   distill__gradient_checkpointing=True)
    card = train(cfg)
    assert card["finetuning"] == "lora" and card["student_init"] == "sft"
    assert not [w for w in recwarn if "gradient_checkpointing_enable" in str(w.message)]  # transformers 5's name
    got, init = weights(out / "best_student"), weights(Path(tiny_pair_dirs[1]))
    assert set(got) == set(init), "LoRA tensors must be merged away"
    changed = {k for k in got if not torch.equal(got[k], init[k])}
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
                           for k in changed)
    assert torch.equal(got["model.embed_tokens.weight"], init["model.embed_tokens.weight"])
    AutoModelForCausalLM.from_pretrained(str(out / "best_student"))
    assert (out / "best_adapter.safetensors").is_file()


def test_nan_stops_and_keeps_last_good_checkpoint(workdir, tiny_pair_dirs, tiny_data_dir, monkeypatch):
    import training.distill_trainer as trainer

    monkeypatch.chdir(workdir)
    out = workdir / "nan"
    calls = {"n": 0}
    real = trainer.distill_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        res = real(*args, **kwargs)
        if calls["n"] == 3:  # third training micro-batch = optimizer step 3
            res.loss = res.loss * float("nan")
        return res

    monkeypatch.setattr(trainer, "distill_loss", poisoned)
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, out, data__eval_file=None, distill__num_epochs=3)
    with pytest.raises(trainer.TrainingDiverged, match="last good checkpoint"):
        trainer.train(cfg)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2  # the checkpoint before the NaN, untouched
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "checkpoint" / "trainable.safetensors")).values())


def test_bad_inputs_are_one_line_errors(workdir, tiny_pair_dirs, tiny_data_dir, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.chdir(workdir)
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, workdir / "bad")
    cfg.save(workdir / "bad.yaml")
    assert main(["distill", "--config", str(workdir / "bad.yaml"), "--student_init", str(workdir / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["distill", "--config", str(workdir / "bad.yaml"), "--teacher_type", "btm"]) == 2
    assert "--btm_router" in capsys.readouterr().err


def test_btm_teacher(workdir, tiny_pair_dirs, tiny_data_dir, tiny_pair, monkeypatch):
    """A saved router is a teacher too; its weights enter the fingerprint and so the cache key."""
    from sopmoe_models.routers import build_router
    from training.distill_trainer import train

    monkeypatch.chdir(workdir)
    router_dir = workdir / "router"
    router = build_router("token_level", tiny_pair, hidden_size=8)
    router.save_router(router_dir)
    over = dict(distill__teacher_type="btm", distill__btm_router=str(router_dir), distill__num_epochs=1,
                distill__teacher_cache_topk=8, distill__teacher_cache_dir=str(workdir / "shared_cache"))
    card = train(make_cfg(tiny_pair_dirs, tiny_data_dir, workdir / "btm", **over))
    fp = card["teacher"]["fingerprint"]
    assert card["teacher"]["type"] == "btm" and fp["router"]["type"] == "token_level"
    assert card["teacher_cache"]["train"]["built"]
    # Same router again, another run folder: the shared cache is reused.
    again = train(make_cfg(tiny_pair_dirs, tiny_data_dir, workdir / "btm2", **over))
    assert not again["teacher_cache"]["train"]["built"]
    # Retrained router (other weights): a new cache, never the stale one.
    weights = router_dir / "best_router.safetensors"
    router.load_state_dict({k: v + 0.1 for k, v in load_file(str(weights)).items()})
    router.save_router(router_dir)
    third = train(make_cfg(tiny_pair_dirs, tiny_data_dir, workdir / "btm3", **over))
    assert third["teacher_cache"]["train"]["built"]
    assert third["teacher"]["fingerprint"]["state_sha256"] != fp["state_sha256"]
    assert third["teacher_cache"]["train"]["path"] != card["teacher_cache"]["train"]["path"]


def test_replay_is_plain_finetuning_without_a_teacher(workdir, tiny_pair_dirs, tiny_data_dir, monkeypatch):
    """`--teacher_type none` (the replay_sft baseline): no teacher is built, the loss is the references' CE over all
    the student's output rows, only the allowed kinds are trained on, and the card says so."""
    from transformers import AutoModelForCausalLM

    from harness.config import ConfigError
    from training import distill_trainer
    from training.kd_losses import ce_per_token, select_output_positions

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(distill_trainer, "build_teacher", lambda *a, **k: pytest.fail("replay built a teacher"))
    out = workdir / "replay"
    cfg = make_cfg(tiny_pair_dirs, tiny_data_dir, out, distill__teacher_type="none", distill__distill_loss_weight=0.0,
                   distill__task_loss_weight=1.0, distill__num_epochs=1, data__train_kinds=["sop_strict", "reasoning"])
    card = distill_trainer.train(cfg)
    assert card["teacher"]["type"] == "none" and card["teacher_cache"] == {"train": None, "eval": None}
    assert card["config"]["data"]["train_kinds"] == ["sop_strict", "reasoning"]
    ev = card["epochs"][0]["eval"]
    assert ev["kd"] == 0 and ev["loss"] == pytest.approx(ev["ce"])
    # the eval CE is the best student's plain cross-entropy on the dev rows of the allowed kinds
    from sopmoe_models.data import collate, encode_example, load_training_examples

    student = AutoModelForCausalLM.from_pretrained(out / "best_student").eval()
    rows = load_training_examples(cfg.data.eval_file, cfg.data.train_kinds)
    tok = __import__("transformers").AutoTokenizer.from_pretrained(out / "best_student")
    batch = collate([encode_example(tok, r, max_length=64) for r in rows], tok.pad_token_id)
    with torch.no_grad():
        s, t = select_output_positions(student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                       batch["labels"])
    assert ce_per_token(s, t).mean().item() == pytest.approx(ev["ce"], rel=1e-4)
    with pytest.raises(ConfigError, match="teacher_type none is plain fine-tuning"):
        make_cfg(tiny_pair_dirs, tiny_data_dir, out, distill__teacher_type="none")


def test_one_process_can_train_students_at_two_precisions_in_turn():
    """sopmoe demo runs its stages in one process (and a test session runs many): a float32 student after a bf16 one
    must not trip accelerate's one-state-per-process check."""
    from accelerate.state import AcceleratorState

    from training.distill_trainer import _accelerator

    try:
        assert _accelerator("no", cpu=False).mixed_precision == "no"
        assert _accelerator("bf16", cpu=False).mixed_precision == "bf16"
        assert _accelerator("no", cpu=False).mixed_precision == "no"
    finally:
        AcceleratorState._reset_state()
