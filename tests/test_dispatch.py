"""The `dispatch` baseline (issue 11): the classifier, its checkpoint, the CLI, and the lm-eval adapter that scores
each request with exactly one expert (equal to `--model hf` on that expert)."""

from __future__ import annotations

import json

import pytest
import torch

from harness.config import load_config
from sopmoe_models.dispatch import Dispatcher, load_dispatcher, prompt_features, read_card
from training.dispatch_trainer import fit_logistic, routed_nll, train_dispatch


def cfg_for(tiny_pair, tiny_data_dir):
    return load_config(None, {
        "models.foundation.path": tiny_pair.foundation_path, "models.sft.path": tiny_pair.sft_path,
        "models.foundation.device": "cpu", "models.sft.device": "cpu",
        "data.train_file": str(tiny_data_dir / "train" / "train.jsonl"),
        "data.eval_file": str(tiny_data_dir / "eval" / "eval_all.jsonl"),
        "data.train_kinds": ["sop_strict", "reasoning", "eval"],
    }, use_default=False)


@pytest.fixture(scope="module")
def classifier(tiny_pair, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dispatch")
    card = train_dispatch(cfg_for(tiny_pair, tiny_data_dir), tiny_pair, out, batch_size=4)
    return out, card


def test_logistic_fit_separates_and_routed_nll_picks_the_chosen_expert():
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    w, b = fit_logistic(x, torch.tensor([0.0, 0.0, 1.0, 1.0]), l2=1e-3)
    assert ((x @ w + b > 0).long().tolist()) == [0, 0, 1, 1]
    nll = torch.tensor([[1.0, 3.0], [2.0, 0.5]])
    assert routed_nll(torch.tensor([0, 1]), nll) == pytest.approx(0.75)
    assert routed_nll(torch.tensor([1, 0]), nll) == pytest.approx(2.5)


def test_training_writes_a_card_with_fingerprints_and_no_composition(classifier, tiny_pair):
    out, card = classifier
    assert (out / "dispatch.safetensors").is_file() and read_card(out)["type"] == "dispatch"
    assert card["training"]["train_kinds"] == ["sop_strict", "reasoning", "eval"]
    assert card["training"]["n_train"] == 5  # the tiny train file's 6 rows less its one `mixed` row
    assert card["training"]["chosen_l2"] in [g["l2"] for g in card["training"]["l2_grid"]]
    assert card["experts"]["sft"]["fingerprint"] == tiny_pair.fingerprints()["sft"]
    d = load_dispatcher(out, tiny_pair)
    assert set(d.choose(torch.zeros(2, d.weight.numel()))) <= {0, 1}


def test_nan_weights_and_other_experts_are_refused(classifier, tiny_pair, tmp_path):
    from safetensors.torch import save_file

    from sopmoe_models.experts import ExpertMismatchError, ExpertPair

    out, _ = classifier
    with pytest.raises(ValueError, match="NaN"):
        Dispatcher(torch.tensor([float("nan")]), torch.tensor(0.0), torch.zeros(1), torch.ones(1))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dispatch.json").write_text((out / "dispatch.json").read_text())
    save_file({"weight": torch.tensor([float("nan")]), "bias": torch.tensor(0.0), "mean": torch.zeros(1),
               "std": torch.ones(1)}, str(bad / "dispatch.safetensors"))
    with pytest.raises(ValueError, match="NaN"):
        load_dispatcher(bad)
    swapped = ExpertPair(tiny_pair.sft, tiny_pair.foundation, tiny_pair.tokenizer, tiny_pair.vocab_size,
                         tiny_pair.sft_path, tiny_pair.foundation_path)
    with pytest.raises(ExpertMismatchError, match="fingerprint"):
        load_dispatcher(out, swapped)


def test_adapter_scores_each_request_with_its_expert_exactly(classifier, tiny_pair, tiny_pair_dirs):
    """Every loglikelihood equals `hf` on the expert the classifier chose for that request."""
    from lm_eval.models.huggingface import HFLM

    from sopmoe_models.adapters.dispatch import DispatchLMEval

    out, _ = classifier
    lm = DispatchLMEval(classifier=str(out), device="cpu", dtype="float32", batch_size=2)
    reqs = [(("请按照SOP流程处理客户投诉:订单B7\n答:", "步骤1:记录投诉B7"), None, None),
            (("计算 12+7 等于多少\n答:", "12+7=19"), None, None),
            (("客服问候语是什么\n答:", "您好"), None, None)]
    tok = tiny_pair.tokenizer
    reqs = [((c, x), tok(c, add_special_tokens=False)["input_ids"], tok(x, add_special_tokens=False)["input_ids"])
            for (c, x), _, _ in reqs]
    got = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    choice = lm.dispatcher.choose(torch.cat([prompt_features(tiny_pair.foundation, [r[1]], 0) for r in reqs]))
    hf = {which: HFLM(pretrained=str(tiny_pair_dirs[which]), device="cpu", dtype="float32", batch_size=2)
          for which in set(choice)}
    for r, (ll, greedy), which in zip(reqs, got, choice, strict=True):
        ref_ll, ref_greedy = hf[which]._loglikelihood_tokens([r], disable_tqdm=True)[0]
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    info = lm.get_model_info()["sopmoe"]
    assert sum(info["requests_sent"].values()) == 3 and info["method"] == "dispatch"


def test_cli_and_evaluate_label(tiny_pair, tiny_data_dir, tmp_path):
    from harness.cli import main
    from harness.model_specs import parse_model_spec, plan

    cfg = cfg_for(tiny_pair, tiny_data_dir)
    yml = tmp_path / "c.yaml"
    cfg.save(yml)
    assert main(["train-dispatch", "--config", str(yml), "--output_dir", str(tmp_path / "d"), "--batch_size", "2"]) == 0
    card = json.loads((tmp_path / "d" / "dispatch.json").read_text())
    assert card["metrics"]["dev_routed_nll"] >= card["metrics"]["dev_oracle_nll"] - 1e-9
    p = plan(parse_model_spec(f"dispatch=dispatch:classifier={tmp_path / 'd'}"), cfg)
    assert p.problem is None and p.lm_eval_model == "sopmoe_dispatch" and p.forwards_per_token == 1
    assert "classifier is not set" in plan(parse_model_spec("dispatch"), cfg).problem
    assert "no dispatch classifier" in plan(parse_model_spec(f"d=dispatch:classifier={tmp_path}"), cfg).problem


def test_routing_statistics_per_task(classifier):
    from types import SimpleNamespace

    from sopmoe_models.adapters.dispatch import DispatchLMEval

    out, _ = classifier
    lm = DispatchLMEval(classifier=str(out), device="cpu", dtype="float32", batch_size=2)
    reqs = [SimpleNamespace(args=("计算 12+7 等于多少\n答:", {"until": ["\n"], "max_gen_toks": 4}), task_name="reasoning_gen"),
            SimpleNamespace(args=("请按照SOP流程处理客户投诉:订单B7\n答:", {"until": ["\n"], "max_gen_toks": 4}),
                            task_name="sop_strict_gen")]
    lm._split = lambda items, contexts, run: [""] * len(lm._choose(contexts))  # route only, generate nothing
    lm.generate_until(reqs)
    stats = lm.routing_statistics()
    assert set(stats["tasks"]) == {"reasoning_gen", "sop_strict_gen"}
    assert all(t["foundation"] + t["sft"] == pytest.approx(1) and t["requests"] == 1 for t in stats["tasks"].values())


def test_adapter_places_its_experts_through_the_factory(classifier, tiny_pair, tmp_path, caplog):
    """The dispatch adapter decides no placement default itself: its model_args map onto the config as every sopmoe
    adapter's do (dtype= both experts, sft_dtype= the sft; a device this machine lacks falls back to the config's,
    with a warning) and the factory loads the pair, a role not given taking dispatch.json's path."""
    import logging

    from sopmoe_models.adapters.dispatch import DispatchLMEval
    from sopmoe_models.factory import build_dispatch, dispatch_experts_config

    out, _ = classifier
    bare = load_config(None, {}, use_default=False)
    cfg = dispatch_experts_config(bare, out)
    assert (cfg.models.foundation.path, cfg.models.sft.path) == (tiny_pair.foundation_path, tiny_pair.sft_path)
    pinned = dispatch_experts_config(bare.model_copy(update={"models": cfg.models.model_copy(update={
        "sft": cfg.models.sft.model_copy(update={"path": "/elsewhere"})})}), out)
    assert pinned.models.sft.path == "/elsewhere"  # a path the config sets is kept
    dispatcher, pair = build_dispatch(cfg, out, tiny_pair)
    assert pair is tiny_pair and isinstance(dispatcher, Dispatcher)
    lost = "cuda:7" if not torch.cuda.is_available() else "cuda:999"
    with caplog.at_level(logging.WARNING):
        lm = DispatchLMEval(classifier=str(out), device=lost, dtype="float32", sft_dtype="bfloat16", batch_size=2)
    assert f"device={lost} is not available" in caplog.text
    assert lm.pair.foundation.dtype == torch.float32 and lm.pair.sft.dtype == torch.bfloat16
    assert lm.pair.foundation_path == tiny_pair.foundation_path and lm.pair.sft_path == tiny_pair.sft_path
    with pytest.raises(ValueError, match="unknown model argument 'router'"):
        DispatchLMEval(classifier=str(out), router="x")
