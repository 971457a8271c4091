"""``sopmoe_ensemble`` through lm-eval: parity with ``--model hf`` on every sopmoe task, arguments, the real CLI.

Parity uses a pair whose lm_head is padded past the tokenizer *and whose padded rows carry real probability mass*
(:func:`tests.tiny.make_parity_pair`): a fused model that renormalised over the tokenizer's ids would differ from
``hf`` by nats per request there; under the parity rule (each expert over all its rows) it is exact, greedy
generations included. Its lm_head is also scaled up so greedy decoding has no near-ties.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import tiny

TASKS = ["sop_strict", "reasoning", "mixed", "eval", "sop_strict_gen", "reasoning_gen", "mixed_gen", "eval_gen"]
LL_TASKS = TASKS[:4]


@pytest.fixture(scope="module")
def parity_dirs(tmp_path_factory):
    return tiny.make_parity_pair(tmp_path_factory.mktemp("parity_pair"))


@pytest.fixture(scope="module")
def task_manager(tiny_data_dir, parity_dirs):
    from lm_eval.tasks import TaskManager

    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir

    register_all()
    # only our tasks: indexing lm-eval's ~15k built-in ones costs ~12 s (the full index: test_lm_eval_discovery)
    return TaskManager(include_path=tasks_dir(), include_defaults=False,
                       metadata={"data_dir": str(tiny_data_dir / "eval"), "tokenizer": parity_dirs["foundation"]})


@pytest.fixture(scope="module")
def runs(parity_dirs, task_manager):
    """lm-eval results with samples, computed once per (model, args)."""
    import lm_eval

    cache = {}

    def run(model: str, **model_args):
        key = (model, tuple(sorted(model_args.items())))
        if key not in cache:
            cache[key] = lm_eval.simple_evaluate(
                model=model, model_args={**model_args, "device": "cpu"}, tasks=TASKS, task_manager=task_manager,
                batch_size=2, log_samples=True,
            )
        return cache[key]

    return run


def test_the_parity_pair_puts_real_mass_on_padded_rows(parity_dirs, tiny_data_dir):
    """Renormalising over the tokenizer's ids (the old rule) would differ from ``hf`` by nats per request here."""
    from sopmoe_models.data import load_jsonl
    from sopmoe_models.experts import load_experts

    pair = load_experts(parity_dirs["foundation"], parity_dirs["sft"], device="cpu")
    assert pair.width == pair.vocab_size + 5
    ex = load_jsonl(tiny_data_dir / "eval" / "sop_strict.jsonl")[0]
    ids = pair.tokenizer(ex.input + "\n答:" + ex.output, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n = len(pair.tokenizer(ex.output, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        lp = pair.foundation(ids).logits[0, -n - 1 : -1].log_softmax(-1)  # the positions predicting the output
    padded_mass = lp[:, pair.vocab_size :].exp().sum(-1)
    assert -torch.log1p(-padded_mass).sum() > 1.0  # nats/request the truncated renormalisation would add


@pytest.mark.parametrize("mix", ["prob", "logit"])
@pytest.mark.parametrize("expert, weights", [("foundation", (1, 0)), ("sft", (0, 1))])
def test_parity_with_hf_on_every_sopmoe_task(runs, parity_dirs, expert, weights, mix):
    hf = runs("hf", pretrained=parity_dirs[expert])
    ens = runs("sopmoe_ensemble", foundation=parity_dirs["foundation"], sft=parity_dirs["sft"],
               foundation_weight=weights[0], sft_weight=weights[1], mix=mix)
    assert ens["config"]["sopmoe"]["foundation_weight"] == weights[0] and ens["config"]["sopmoe"]["mix"] == mix
    for task in TASKS:
        a = sorted(hf["samples"][task], key=lambda s: s["doc_id"])
        b = sorted(ens["samples"][task], key=lambda s: s["doc_id"])
        assert len(a) == len(b) > 0, task
        for sa, sb in zip(a, b):
            ra, rb = sa["resps"][0][0], sb["resps"][0][0]
            if task in LL_TASKS:
                assert abs(ra[0] - rb[0]) < 1e-4, (task, sa["doc_id"], ra, rb)
                assert ra[1] == rb[1], (task, sa["doc_id"])
            else:
                assert len(ra) > 0 and ra == rb, (task, sa["doc_id"], ra, rb)
        for metric, value in hf["results"][task].items():
            if metric != "alias" and "stderr" not in metric:
                assert ens["results"][task][metric] == pytest.approx(value, abs=1e-5), (task, metric)


def test_mixture_differs_from_both_experts(runs, parity_dirs):
    mixed = runs("sopmoe_ensemble", foundation=parity_dirs["foundation"], sft=parity_dirs["sft"],
                 foundation_weight=0.5, sft_weight=0.5, mix="prob")
    f = runs("hf", pretrained=parity_dirs["foundation"])
    s = runs("hf", pretrained=parity_dirs["sft"])
    for doc_m, doc_f, doc_s in zip(*(sorted(r["samples"]["reasoning"], key=lambda x: x["doc_id"]) for r in (mixed, f, s))):
        ll_m, ll_f, ll_s = (d["resps"][0][0][0] for d in (doc_m, doc_f, doc_s))
        # per token, log(0.5 p_f + 0.5 p_s) >= 0.5 log p_f + 0.5 log p_s (concavity), summed over the target
        assert ll_m >= 0.5 * (ll_f + ll_s) - 1e-4


def _adapter(**kw):
    from sopmoe_models.adapters.ensemble import EnsembleLMEval

    return EnsembleLMEval(**kw)


def test_config_file_with_explicit_overrides(parity_dirs, tmp_path):
    import yaml

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"foundation": {"path": parity_dirs["foundation"], "device": "cpu"},
                   "sft": {"path": parity_dirs["sft"], "device": "cpu"}},
        "ensemble": {"foundation_weight": 3.0, "sft_weight": 1.0, "mix": "logit"},
    }))
    lm = _adapter(config=str(cfg))
    assert lm.fused.weights == (0.75, 0.25) and lm.fused.mix == "logit"
    assert lm.fused.pair.foundation_path == parity_dirs["foundation"]
    lm = _adapter(config=str(cfg), foundation_weight=0, sft_weight=1, dtype="bfloat16", batch_size="auto")
    assert lm.fused.weights == (0.0, 1.0) and lm.fused.mix == "logit"  # mix still from the file
    assert lm.fused.pair.sft.dtype == torch.bfloat16 and lm.batch_size == "auto"


@pytest.mark.parametrize(
    "args, match",
    [({"foundation_wieght": 1}, "unknown model argument 'foundation_wieght'"),
     ({"pretrained": "x"}, "not pretrained"),
     ({"trust_remote_code": True}, "trust_remote_code"),
     ({"foundation_weight": -1}, "ensemble.foundation_weight"),
     ({"foundation_weight": 0, "sft_weight": 0}, "both 0"),
     ({"mix": "average"}, "ensemble.mix")],
)
def test_bad_model_args_are_clear_errors(parity_dirs, args, match):
    with pytest.raises(ValueError, match=match):
        _adapter(foundation=parity_dirs["foundation"], sft=parity_dirs["sft"], device="cpu", **args)


def test_only_an_explicit_config_is_read(parity_dirs, tmp_path, monkeypatch):
    """A configs/config.yaml in the working directory is the CLI's default, not the lm-eval model's."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yaml").write_text(
        f"models:\n  foundation: {{path: {parity_dirs['foundation']}}}\n  sft: {{path: {parity_dirs['sft']}}}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="models.foundation.path and models.sft.path"):
        _adapter(device="cpu")
    assert _adapter(config="configs/config.yaml", device="cpu").fused.pair.sft_path == parity_dirs["sft"]


def _requests(tok_texts):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in enumerate(tok_texts)]


PAIRS = [("计算 12+7 等于多少\n答:", "12+7=19"), ("您好\n答:", "您好,请问"), ("小明有3个苹果\n答:", "3+4=7个")]


def test_reuses_a_loaded_pair_and_auto_batch_size_gives_the_same_scores(tiny_pair):
    from sopmoe_models.ensemble import EnsembleLM

    fixed = _adapter(pair=tiny_pair, foundation_weight=0.7, sft_weight=0.3, batch_size=2)
    assert fixed.fused.pair is tiny_pair
    auto = _adapter(fused=EnsembleLM(tiny_pair, 0.7, 0.3), batch_size="auto", max_batch_size=4)
    a, b = fixed.loglikelihood(_requests(PAIRS)), auto.loglikelihood(_requests(PAIRS))
    for (ll_a, g_a), (ll_b, g_b) in zip(a, b):
        assert ll_a == pytest.approx(ll_b, abs=1e-4) and g_a == g_b
    with pytest.raises(ValueError, match="not both"):
        _adapter(fused=EnsembleLM(tiny_pair, 0.7, 0.3), foundation_weight=1)


def test_rolling_loglikelihood_equals_hf(parity_dirs):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    text = "请按照SOP流程处理客户退款申请:订单A12,价格30元\n答:步骤1:核实订单A12;步骤2:退款金额30元" * 3
    reqs = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    hf = HFLM(pretrained=parity_dirs["foundation"], device="cpu", max_length=64, batch_size=2)
    ens = _adapter(foundation=parity_dirs["foundation"], sft=parity_dirs["sft"], device="cpu",
                   foundation_weight=1, sft_weight=0, max_length=64, batch_size=2)
    assert ens.max_length == 64
    (a,), (b,) = hf.loglikelihood_rolling(reqs), ens.loglikelihood_rolling(reqs)
    assert a == pytest.approx(b, abs=1e-4)


def test_generation_kwargs(tiny_pair):
    lm = _adapter(pair=tiny_pair, foundation_weight=0.5, sft_weight=0.5)
    tok = tiny_pair.tokenizer
    ctx = torch.tensor([tok("您好\n答:", add_special_tokens=False)["input_ids"]])
    greedy = lm._model_generate(ctx, ctx.shape[1] + 6, stop=[tok.eos_token], do_sample=False, temperature=0.7)
    assert greedy.shape == (1, ctx.shape[1] + 6) and torch.equal(greedy[:, : ctx.shape[1]], ctx)
    direct = lm.fused.generate(ctx, max_new_tokens=6).sequences
    assert torch.equal(greedy[:, ctx.shape[1]:], direct)
    sampled = lm._model_generate(ctx, ctx.shape[1] + 6, stop=[], do_sample=True, temperature=1.0, seed=3, top_k=0)
    assert sampled.shape == greedy.shape
    with pytest.raises(ValueError, match="num_beams=4 is not supported"):
        lm._model_generate(ctx, ctx.shape[1] + 6, stop=[], do_sample=False, num_beams=4)


def test_model_info_records_the_fusion(tiny_pair):
    info = _adapter(pair=tiny_pair, foundation_weight=0.25, sft_weight=0.75, mix="logit").get_model_info()
    assert info["sopmoe"]["method"] == "ensemble" and info["sopmoe"]["mix"] == "logit"
    assert info["sopmoe"]["sft_weight"] == 0.75
    assert len(info["sopmoe"]["experts"]["foundation"]["fingerprint"]) == 16
    n_f = sum(p.numel() for p in tiny_pair.foundation.parameters())
    assert info["model_num_parameters"] == 2 * n_f


@pytest.mark.slow
def test_real_lm_eval_cli_from_another_directory(parity_dirs, tiny_data_dir, runs, tmp_path):
    """``lm_eval --model sopmoe_ensemble`` as a user types it, outside the repo; results equal ``hf`` (weights 1,0)."""
    lm_eval_bin = Path(sys.executable).parent / "lm_eval"
    out = tmp_path / "out"
    args = (f"foundation={parity_dirs['foundation']},sft={parity_dirs['sft']},"
            "foundation_weight=1,sft_weight=0,mix=logit")
    # no --device: lm-eval then passes its default cuda:0, which must fall back on a machine without it (as hf does)
    cmd = [str(lm_eval_bin), "--model", "sopmoe_ensemble", "--model_args", args, "--tasks", "sop_strict,eval_gen",
           "--batch_size", "2", "--output_path", str(out), "--log_samples",
           "--metadata", json.dumps({"data_dir": str(tiny_data_dir / "eval")})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "sopmoe_ensemble"
    assert results["config"]["sopmoe"]["mix"] == "logit"
    hf = runs("hf", pretrained=parity_dirs["foundation"])
    assert results["results"]["sop_strict"]["acc,none"] == hf["results"]["sop_strict"]["acc,none"]
    assert results["results"]["sop_strict"]["perplexity,none"] == pytest.approx(
        hf["results"]["sop_strict"]["perplexity,none"], rel=1e-4)
    (samples_file,) = out.rglob("samples_sop_strict_*.jsonl")
    cli = {json.loads(line)["doc_id"]: json.loads(line) for line in samples_file.read_text().splitlines()}
    for s in hf["samples"]["sop_strict"]:
        assert abs(float(cli[s["doc_id"]]["resps"][0][0][0]) - s["resps"][0][0][0]) < 1e-4
    (gen_file,) = out.rglob("samples_eval_gen_*.jsonl")
    gen = [json.loads(line) for line in gen_file.read_text().splitlines()]
    assert [g["resps"][0][0] for g in gen] == [s["resps"][0][0] for s in hf["samples"]["eval_gen"]]


def test_generation_stops_at_every_eos_of_the_generation_config(tiny_pair_dirs):
    """Chat checkpoints list several EOS ids (e.g. <|im_end|> and <|endoftext|>); HF generate stops at each."""
    from sopmoe_models.experts import load_experts

    pair = load_experts(*tiny_pair_dirs, device="cpu")
    tok = pair.tokenizer
    other = tok.convert_tokens_to_ids("<unk>")
    pair.foundation.generation_config.eos_token_id = [tok.eos_token_id, other, pair.vocab_size + 1]
    lm = _adapter(pair=pair, foundation_weight=1, sft_weight=0)
    assert lm._eos_ids() == [tok.eos_token_id, other]  # a padded row is not a token


def test_device_placement(parity_dirs, tmp_path):
    """lm-eval's CLI passes device=cuda:0 by default; on a machine without it the experts load where the config
    says (auto), as HFLM falls back; and --device does not undo a config's one-expert-per-device layout."""
    from sopmoe_models.adapters.base import FusedHFLM, device_available

    if not torch.cuda.is_available():
        lm = _adapter(foundation=parity_dirs["foundation"], sft=parity_dirs["sft"], device="cuda:0")
        assert lm.fused.device.type == "cpu" and lm.device.type == "cpu"
    assert not device_available(f"cuda:{torch.cuda.device_count()}") and device_available("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        device_available("gpu0")
    cfg = tmp_path / "split.yaml"
    cfg.write_text("models:\n  foundation: {device: cpu}\n  sft: {device: 'meta'}\n")
    assert FusedHFLM._placement_args(str(cfg), {"device": "cpu"}) == {"device": "cpu", "sft_device": "meta"}
    assert FusedHFLM._placement_args(str(cfg), {"device": "cpu", "sft_device": "cpu"})["sft_device"] == "cpu"
    assert FusedHFLM._placement_args(None, {"device": "cpu"}) == {"device": "cpu"}
