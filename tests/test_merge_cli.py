"""``sopmoe merge`` (real CLI, real save/load) and the ``sopmoe_merge`` lm-eval model (in-process and real CLI)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main
from sopmoe_models.merges import merge_models

BIN = Path(sys.executable).parent
DARE = ["--method", "dare", "--scale", "0.9", "--density", "0.5", "--seed", "3"]
MODEL_ARGS = "method=dare,scale=0.9,density=0.5,seed=3"
TASKS = ["sop_strict", "reasoning"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/config.yaml of the checkout is picked up


def sopmoe(tmp_path, *argv) -> int:
    return main(["merge", *map(str, argv), "--log-file", str(tmp_path / "logs" / "merge.log")])


@pytest.fixture(scope="module")
def dare_dir(tiny_pair_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merged")
    f, s = tiny_pair_dirs
    assert sopmoe(tmp, "--foundation", f, "--sft", s, *DARE, "--out", tmp / "dare") == 0
    return tmp / "dare"


@pytest.fixture(scope="module")
def saved_loglikelihoods(dare_dir, tiny_data_dir):
    """lm-eval's own ``hf`` model on the folder ``sopmoe merge`` wrote."""
    return loglikelihoods("hf", f"pretrained={dare_dir}", tiny_data_dir)


def loglikelihoods(model: str, model_args: str, data_dir: Path) -> dict[str, list[float]]:
    """Per-sample log-likelihoods of an in-process ``simple_evaluate``, sorted by doc id, per task."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import simple_parse_args_string

    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir

    register_all()
    # Only sopmoe's task folder: indexing all of lm-eval's tasks would dominate the test's time.
    meta = simple_parse_args_string(model_args) | {"data_dir": str(data_dir / "eval")}
    tm = TaskManager(include_path=tasks_dir(), include_defaults=False, metadata=meta)
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, device="cpu", batch_size=4,
                                  task_manager=tm, limit=3, log_samples=True)
    return {t: [s["resps"][0][0][0] for s in sorted(out["samples"][t], key=lambda s: s["doc_id"])] for t in TASKS}


def test_folder_is_plain_hf_with_provenance(dare_dir, tiny_pair, tiny_pair_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers 4.x also writes special_tokens_map.json beside the tokenizer (5.x folds it into tokenizer_config)
    assert sorted(p.name for p in dare_dir.iterdir() if p.name != "special_tokens_map.json") == [
        ".sopmoe.json", "config.json", "generation_config.json", "merge.json", "model.safetensors",
        "sopmoe_config.yaml", "tokenizer.json", "tokenizer_config.json"]
    assert not dare_dir.with_name("dare.tmp").exists()
    loaded = AutoModelForCausalLM.from_pretrained(dare_dir)
    expected = merge_models(tiny_pair, "dare", scale=0.9, density=0.5, seed=3)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.state_dict().items())
    assert AutoTokenizer.from_pretrained(dare_dir).get_vocab() == tiny_pair.tokenizer.get_vocab()
    record = json.loads((dare_dir / "merge.json").read_text())
    assert record["method"] == "dare" and record["parameters"] == {"scale": 0.9, "density": 0.5, "seed": 3}
    assert record["tensor_maths"] == "peft.utils.merge_utils.dare_linear" and record["auto"] is None
    assert record["inputs"]["foundation"]["fingerprint"] == tiny_pair.fingerprints()["foundation"]
    assert record["inputs"]["sft"]["path"] == str(Path(tiny_pair_dirs[1]).resolve())
    from harness.config import load_config

    assert load_config(dare_dir / "sopmoe_config.yaml").merge.density == 0.5


def test_saved_folder_and_in_memory_adapter_give_the_same_loglikelihoods(saved_loglikelihoods,
                                                                         tiny_pair_dirs, tiny_data_dir):
    # The folder holds exactly merge_models(dare) (test above), so equality here means the adapter evaluates it.
    f, s = tiny_pair_dirs
    in_memory = loglikelihoods("sopmoe_merge", f"foundation={f},sft={s},{MODEL_ARGS}", tiny_data_dir)
    from sopmoe_models.data import load_jsonl

    for t in TASKS:
        assert len(saved_loglikelihoods[t]) == len(load_jsonl(tiny_data_dir / "eval" / f"{t}.jsonl"))  # our data
        assert in_memory[t] == pytest.approx(saved_loglikelihoods[t], abs=1e-5)


def test_adapter_reads_config(tmp_path, tiny_pair_dirs):
    from sopmoe_models.adapters.merge import MergeLMEval

    f, s = tiny_pair_dirs
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  foundation: {{path: {f}}}\n  sft: {{path: {s}}}\nmerge: {{method: ties, density: 0.3}}\n")
    lm = MergeLMEval(config=str(cfg), scale=0.5, device="cuda:7")  # a device this machine lacks: the config's (auto)
    if not torch.cuda.is_available():
        assert lm.device.type == "cpu"
    assert (lm.merge_params.method, lm.merge_params.density, lm.merge_params.scale) == ("ties", 0.3, 0.5)
    assert lm.get_model_info()["merge"] == {"method": "ties", "scale": 0.5, "density": 0.3}
    with pytest.raises(ValueError, match="foundation=DIR"):
        MergeLMEval(method="ties")
    with pytest.raises(ValueError, match="unknown model argument 'alpha'"):
        MergeLMEval(config=str(cfg), alpha=0.5)


@pytest.mark.slow
def test_real_lm_eval_cli(tmp_path, saved_loglikelihoods, tiny_pair_dirs, tiny_data_dir):
    f, s = tiny_pair_dirs
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("SOPMOE_NO_LM_EVAL_HOOK", None)
    cmd = [str(BIN / "lm_eval"), "--model", "sopmoe_merge", "--model_args", f"foundation={f},sft={s},{MODEL_ARGS}",
           "--tasks", ",".join(TASKS), "--batch_size", "4", "--limit", "3", "--log_samples",
           "--metadata", json.dumps({"data_dir": str(tiny_data_dir / "eval")}), "--output_path", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = next((tmp_path / "o").rglob("samples_sop_strict_*.jsonl")).read_text().splitlines()
    got = [json.loads(line) for line in samples]
    got = [float(x["resps"][0][0][0]) for x in sorted(got, key=lambda x: x["doc_id"])]
    assert got == pytest.approx(saved_loglikelihoods["sop_strict"], abs=1e-4)  # no --device: lm-eval's default


def test_auto_records_cocktail_and_grid(tmp_path, tiny_pair_dirs, tiny_data_dir, capsys):
    f, s = tiny_pair_dirs
    out = tmp_path / "auto"
    rc = sopmoe(tmp_path, "--foundation", f, "--sft", s, "--method", "task_arithmetic", "--auto", "--grid",
                "scale=0,0.5,1", "--dev_file", tiny_data_dir / "eval" / "eval_all.jsonl", "--dev_examples", "4",
                "--out", out)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "task_arithmetic" in printed and "chosen" in printed
    auto = json.loads((out / "merge.json").read_text())["auto"]
    rows = auto["grid"]["rows"]
    assert [r["parameters"]["scale"] for r in rows] == [0.0, 0.5, 1.0]
    assert auto["grid"]["values"] == {"scale": [0.0, 0.5, 1.0]} and len(auto["dev_indices"]) == 4
    w = auto["cocktail"]["weights"]
    assert w["foundation"] + w["sft"] == pytest.approx(1.0)
    assert auto["cocktail"]["parameters"]["scale"] == pytest.approx(w["sft"])
    best = min(rows + [{"dev_loss": auto["chosen"]["dev_loss"]}], key=lambda r: r["dev_loss"])
    assert auto["chosen"]["dev_loss"] == best["dev_loss"]
    record = json.loads((out / "merge.json").read_text())
    assert record["parameters"] == auto["chosen"]["parameters"]


def test_auto_grid_fixes_given_parameters():
    from harness.commands.merge import search_grid
    from sopmoe_models.merges import dare, linear, ties

    assert search_grid(ties, {"scale": None, "density": None}, None) == {k: list(v) for k, v in ties.SEARCH.items()}
    assert search_grid(dare, {"scale": 0.7, "density": None, "seed": None}, None) == {"density": list(dare.SEARCH["density"])}
    assert search_grid(ties, {"scale": 0.7}, ["density=0.3,0.6"]) == {"density": [0.3, 0.6]}
    with pytest.raises(ValueError, match="not a searchable parameter"):
        search_grid(linear, {}, ["density=0.5"])
    with pytest.raises(ValueError, match="nothing to search"):
        search_grid(linear, {"weight": 0.3}, None)


def test_errors_are_one_line(tmp_path, tiny_pair_dirs, dare_dir, capsys):
    from tests import tiny

    f, s = tiny_pair_dirs
    assert sopmoe(tmp_path, "--foundation", f, "--sft", s, "--out", dare_dir) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert sopmoe(tmp_path, "--foundation", f, "--sft", s, "--auto", "--out", tmp_path / "x") == 2
    assert "needs dev data" in capsys.readouterr().err
    other = tmp_path / "other"
    tiny.make_model(tiny.make_tokenizer("€"), 0).save_pretrained(other)
    tiny.make_tokenizer("€").save_pretrained(other)
    assert sopmoe(tmp_path, "--foundation", f, "--sft", other, "--out", tmp_path / "y") == 2
    assert "tokenizers differ" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "y.tmp").exists()


def test_overwrite_replaces_atomically(tmp_path, tiny_pair_dirs):
    f, s = tiny_pair_dirs
    out = tmp_path / "m"
    assert sopmoe(tmp_path, "--foundation", f, "--sft", s, "--method", "linear", "--weight", "0", "--out", out) == 0
    assert sopmoe(tmp_path, "--foundation", f, "--sft", s, "--method", "linear", "--weight", "1", "--out", out,
                  "--overwrite") == 0
    assert json.loads((out / "merge.json").read_text())["parameters"] == {"weight": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "m"]
