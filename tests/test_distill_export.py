"""``sopmoe export-llamafactory``: the three files LlamaFactory reads, with reference and teacher responses."""

from __future__ import annotations

import json

import torch
import yaml

from harness.cli import main
from sopmoe_models.data import load_jsonl
from sopmoe_models.prompt import SEPARATOR, format_prompt


def _config(tmp_path, tiny_pair_dirs, tiny_data_dir, **distill):
    f, s = tiny_pair_dirs
    doc = {
        "models": {"foundation": {"path": str(f), "device": "cpu"}, "sft": {"path": str(s), "device": "cpu"}},
        "data": {"train_file": str(tiny_data_dir / "train" / "train.jsonl"), "max_length": 64},
        "ensemble": {"foundation_weight": 0.7, "sft_weight": 0.3},
        "generation": {"max_new_tokens": 6},
        "distill": {"output_dir": str(tmp_path / "run"), "num_epochs": 2, "learning_rate": 1e-4, **distill},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def test_reference_export_structure(tmp_path, tiny_pair_dirs, tiny_data_dir):
    cfg = _config(tmp_path, tiny_pair_dirs, tiny_data_dir, lora={"enabled": True, "r": 4, "alpha": 8})
    out = tmp_path / "lf"
    assert main(["export-llamafactory", "--config", str(cfg), "--output_dir", str(out), "--student_init", "sft"]) == 0
    info = json.loads((out / "dataset_info.json").read_text())
    (name, entry), = info.items()
    assert entry["columns"] == {"prompt": "input", "response": "output"} and entry["formatting"] == "alpaca"
    rows = [json.loads(line) for line in (out / entry["file_name"]).read_text(encoding="utf-8").splitlines()]
    src = load_jsonl(tiny_data_dir / "train" / "train.jsonl")
    assert len(rows) == len(src)
    for row, ex in zip(rows, src):
        assert row["input"] == ex.input + SEPARATOR and row["output"] == ex.output
    conf = yaml.safe_load((out / "llamafactory_distill.yaml").read_text())
    assert conf["model_name_or_path"] == str(tiny_pair_dirs[1])
    assert conf["stage"] == "sft" and conf["do_train"] is True
    assert conf["finetuning_type"] == "lora" and conf["lora_rank"] == 4 and conf["lora_alpha"] == 8
    assert set(conf["lora_target"].split(",")) >= {"q_proj", "v_proj"}
    assert conf["dataset"] == name and conf["dataset_dir"] == str(out.resolve())
    assert conf["template"] == "empty" and conf["cutoff_len"] == 64
    assert conf["learning_rate"] == 1e-4 and conf["num_train_epochs"] == 2.0
    assert conf["output_dir"].startswith(str((tmp_path / "run").resolve()))
    assert conf["trust_remote_code"] is False


def test_teacher_outputs_are_the_ensembles_greedy_generations(tmp_path, tiny_pair_dirs, tiny_data_dir, tiny_pair):
    from sopmoe_models.ensemble import EnsembleLM

    cfg = _config(tmp_path, tiny_pair_dirs, tiny_data_dir)
    out = tmp_path / "seqkd"
    assert main(["export-llamafactory", "--config", str(cfg), "--output_dir", str(out), "--teacher_outputs",
                 "--batch_size", "4"]) == 0
    rows = [json.loads(line) for line in (out / "sopmoe_train.jsonl").read_text(encoding="utf-8").splitlines()]
    conf = yaml.safe_load((out / "llamafactory_distill.yaml").read_text())
    assert conf["finetuning_type"] == "full" and "lora_rank" not in conf
    assert conf["model_name_or_path"] == str(tiny_pair_dirs[0])
    # Each response equals the teacher's own greedy generation for that prompt alone (batching changes nothing).
    teacher = EnsembleLM(tiny_pair, 0.7, 0.3)
    tok = tiny_pair.tokenizer
    src = {format_prompt(ex.input): ex for ex in load_jsonl(tiny_data_dir / "train" / "train.jsonl")}
    assert rows and all(r["input"] in src for r in rows)
    for row in rows[:3]:
        ids = torch.tensor([tok(row["input"], add_special_tokens=False)["input_ids"]])
        want = teacher.generate(ids, torch.ones_like(ids), max_new_tokens=6).texts[0].strip()
        assert row["output"] == want
