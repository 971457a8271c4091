"""``sopmoe evaluate``: model specs, skipping models whose inputs are missing, and a real lm-eval run on the tiny pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import load_config
from harness.model_specs import parse_model_spec, plan


@pytest.fixture(scope="module")
def tiny_config(tiny_pair_dirs, tiny_data_dir, tmp_path_factory) -> Path:
    foundation, sft = tiny_pair_dirs
    path = tmp_path_factory.mktemp("evalcfg") / "config.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"foundation": {"path": str(foundation), "dtype": "float32", "device": "cpu"},
                   "sft": {"path": str(sft), "dtype": "float32", "device": "cpu"}},
        "data": {"task_data_dir": str(Path(tiny_data_dir) / "eval")},
        "btm": {"output_dir": str(path.parent / "no_router_here")},
        "distill": {"output_dir": str(path.parent / "no_student_here")},
    }), encoding="utf-8")
    return path


def test_parse_model_spec():
    s = parse_model_spec("foundation")
    assert (s.name, s.kind, s.args) == ("foundation", "foundation", {})
    s = parse_model_spec("ensemble@0.7")
    assert (s.name, s.kind) == ("ensemble@0.7", "ensemble") and s.args == {"foundation_weight": 0.7, "sft_weight": 0.3}
    s = parse_model_spec("w7=ensemble@0.7:mix=logit")
    assert (s.name, s.kind) == ("w7", "ensemble") and s.args == {"foundation_weight": 0.7, "sft_weight": 0.3, "mix": "logit"}
    s = parse_model_spec("ties=merge:method=ties,density=0.3")
    assert (s.name, s.kind, s.args) == ("ties", "merge", {"method": "ties", "density": 0.3})
    s = parse_model_spec("mine=hf:pretrained=/some/dir")
    assert (s.name, s.kind, s.args) == ("mine", "hf", {"pretrained": "/some/dir"})
    for bad in ("btm@0.5", "ensemble@x", "ensemble@1.5", "a/b=hf:pretrained=x", "lab="):
        with pytest.raises(ValueError, match="--models"):
            parse_model_spec(bad)


def test_plan_reports_missing_inputs(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    btm = plan(parse_model_spec("btm"), cfg)
    assert btm.lm_eval_model == "sopmoe_btm" and "no router checkpoint" in btm.problem
    distill = plan(parse_model_spec("distill"), cfg)
    assert "no model folder" in distill.problem and "sopmoe distill" in distill.problem
    ens = plan(parse_model_spec("ensemble@0.25"), cfg)
    assert ens.model_args["foundation_weight"] == 0.25 and ens.model_args["sft_weight"] == 0.75
    assert ens.forwards_per_token == 2
    with pytest.raises(ValueError, match="unknown model 'no_such_lm'"):  # an error, not a skipped row
        plan(parse_model_spec("x=no_such_lm:a=1"), cfg)
    gone = plan(parse_model_spec(f"gone=foundation:pretrained={tmp_path / 'nothing'}"), cfg)
    assert "no model folder" in gone.problem
    merge = plan(parse_model_spec("ties=merge:method=ties,density=0.3"), cfg)
    assert merge.model_args["method"] == "ties" and merge.model_args["density"] == 0.3


def test_evaluate_skips_missing_models_and_writes_the_others(tiny_config, tiny_pair_dirs, tmp_path, capsys):
    """Real lm-eval, in-process, on the tiny pair: foundation, sft, ensemble run; btm (no router) is skipped; a
    model that breaks while loading is recorded as failed; the others still write their results."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}", encoding="utf-8")  # passes the input check, fails in transformers
    out = tmp_path / "run"
    rc = main(["evaluate", "--config", str(tiny_config), "--models", "foundation", "sft", "ensemble", "btm",
               "merge", f"student=distill:pretrained={tiny_pair_dirs[1]}", f"broken=hf:pretrained={broken}",
               f"posterior=sopmoe_btm:router_type=posterior,foundation={tiny_pair_dirs[0]},sft={tiny_pair_dirs[1]}", "--tasks", "sop_strict", "reasoning", "--limit", "1",
               "--batch_size", "2", "--output_dir", str(out), "--log-file", str(tmp_path / "eval.log")])
    assert rc == 1  # one model failed
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["ran"] == ["foundation", "sft", "ensemble", "merge", "student", "posterior"]
    assert summary["skipped"] == ["btm"] and summary["failed"] == ["broken"]
    reasons = {m["name"]: m.get("reason", "") for m in summary["models"]}
    assert "no router checkpoint" in reasons["btm"] and reasons["broken"]
    assert (out / "config.yaml").is_file() and load_config(out / "config.yaml").models.foundation.path
    for name in summary["ran"]:
        results = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
        meta = json.loads((out / name / "meta.json").read_text(encoding="utf-8"))
        assert set(results["results"]) == {"sop_strict", "reasoning"}
        assert 0 <= results["results"]["sop_strict"]["acc,none"] <= 1
        assert results["results"]["sop_strict"]["perplexity,none"] > 1
        assert results["config"]["model"] == meta["lm_eval_model"]
        assert meta["time"]["wall_s"] >= meta["time"]["requests_s"] > 0
        assert meta["time"]["requests"]["loglikelihood"]["n"] == 2
    meta = json.loads((out / "ensemble" / "meta.json").read_text(encoding="utf-8"))
    assert meta["inference_cost"]["expert_forwards_per_token"] == 2
    assert meta["inference_cost"]["requests_s_vs_foundation"] > 0
    assert meta["training"] == {"wall_s": 0.0, "source": "training-free", "data": "none (weights chosen on dev)"}
    # foundation and sft read the same documents; the plain hf run equals lm-eval's own per-token numbers
    f = json.loads((out / "foundation" / "results.json").read_text(encoding="utf-8"))
    assert f["config"]["model_args"]["pretrained"] == str(tiny_pair_dirs[0])
    assert "btm" in capsys.readouterr().out
    # the student is the sft folder through sopmoe_distill: the same numbers as the plain hf run of sft
    s = json.loads((out / "student" / "results.json").read_text(encoding="utf-8"))["results"]
    h = json.loads((out / "sft" / "results.json").read_text(encoding="utf-8"))["results"]
    assert s["sop_strict"]["perplexity,none"] == pytest.approx(h["sop_strict"]["perplexity,none"], rel=1e-5)
    routing = json.loads((out / "posterior" / "routing.json").read_text(encoding="utf-8"))  # kept by sopmoe_btm
    share = routing["tasks"]["sop_strict"]
    assert share["foundation"] + share["sft"] == pytest.approx(1.0) and share["n_queries"] == 1
    merge = json.loads((out / "merge" / "meta.json").read_text(encoding="utf-8"))
    assert merge["model_args"]["method"] == "linear" and merge["inference_cost"]["expert_forwards_per_token"] == 1

    # --append adds (or re-runs) models in the same folder and keeps the others; other tasks/limit are refused
    common = ["--config", str(tiny_config), "--tasks", "sop_strict", "reasoning", "--batch_size", "2",
              "--output_dir", str(out), "--log-file", str(tmp_path / "eval.log"), "--append"]
    assert main(["evaluate", "--models", "w9=ensemble@0.9", "--limit", "1", *common]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["ran"] == ["foundation", "sft", "ensemble", "merge", "student", "posterior", "w9"]
    assert len(summary["commands"]) == 2 and summary["failed"] == ["broken"]
    assert json.loads((out / "w9" / "meta.json").read_text())["inference_cost"]["requests_s_vs_foundation"] > 0
    assert main(["evaluate", "--models", "sft", "--limit", "2", *common]) == 2

    # and the leaderboard reads the run
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "LB.md"), "--quiet"]) == 0
    md = (tmp_path / "LB.md").read_text(encoding="utf-8")
    assert "| ensemble |" in md and "`btm` not evaluated" in md and "`broken` not evaluated" in md


@pytest.mark.parametrize("versioned", [False, True])
def test_expert_cost_and_data_come_from_the_beds_card(tiny_config, tmp_path, versioned):
    """foundation/sft of a bed: the training wall-clock and "Trained on" are read from ``testbed.json`` through its
    card (:class:`~sopmoe_models.cards.BedCard`); a card written before beds were versioned reads the same."""
    from harness.model_specs import training_cost, training_data
    from sopmoe_models.cards import BedCard

    cfg = load_config(tiny_config)
    record = {"seed": 0, "preset": "partial", "size": "full",
              "times": {"pretrain": {"wall_s": 12.5, "cpu_s": 3.0}, "sft": {"wall_s": 4.25, "cpu_s": 1.0}},
              "sweep": {}, "properties": [], "passed": True}
    for preset, story in (("partial", "pretraining corpus"), ("real", "SmolLM2-135M-Instruct as published")):
        bed = tmp_path / preset
        bed.mkdir()
        data = {**record, "preset": preset}
        if versioned:
            BedCard.new(**data).write(bed / "testbed.json")
        else:
            (bed / "testbed.json").write_text(json.dumps(data), encoding="utf-8")
        f = plan(parse_model_spec(f"f=foundation:pretrained={bed / 'foundation'}"), cfg)
        s = plan(parse_model_spec(f"s=sft:pretrained={bed / 'sft'}"), cfg)
        assert training_cost(f, 0.0) == {"wall_s": 12.5, "source": f"{bed / 'testbed.json'} times.pretrain"}
        assert training_cost(s, 0.0)["wall_s"] == 4.25
        assert training_data(f).startswith(story) and training_data(s).startswith("SOP-only")
    lone = plan(parse_model_spec(f"g=foundation:pretrained={tmp_path / 'elsewhere' / 'm'}"), cfg)
    assert training_cost(lone, 0.0)["wall_s"] is None and training_data(lone) == "given checkpoint"


def test_a_request_two_tasks_share_is_computed_once(tiny_config, tiny_data_dir, tmp_path):
    """The eval family re-asks rows of the others word for word: one forward answers both, with the same numbers."""
    import shutil

    from harness.evaluate import evaluate_models

    data = tmp_path / "data"
    shutil.copytree(Path(tiny_data_dir) / "eval", data)
    shutil.copy(data / "sop_strict.jsonl", data / "eval.jsonl")
    cfg = load_config(tiny_config, {"data.task_data_dir": str(data)})
    evaluate_models(cfg, ["foundation"], tmp_path / "run", tasks=["sop_strict", "eval"], progress=False,
                    log_samples=True)
    meta = json.loads((tmp_path / "run" / "foundation" / "meta.json").read_text())
    n = len((data / "eval.jsonl").read_text().splitlines())
    assert meta["time"]["requests"]["loglikelihood"] == {**meta["time"]["requests"]["loglikelihood"], "n": 2 * n,
                                                         "repeats": n}
    rows = {t: [json.loads(x)["resps"] for x in (tmp_path / "run" / "foundation" / "samples" / f"{t}.jsonl")
                .read_text().splitlines()] for t in ("sop_strict", "eval")}
    assert rows["sop_strict"] == rows["eval"]
