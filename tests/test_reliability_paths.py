"""Issue 13, class 6: an ``evaluate`` label names a sub-folder of the run, so it is a name, never a path."""

from __future__ import annotations

import pytest

from harness.model_specs import parse_model_spec
from sopmoe_models.errors import UserError
from tests.reliability import one_line_error


@pytest.mark.parametrize("label", ["..", ".", "../x", "a/b", "/abs", ".hidden", "a\\b", "summary.json", "config.yaml",
                                   "x" * 101, ""])
def test_labels_are_names_never_paths(label, tmp_path):
    with pytest.raises(UserError, match="must be a name"):
        parse_model_spec(f"{label}=hf:pretrained={tmp_path}")


def test_ordinary_labels_still_work():
    assert parse_model_spec("merge_ties=merge:method=ties").name == "merge_ties"
    assert parse_model_spec("ensemble@0.7").name == "ensemble@0.7"
    assert parse_model_spec("v1.2-b+c=hf:pretrained=x").name == "v1.2-b+c"


def test_evaluate_writes_nothing_above_the_run_folder(capsys, tmp_path, tiny_pair_dirs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f, s = tiny_pair_dirs
    run = tmp_path / "runs" / "r"
    one_line_error(capsys, "evaluate", "--foundation", f, "--sft", s, "--models", f"..=hf:pretrained={f}",
                   "--output_dir", run, "--log-file", tmp_path / "e.log", contains="must be a name")
    assert not (tmp_path / "runs").exists()
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("meta.json"))
