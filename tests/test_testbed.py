"""The test bed: deterministic, reloadable, a valid config, a property check that fails loudly, and (slow) the
CI-size build really has the properties fusion needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.datagen import DataSpec
from training.testbed import PropertyError, build_testbed, check_properties, spec_for

TOY = spec_for(
    "ci", hidden_size=32, intermediate_size=37, num_heads=4, num_kv_heads=2, pretrain_steps=6, sft_steps=4,
    batch_size=4, warmup_steps=2, check=False,
    data=DataSpec(test_per_family=6, dev_per_family=6, train_per_kind=6, foundation_corpus=48, sft_corpus=24),
)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def toy_builds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    for name in ("a", "b"):
        build_testbed(root / name, seed=5, spec=TOY, threads=1)
    return root / "a", root / "b"


def test_same_seed_same_files_and_weights(toy_builds):
    a, b = toy_builds
    files = sorted(p.relative_to(a) for p in (a / "data").rglob("*.jsonl"))
    assert files
    for rel in files + [Path(f"{m}/{f}") for m in ("foundation", "sft") for f in ("tokenizer.json", "tokenizer_config.json")]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "foundation/tokenizer.json").read_bytes() == (a / "sft/tokenizer.json").read_bytes()
    for model in ("foundation", "sft"):
        wa, wb = _weights(a / model), _weights(b / model)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=f"{model}/{k}")
    fa, sa = _weights(a / "foundation"), _weights(a / "sft")
    assert any(not torch.equal(fa[k], sa[k]) for k in fa), "sft did not move away from foundation"


def test_reloads_with_auto_classes_and_config_points_inside(toy_builds):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.config import load_config
    from sopmoe_models.prompt import format_prompt

    a, _ = toy_builds
    cfg = load_config(a / "config.yaml")
    assert Path(cfg.models.foundation.path) == (a / "foundation").resolve()
    assert Path(cfg.models.sft.path) == (a / "sft").resolve()
    assert Path(cfg.data.train_file) == (a / "data/train/train.jsonl").resolve()
    assert Path(cfg.data.eval_file) == (a / "data/dev/dev.jsonl").resolve()  # every choice: dev
    assert Path(cfg.data.dev_dir) == (a / "data/dev").resolve()
    assert Path(cfg.data.task_data_dir) == (a / "data/test").resolve()  # scored: test
    assert cfg.data.train_kinds == ["sop_strict", "reasoning", "general"]
    assert "/" not in (a / "config.yaml").read_text().split("path:")[1].split("\n")[0].strip()  # relative paths
    tok = AutoTokenizer.from_pretrained(a / "sft")
    assert tok.eos_token == "<eos>" and tok.pad_token == "<pad>"
    text = "请按照SOP流程处理客户退款申请：王先生"
    assert tok.decode(tok(text)["input_ids"]) == text  # character level, lossless
    model = AutoModelForCausalLM.from_pretrained(a / "foundation")
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.max_position_embeddings >= 64 + 96
    ids = tok(format_prompt(text), return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 5
    record = json.loads((a / "testbed.json").read_text())
    assert record["seed"] == 5 and record["sizes"]["parameters"] > 0 and record["sweep_split"] == "dev"
    assert {"data", "tokenizer", "pretrain", "sft", "evaluate", "total"} <= set(record["times"])
    assert set(record["sweep"]) == {"sop_strict", "reasoning", "mixed", "eval"}
    assert {"foundation", "sft", "mix_0.3", "mix_0.8"} <= set(record["sweep"]["mixed"])


def _result(reasoning=(0.9, 0.5), sop=(0.6, 0.95), mixed=(0.0, 0.05), mix=0.6) -> dict:
    def fam(f, s, m=0.0):
        return {"foundation": {"acc": f}, "sft": {"acc": s}} | {
            f"mix_{w:.1f}": {"acc": m} for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
        }

    return {"reasoning": fam(*reasoning), "sop_strict": fam(*sop), "mixed": fam(*mixed, mix), "eval": fam(0.5, 0.5)}


def test_property_check_names_each_failure_and_margin():
    assert all(p["passed"] for p in check_properties(_result()))
    props = check_properties(_result(reasoning=(0.5, 0.4), mixed=(0.35, 0.0), mix=0.4))
    failed = {p["property"]: p for p in props if not p["passed"]}
    assert set(failed) == {
        "reasoning: foundation - sft >= 0.15",
        "mixed: best expert <= 0.30",
        "mixed: best mixture (w=0.3) - best expert >= 0.15",
    }
    assert failed["reasoning: foundation - sft >= 0.15"]["margin"] == pytest.approx(-0.05)
    assert failed["mixed: best expert <= 0.30"]["margin"] == pytest.approx(-0.05)


def test_partial_preset_needs_partial_forgetting_and_extreme_keeps_its_checks():
    """The partial bed states its forgetting as ranges: a 0/100 pair fails it; the extreme preset accepts that pair."""
    extreme_pair = _result(reasoning=(0.9, 0.0), sop=(0.0, 0.99))
    failed = {p["property"] for p in check_properties(extreme_pair) if not p["passed"]}
    assert failed == {"sop_strict: foundation in [0.2, 0.85] (partial)", "reasoning: sft in [0.1, 0.9] (partial)"}
    assert all(p["passed"] for p in check_properties(extreme_pair, "extreme"))


def test_untrained_testbed_fails_loudly(tmp_path):
    """A toy build cannot have the properties: the builder raises, naming them, after writing testbed.json."""
    from dataclasses import replace

    with pytest.raises(PropertyError, match="sop_strict: sft - foundation >= 0.15 failed"):
        build_testbed(tmp_path, seed=0, spec=replace(TOY, check=True), threads=1)
    record = json.loads((tmp_path / "testbed.json").read_text())
    assert record["passed"] is False and any(not p["passed"] for p in record["properties"])


@pytest.mark.slow
def test_ci_testbed_has_the_properties(tmp_path):
    """The CI-size build (the full size, ~7 min on 2 cores) passes its property check; the CLI exits 0 and reloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.cli import main

    assert main(["testbed", "--out", str(tmp_path), "--seed", "0", "--size", "ci",
                 "--log-file", str(tmp_path / "testbed.log")]) == 0
    record = json.loads((tmp_path / "testbed.json").read_text())
    assert record["passed"], record["properties"]
    assert record["preset"] == "partial" and record["sweep_split"] == "dev"
    assert check_properties(record["sweep"]) == record["properties"]
    for model in ("foundation", "sft"):
        AutoModelForCausalLM.from_pretrained(tmp_path / model)
        AutoTokenizer.from_pretrained(tmp_path / model)


@pytest.mark.parametrize("command, module, error", [("testbed", "training.testbed", "PropertyError"),
                                                    ("realbed", "training.realbed", "RealPropertyError")])
def test_both_bed_commands_print_the_cards_summary_and_exit_1_on_a_failed_property(
        command, module, error, tmp_path, monkeypatch, capsys):
    """The bed commands share one claim/build/summary path (harness.beds): the card the builder wrote is read back
    after a failed property check, summarised, and the exit code is 1; rebuilding needs --overwrite."""
    import importlib

    from harness.cli import main
    from training.testbed import record_bed

    mod = importlib.import_module(module)
    record = {"seed": 3, "preset": "partial", "size": "ci", "threads": 1,
              "times": {"total": {"wall_s": 2.0, "cpu_s": 1.0}},
              "sweep": {"mixed": {"foundation": {"acc": 0.25}, "mix_0.5": {"acc": 0.5}}},
              "properties": [{"property": "mixed: best expert <= 0.30", "value": 0.25, "margin": 0.05, "passed": True},
                             {"property": "made up", "value": 0.0, "margin": -0.2, "passed": False}],
              "passed": False}

    def fake_build(out, *args, progress=None, **kwargs):
        return record_bed(Path(out), record, getattr(mod, error))

    monkeypatch.setattr(mod, f"build_{command}", fake_build)
    out = tmp_path / "bed"
    argv = [command, "--out", str(out), "--seed", "3"] + (["--log-file", str(tmp_path / "tb.log")]
                                                         if command == "testbed" else [])
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "property check FAILED" in captured.err and "made up failed: value 0.0, short by 0.200" in captured.err
    assert "w_f=0.5" in captured.out and "0.50" in captured.out and "NO" in captured.out
    assert ("real bed" if command == "realbed" else "test bed") in captured.out.replace("\n", " ")
    assert "built in 2 s wall, 1 s CPU, 1 threads" in captured.out
    assert json.loads((out / "testbed.json").read_text())["format"] == 1
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 1
