"""Routers: forced gates reproduce each expert, cached decoding equals uncached, posterior maths, layer-level on
Qwen3 and Llama, checkpoints (round trip, fingerprint refusal), the registry and the routing views."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import pytest
import torch
import torch.nn.functional as F

from sopmoe_models.experts import ExpertMismatchError, ExpertPair, load_experts
from sopmoe_models.fused import expert_logits
from sopmoe_models.routers import ROUTERS, build_router, load_router, read_card, register_router
from sopmoe_models.routers.posterior import PosteriorRouter, estimate_prior
from sopmoe_models.routers.token_level import TokenLevelRouter
from tests import tiny

TYPES = ["posterior", "token_level", "layer_level"]
TEXTS = ["请按照SOP流程处理客户退款申请:订单A12\n答:步骤1", "计算 12+7\n答:"]


def make(router_type, pair):
    kwargs = {} if router_type == "posterior" else {"hidden_size": 8}
    torch.manual_seed(0)
    router = build_router(router_type, pair, **kwargs)
    for p in router.parameters():  # non-trivial gates (the last layers start at zero = 0.5/0.5)
        torch.nn.init.normal_(p, std=0.5)
    return router


def batch(pair, texts=TEXTS):
    enc = pair.tokenizer(texts, padding=True, return_tensors="pt", padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def expert_logprobs(pair, which, ids, mask):
    """The expert alone: log-softmax over all its output rows (padded ones included)."""
    with torch.inference_mode():
        return F.log_softmax(expert_logits(pair.experts[which], ids, mask, pair.width)[0].float(), -1)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    """A tiny random Llama foundation and a perturbed sft sharing the test tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama_pair")
    tok = tiny.make_tokenizer()
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok) + 2, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    models = [LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)]
    with torch.no_grad():
        for p in models[1].parameters():
            p.add_(0.3 * torch.randn_like(p) * p.std().clamp(min=1e-3))
    for name, m in zip(("foundation", "sft"), models):
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return load_experts(root / "foundation", root / "sft", device="cpu")


@pytest.mark.parametrize("router_type", TYPES)
def test_forced_gates_reproduce_each_expert(tiny_pair, router_type):
    router = make(router_type, tiny_pair)
    ids, mask = batch(tiny_pair)
    real = mask.bool()
    for which, gate in enumerate([(1.0, 0.0), (0.0, 1.0)]):
        with torch.inference_mode():
            out = router.force_gate(gate)(ids, mask)
        ref = expert_logprobs(tiny_pair, which, ids, mask)
        assert (out.logprobs - ref)[real].abs().max() < 1e-5, (router_type, gate)
        assert torch.all(out.gates[..., which] == 1.0)


@pytest.mark.parametrize("router_type", TYPES)
def test_learned_gates_are_distributions_and_mix(tiny_pair, router_type):
    router = make(router_type, tiny_pair)
    ids, mask = batch(tiny_pair)
    with torch.inference_mode():
        out = router(ids, mask)
    n_layers = tiny_pair.foundation.config.num_hidden_layers
    shape = (*ids.shape, n_layers + 2, 2) if router_type == "layer_level" else (*ids.shape, 2)
    assert out.gates.shape == shape
    assert torch.allclose(out.gates.sum(-1), torch.ones(shape[:-1]), atol=1e-5)
    assert torch.allclose(out.logprobs.exp().sum(-1), torch.ones(ids.shape), atol=1e-4)
    ref = expert_logprobs(tiny_pair, 0, ids, mask)
    assert (out.logprobs - ref)[mask.bool()].abs().max() > 1e-3  # really a different model


@pytest.mark.parametrize("router_type", TYPES)
def test_cached_decoding_equals_uncached(tiny_pair, router_type):
    router = make(router_type, tiny_pair)
    ids, mask = batch(tiny_pair)
    with torch.inference_mode():
        full = router(ids, mask)
        start = 6
        out = router(ids[:, :start], mask[:, :start], use_cache=True)
        parts, gates = [out.logprobs], [out.gates]
        for t in range(start, ids.shape[1]):
            out = router(ids[:, t : t + 1], mask[:, : t + 1], state=out.state, use_cache=True)
            parts.append(out.logprobs)
            gates.append(out.gates)
    real = mask.bool()
    assert (torch.cat(parts, 1) - full.logprobs)[real].abs().max() < 1e-4
    assert (torch.cat(gates, 1) - full.gates)[real].abs().max() < 1e-5
    # generate() decodes incrementally: the same tokens as greedy re-running the whole prefix each step
    gen = router.generate(ids, mask, max_new_tokens=5, eos_token_id=[])
    seq, m = ids, mask
    with torch.inference_mode():
        for _ in range(5):
            nxt = router(seq, m).logprobs[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(gen.sequences, seq[:, ids.shape[1]:])
    assert gen.gates.shape[:2] == (2, 5)


def test_posterior_gates_follow_bayes_rule(tiny_pair):
    router = PosteriorRouter(tiny_pair)
    router.set_prior([0.25, 0.75])
    ids, mask = batch(tiny_pair, TEXTS[:1])
    with torch.inference_mode():
        out = router(ids, mask)
    lp = [expert_logprobs(tiny_pair, e, ids, mask) for e in (0, 1)]
    ll = [lp[e][0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1) for e in (0, 1)]  # log p_e(x_s | x_<s)
    for t in (0, 3, ids.shape[1] - 1):
        logit = torch.tensor([math.log(0.25) + ll[0][:t].sum(), math.log(0.75) + ll[1][:t].sum()])
        assert torch.allclose(out.gates[0, t], torch.softmax(logit, -1), atol=1e-5), t
    # the mixture uses the gates of the same position
    t = 4
    mix = torch.logsumexp(torch.log(out.gates[0, t])[:, None] + torch.stack([lp[0][0, t], lp[1][0, t]]), 0)
    assert torch.allclose(out.logprobs[0, t], mix, atol=1e-5)


@pytest.mark.parametrize("router_type", TYPES)
def test_left_padding_changes_nothing(tiny_pair, router_type):
    router = make(router_type, tiny_pair)  # posterior likelihoods and layer_level's context mean skip padding
    ids, mask = batch(tiny_pair)  # the second row is left-padded
    short = tiny_pair.tokenizer([TEXTS[1]], return_tensors="pt")
    with torch.inference_mode():
        padded = router(ids, mask)
        alone = router(short["input_ids"], short["attention_mask"])
    n = short["input_ids"].shape[1]
    assert torch.allclose(padded.gates[1, -n:], alone.gates[0], atol=1e-5)
    assert torch.allclose(padded.logprobs[1, -n:], alone.logprobs[0], atol=1e-4)


def test_estimate_prior_recovers_mixture_weights():
    # 30% of sequences are far likelier under expert 0, 70% under expert 1: the ML mixture weights are (0.3, 0.7)
    ll = torch.tensor([[-10.0, -60.0]] * 3 + [[-80.0, -12.0]] * 7)
    assert estimate_prior(ll).tolist() == pytest.approx([0.3, 0.7], abs=1e-4)


@pytest.mark.parametrize("router_type", ["layer_level", "token_level"])
def test_llama_experts(llama_pair, router_type):
    router = make(router_type, llama_pair)
    ids, mask = batch(llama_pair)
    with torch.inference_mode():
        forced = router.force_gate((0.0, 1.0))(ids, mask)
        router.force_gate(None)
        full = router(ids, mask)
        out = router(ids[:, :5], mask[:, :5], use_cache=True)
        parts = [out.logprobs]
        for t in range(5, ids.shape[1]):
            out = router(ids[:, t : t + 1], mask[:, : t + 1], state=out.state, use_cache=True)
            parts.append(out.logprobs)
    real = mask.bool()
    assert (forced.logprobs - expert_logprobs(llama_pair, 1, ids, mask))[real].abs().max() < 1e-5
    assert (torch.cat(parts, 1) - full.logprobs)[real].abs().max() < 1e-4


def test_layer_level_refuses_different_architectures(tiny_pair, llama_pair):
    mixed = ExpertPair(tiny_pair.foundation, llama_pair.sft, tiny_pair.tokenizer, tiny_pair.vocab_size)
    with pytest.raises(ExpertMismatchError, match="layer_level routing needs one architecture; got foundation qwen3"):
        build_router("layer_level", mixed)


def test_save_load_round_trip(tiny_pair, tmp_path):
    router = make("layer_level", tiny_pair)
    router.save_router(tmp_path, training={"note": "x"}, metrics={"eval": {"nll": 1.0}})
    card = read_card(tmp_path / "best_router.safetensors")
    assert card["type"] == "layer_level" and card["kwargs"] == {"hidden_size": 8, "context": True}
    assert card["experts"]["foundation"]["path"] == tiny_pair.foundation_path
    assert card["experts"]["sft"]["fingerprint"] == tiny_pair.fingerprints()["sft"]
    assert card["gate_names"][0] == "embed" and card["gate_names"][-1] == "head"
    loaded = load_router(tmp_path / "best_router.safetensors", tiny_pair)
    ids, mask = batch(tiny_pair)
    with torch.inference_mode():
        assert torch.equal(loaded(ids, mask).logprobs, router(ids, mask).logprobs)
    from_json = load_router(tmp_path, device="cpu")  # experts from router.json
    assert from_json.pair.sft_path == tiny_pair.sft_path
    with pytest.raises(FileNotFoundError, match="train one with"):
        load_router(tmp_path / "nope.safetensors", tiny_pair)


def test_loading_beside_other_experts_is_refused(tiny_pair, tmp_path):
    make("token_level", tiny_pair).save_router(tmp_path / "ck")
    other = tiny.make_pair(tmp_path / "other", seed=5)  # same architecture and tokenizer, other weights
    pair = load_experts(tiny_pair.foundation_path, other[1], device="cpu")
    want, have = tiny_pair.fingerprints()["sft"], pair.fingerprints()["sft"]
    with pytest.raises(ExpertMismatchError, match=f"sft expert of fingerprint {want}.*has fingerprint {have}"):
        load_router(tmp_path / "ck", pair)


def test_registry_adds_a_router_type_in_one_class(tiny_pair, tmp_path):
    @register_router("test_sft_only")
    class SftOnly(TokenLevelRouter):
        def gates_from_hidden(self, h_f, h_s):
            return self._forced(torch.tensor([0.0, 1.0]).expand(*h_f.shape[:-1], 2))

    try:
        router = build_router("test_sft_only", tiny_pair, hidden_size=4)
        router.save_router(tmp_path)
        assert json.loads((tmp_path / "router.json").read_text())["type"] == "test_sft_only"
        ids, mask = batch(tiny_pair)
        with torch.inference_mode():
            out = load_router(tmp_path, tiny_pair)(ids, mask)
        assert (out.logprobs - expert_logprobs(tiny_pair, 1, ids, mask))[mask.bool()].abs().max() < 1e-5
        with pytest.raises(ValueError, match="already registered"):
            register_router("test_sft_only")(TokenLevelRouter)
    finally:
        ROUTERS.pop("test_sft_only")
    with pytest.raises(ValueError, match="unknown router type 'nope'; registered: layer_level, posterior"):
        build_router("nope", tiny_pair)


class _Spans(HTMLParser):
    def __init__(self):
        super().__init__()
        self.spans, self._in = [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and a.get("class") == "tok":
            self.spans.append({"sft": float(a["data-sft"]), "style": a["style"], "text": ""})
            self._in = True

    def handle_endtag(self, tag):
        self._in = False

    def handle_data(self, data):
        if self._in:
            self.spans[-1]["text"] += data


def test_generate_cli_shows_stats_and_writes_the_html_view(tiny_pair, tiny_data_dir, tmp_path, monkeypatch, capsys):
    from harness.cli import main

    make("token_level", tiny_pair).save_router(tmp_path / "ck")
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "route.html"
    rc = main(["generate", "--model", "btm", "--router_checkpoint", "ck/best_router.safetensors", "--prompt",
               "计算 12+7 等于多少", "--max_new_tokens", "6", "--show_router_stats", "--route_html", str(page)])
    assert rc == 0
    assert "routing (token_level)" in capsys.readouterr().out
    parser = _Spans()
    parser.feed(page.read_text(encoding="utf-8"))
    assert len(parser.spans) == 6 and all(0.0 <= s["sft"] <= 1.0 for s in parser.spans)
    assert all("background:#" in s["style"] for s in parser.spans)
    assert len({s["sft"] for s in parser.spans}) > 1  # per-token gates, not one colour
    # --eval_file mode: every row carries its routing shares
    out = tmp_path / "gen.jsonl"
    rc = main(["generate", "--model", "btm", "--router_checkpoint", "ck", "--eval_file",
               str(tiny_data_dir / "eval" / "eval_all.jsonl"), "--output_file", str(out), "--max_new_tokens", "4"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["routing"]["n_tokens"] == 4 for r in rows)
    assert all(abs(r["routing"]["foundation"] + r["routing"]["sft"] - 1) < 1e-5 for r in rows)
    assert main(["generate", "--model", "ensemble", "--prompt", "x", "--show_router_stats",
                 "--foundation", tiny_pair.foundation_path, "--sft", tiny_pair.sft_path]) == 2
