"""KV-cached generation of fused models: equal to uncached and to HF, incremental, batched, stops, sampling."""

from __future__ import annotations

import pytest
import torch

from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.fused import FusedLM, FusedOutput, cut_at_stop

PROMPTS = ["计算 12+7 等于多少\n答:", "您好\n答:", "请按照SOP流程处理客户投诉:订单B7\n答:"]


def _enc(pair, texts):
    tok = pair.tokenizer
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def _uncached_greedy(model: FusedLM, ids, mask, n):
    """Reference: re-run the whole sequence every step (no cache), argmax of the last position."""
    out = []
    for _ in range(n):
        nxt = model.logprobs(ids, mask)[:, -1].argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None])], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("mix", ["prob", "logit"])
def test_cached_greedy_equals_uncached(tiny_pair, mix):
    ens = EnsembleLM(tiny_pair, 0.6, 0.4, mix)
    ids, mask = _enc(tiny_pair, PROMPTS)
    got = ens.generate(ids, mask, max_new_tokens=24, eos_token_id=[])
    assert got.sequences.shape == (3, 24)
    assert torch.equal(got.sequences, _uncached_greedy(ens, ids, mask, 24))


@pytest.mark.parametrize("weights, expert", [((1, 0), "foundation"), ((0, 1), "sft")])
def test_single_expert_equals_hf_generate(tiny_pair, weights, expert):
    """Plain HF generate, nothing suppressed: the fused model at a pure weight picks over every row as HF does."""
    ids, mask = _enc(tiny_pair, PROMPTS)
    model = getattr(tiny_pair, expert)
    assert model.lm_head.weight.shape[0] > tiny_pair.vocab_size  # the fixture's lm_head is padded
    with torch.no_grad():
        hf = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False,
            pad_token_id=tiny_pair.tokenizer.pad_token_id,
        )[:, ids.shape[1]:]
    ours = EnsembleLM(tiny_pair, *weights).generate(ids, mask, max_new_tokens=20, eos_token_id=[]).sequences
    assert torch.equal(ours, hf)


def test_decoding_is_incremental(tiny_pair):
    """Each expert sees the prompt once, then exactly one new token per step (the cache holds the rest)."""
    seen = {"foundation": [], "sft": []}

    def hook(name):
        def fn(module, args, kwargs):
            seen[name].append(kwargs["input_ids"].shape[1])
        return fn

    hooks = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in zip(seen, tiny_pair.experts)]
    try:
        ids, mask = _enc(tiny_pair, PROMPTS)
        EnsembleLM(tiny_pair, 0.5, 0.5).generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    finally:
        for h in hooks:
            h.remove()
    for name in seen:
        assert seen[name] == [ids.shape[1]] + [1] * 11, name


def test_left_padded_batch_equals_one_by_one(tiny_pair):
    ens = EnsembleLM(tiny_pair, 0.5, 0.5, "prob")
    ids, mask = _enc(tiny_pair, PROMPTS)
    assert not bool(mask.all())  # the prompts differ in length: the batch really is padded
    batch = ens.generate(ids, mask, max_new_tokens=16, eos_token_id=[])
    for i, prompt in enumerate(PROMPTS):
        one = ens.generate(*_enc(tiny_pair, [prompt]), max_new_tokens=16, eos_token_id=[])
        assert torch.equal(batch.sequences[i], one.sequences[0]), prompt
        assert batch.texts[i] == one.texts[0]


def test_right_padding_is_refused(tiny_pair):
    tok = tiny_pair.tokenizer
    tok.padding_side = "right"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="left padding"):
        EnsembleLM(tiny_pair, 0.5, 0.5).generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=2)


class Scripted(FusedLM):
    """A fused model that emits a fixed token per row and step (the experts are not run): tests control flow."""

    name = "scripted"

    def __init__(self, pair, script: list[list[int]]):
        super().__init__(pair)
        self.script = script

    def forward(self, input_ids, attention_mask=None, state=None, use_cache=False, last_only=False):
        step = state or 0
        B, T = input_ids.shape
        lp = torch.full((B, T, self.vocab_size), -30.0)
        for b in range(B):
            lp[b, -1, self.script[b][min(step, len(self.script[b]) - 1)]] = 0.0
        return FusedOutput(lp.log_softmax(-1), step + 1 if use_cache else None)


def _tokens(pair, text):
    return pair.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_stop_strings_and_eos_stop_each_row(tiny_pair):
    tok = tiny_pair.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    script = [_tokens(tiny_pair, "ab\n\ncd"), _tokens(tiny_pair, "xy") + [eos] + _tokens(tiny_pair, "zz"),
              _tokens(tiny_pair, "hello world")]
    ids, mask = _enc(tiny_pair, ["q1\n答:", "q2\n答:", "q3\n答:"])
    res = Scripted(tiny_pair, script).generate(ids, mask, max_new_tokens=12, stop=["\n\n", "wor"])
    assert res.texts == ["ab", "xy", "hello "]
    seqs = res.sequences.tolist()
    assert seqs[0][:4] == _tokens(tiny_pair, "ab\n\n") and set(seqs[0][4:]) == {pad}  # stopped, then padding
    assert seqs[1][:3] == _tokens(tiny_pair, "xy") + [eos] and set(seqs[1][3:]) == {pad}
    assert res.sequences.shape[1] == 9  # the loop ends when the last row completes "wor"
    res = Scripted(tiny_pair, script).generate(ids, mask, max_new_tokens=8, stop=["\n\n", "wor"])
    assert res.texts[2] == "hello wo" and res.sequences.shape[1] == 8  # max_new_tokens ends it first
    # all rows done -> the loop ends early
    res = Scripted(tiny_pair, script[:2]).generate(ids[:2], mask[:2], max_new_tokens=50, stop=["\n\n"])
    assert res.sequences.shape[1] == 4


def test_stop_string_does_not_match_across_the_prompt(tiny_pair):
    """A prompt ending in "\\n" followed by a generated "\\n" is not the stop string "\\n\\n" (lm-eval agrees)."""
    ids, mask = _enc(tiny_pair, ["问题\n"])
    res = Scripted(tiny_pair, [_tokens(tiny_pair, "\nabc\n\nz")]).generate(ids, mask, max_new_tokens=10, stop=["\n\n"])
    assert res.texts == ["\nabc"]


def test_sampling_is_reproducible_with_a_seed(tiny_pair):
    ens = EnsembleLM(tiny_pair, 0.5, 0.5)
    ids, mask = _enc(tiny_pair, PROMPTS)
    kw = dict(max_new_tokens=24, temperature=1.5, eos_token_id=[])
    a = ens.generate(ids, mask, seed=7, **kw).sequences
    b = ens.generate(ids, mask, seed=7, **kw).sequences
    c = ens.generate(ids, mask, seed=8, **kw).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, ens.generate(ids, mask, max_new_tokens=24, eos_token_id=[]).sequences)


def test_tiny_top_p_is_greedy(tiny_pair):
    ens = EnsembleLM(tiny_pair, 0.5, 0.5, "logit")
    ids, mask = _enc(tiny_pair, PROMPTS)
    greedy = ens.generate(ids, mask, max_new_tokens=16, eos_token_id=[]).sequences
    nucleus = ens.generate(ids, mask, max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=0, eos_token_id=[])
    assert torch.equal(nucleus.sequences, greedy)


def test_cut_at_stop():
    assert cut_at_stop("a\n\nb", ["\n\n"]) == "a"
    assert cut_at_stop("abcdef", ["de", "bc"]) == "a"
    assert cut_at_stop("abc", []) == "abc" and cut_at_stop("abc", [""]) == "abc"


def test_stop_strings_with_a_vocabulary_without_latin_letters(tiny_pair):
    """transformers' StopStringCriteria raises on such a vocabulary (the test bed's); ours must not."""
    from dataclasses import replace

    from training.testbed import build_tokenizer

    tok = build_tokenizer(iter(["请按照流程处理退款:步骤1;步骤2\n\n答:12+7=19"]), max_length=64)
    assert "a" not in tok.get_vocab()
    pair = replace(tiny_pair, tokenizer=tok, vocab_size=len(tok))
    ids = torch.tensor([tok("退款\n答:", add_special_tokens=False)["input_ids"]])
    script = [tok("步骤1;\n\n步骤2", add_special_tokens=False)["input_ids"]]
    res = Scripted(pair, script).generate(ids, max_new_tokens=20, stop=["\n\n"])
    assert res.texts == ["步骤1;"] and res.sequences.shape[1] == 6  # 步 骤 1 ; \n \n


# --- the parity rule in generation: padded lm_head rows ------------------------------------------------------------

FUSED_KINDS = ["prob", "logit", "posterior", "token_level", "layer_level"]


def _fused(pair, kind, weights):
    """An ensemble at ``weights``, or a router of ``kind`` with random parameters and gates forced to ``weights``
    (None: its own learned gates)."""
    from sopmoe_models.routers import build_router

    if kind in ("prob", "logit"):
        return EnsembleLM(pair, *(weights or (0.5, 0.5)), kind)
    torch.manual_seed(0)
    router = build_router(kind, pair, **({} if kind == "posterior" else {"hidden_size": 8}))
    for p in router.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return router.force_gate(weights)


def _hf_greedy(pair, model, ids, mask, n):
    """Plain HF greedy decoding, up to ``n`` tokens, stopping at EOS (then padding) as ours does."""
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=pair.tokenizer.pad_token_id)
    return out[:, ids.shape[1]:]


@pytest.fixture(scope="module")
def padded_pair(tmp_path_factory):
    """Independent experts whose padded rows carry real mass: each alone generates padded ids now and then."""
    from sopmoe_models.experts import load_experts
    from tests import tiny

    dirs = tiny.make_parity_pair(tmp_path_factory.mktemp("padded_generation"))
    return load_experts(dirs["foundation"], dirs["sft"], device="cpu")


@pytest.mark.parametrize("expert", [0, 1])
@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_pure_weight_generates_what_the_expert_alone_generates_padded_ids_included(padded_pair, kind, expert):
    ids, mask = _enc(padded_pair, PROMPTS)
    hf = _hf_greedy(padded_pair, padded_pair.experts[expert], ids, mask, 16)
    assert (hf >= padded_pair.vocab_size).any()  # the expert alone does pick padded rows on this pair
    weights = (1.0, 0.0) if expert == 0 else (0.0, 1.0)
    ours = _fused(padded_pair, kind, weights).generate(ids, mask, max_new_tokens=16).sequences
    assert torch.equal(ours, hf)


def test_padded_ids_never_appear_where_no_expert_gives_them_mass(tmp_path):
    """Rows a checkpoint never trained (logit 0 against sharp real logits, like Qwen3's padding) are generated by no
    fused model at any weight, as by neither expert alone: nothing is masked, nothing new appears."""
    from sopmoe_models.experts import load_experts
    from tests import tiny

    dirs = tiny.make_parity_pair(tmp_path, padded_scale=0.0)
    pair = load_experts(dirs["foundation"], dirs["sft"], device="cpu")
    ids, mask = _enc(pair, PROMPTS)
    V = pair.vocab_size
    for model in pair.experts:
        assert not (_hf_greedy(pair, model, ids, mask, 16) >= V).any()
    for kind in FUSED_KINDS:
        for weights in [None, (0.3, 0.7)] if kind not in ("prob", "logit") else [(0.5, 0.5), (0.8, 0.2)]:
            out = _fused(pair, kind, weights).generate(ids, mask, max_new_tokens=16, eos_token_id=[]).sequences
            assert not (out >= V).any(), (kind, weights)
