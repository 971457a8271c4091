"""The training toolkit both trainers share: schedule, optimizer state, trainer state, atomic writes, the mask."""

from __future__ import annotations

import json

import pytest
import torch

from sopmoe_models.data import IGNORE_INDEX
from sopmoe_models.errors import UserError
from training import toolkit


def test_lr_factor_warms_up_then_decays_to_zero():
    assert [toolkit.lr_factor(s, 10, 2) for s in range(11)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0])
    assert [toolkit.lr_factor(s, 4, 0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def _trained_adamw(seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(2):
        layer(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return layer, opt


@pytest.mark.parametrize("keep_groups", [True, False])
def test_optimizer_state_round_trips_through_safetensors(tmp_path, keep_groups):
    from safetensors.torch import load_file, save_file

    _, opt = _trained_adamw()
    tensors, groups = toolkit.optimizer_tensors(opt)
    assert sorted(tensors) == sorted(f"state.{i}.{n}" for i in (0, 1) for n in ("step", "exp_avg", "exp_avg_sq"))
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    groups = json.loads(json.dumps(groups))  # as stored in a trainer state

    layer2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(layer2.parameters(), lr=0.1, weight_decay=0.01)
    toolkit.restore_optimizer(opt2, load_file(str(tmp_path / "optimizer.safetensors")), groups if keep_groups else None)
    a, b = opt.state_dict(), opt2.state_dict()
    as_json = lambda x: json.loads(json.dumps(x))  # noqa: E731  (betas: a tuple, a list after the JSON round trip)
    assert as_json(a["param_groups"]) == as_json(b["param_groups"])
    for i in a["state"]:
        for name, value in a["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][i][name]))


def test_read_state_names_the_file_and_the_missing_keys(tmp_path):
    good = tmp_path / "state.json"
    good.write_text(json.dumps({"epoch": 1, "step": 3}), encoding="utf-8")
    assert toolkit.read_state(good, ("epoch", "step"), "test state") == {"epoch": 1, "step": 3}
    with pytest.raises(UserError, match=r"state.json: not a test state \(needs epoch, step, history\)"):
        toolkit.read_state(good, ("epoch", "step", "history"), "test state")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON.*damaged"):
        toolkit.read_state(bad, ("epoch",), "test state")


def test_atomic_writes_leave_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "sub" / "card.json"
    toolkit.write_json(path, {"b": 1, "a": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "b": 1,\n  "a": "é"\n}\n'
    with pytest.raises(RuntimeError), toolkit.atomic_path(path) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("killed")
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": 1, "a": "é"}
    assert [p.name for p in path.parent.iterdir()] == ["card.json"]  # no temporary file left


def test_training_diverged_is_a_user_error():
    # the CLI prints a UserError as one line (the message says to lower the learning rate); train-router exits 1
    assert issubclass(toolkit.TrainingDiverged, UserError)


def test_one_output_mask():
    labels = torch.tensor([[IGNORE_INDEX, 4, 5, IGNORE_INDEX]])
    assert toolkit.output_mask(labels).tolist() == [[True, True, False]]
