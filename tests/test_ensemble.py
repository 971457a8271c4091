"""Ensemble maths on hand-made tensors, the fused forward on the tiny pair, and what the pair loader refuses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sopmoe_models.ensemble import EnsembleLM, mix_logits
from sopmoe_models.experts import ExpertMismatchError, check_same_tokenizer, load_experts
from sopmoe_models.fused import check_weights
from tests import tiny


def _hand_made():
    z_f = torch.tensor([[[2.0, 0.0, -1.0, 0.5]], [[0.0, 0.0, 0.0, 0.0]]])  # (B=2, T=1, V=4)
    z_s = torch.tensor([[[-1.0, 3.0, 0.0, 0.0]], [[1.0, -2.0, 0.5, 4.0]]])
    return z_f, z_s


def test_prob_mix_is_the_mixture_of_probabilities():
    z_f, z_s = _hand_made()
    for w in (0.0, 0.3, 0.5, 1.0):
        expected = torch.log(w * z_f.softmax(-1) + (1 - w) * z_s.softmax(-1))
        got = mix_logits([z_f, z_s], (w, 1 - w), "prob")
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.logsumexp(-1), torch.zeros(2, 1), atol=1e-6, rtol=0)


def test_prob_mix_by_hand():
    # one row worked out on paper: p_f = softmax([0, 0]) = [.5, .5], p_s = softmax([ln 3, 0]) = [.75, .25]
    z_f, z_s = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[math.log(3.0), 0.0]]])
    got = mix_logits([z_f, z_s], (0.5, 0.5), "prob").exp()
    torch.testing.assert_close(got, torch.tensor([[[0.625, 0.375]]]))


def test_logit_mix_is_a_product_of_experts():
    z_f, z_s = _hand_made()
    got = mix_logits([z_f, z_s], (0.25, 0.75), "logit")
    torch.testing.assert_close(got, F.log_softmax(0.25 * z_f + 0.75 * z_s, -1))
    # a product of experts: p ∝ p_f^w_f · p_s^w_s (the per-expert normalisers cancel)
    poe = (0.25 * z_f.log_softmax(-1) + 0.75 * z_s.log_softmax(-1)).log_softmax(-1)
    torch.testing.assert_close(got, poe, atol=1e-6, rtol=0)
    # and it is not the probability mixture
    assert not torch.allclose(got, mix_logits([z_f, z_s], (0.25, 0.75), "prob"), atol=1e-3)


def test_mix_limits_and_invariances():
    z_f, z_s = _hand_made()
    for mix in ("prob", "logit"):
        torch.testing.assert_close(mix_logits([z_f, None], (1.0, 0.0), mix), z_f.log_softmax(-1))
        torch.testing.assert_close(mix_logits([None, z_s], (0.0, 1.0), mix), z_s.log_softmax(-1))
        torch.testing.assert_close(mix_logits([z_f, z_f + 7.0], (0.4, 0.6), mix), z_f.log_softmax(-1))
    with pytest.raises(ValueError, match="mix"):
        mix_logits([z_f, z_s], (0.5, 0.5), "geometric")


@pytest.mark.parametrize(
    "w_f, w_s, match",
    [(-0.1, 1.0, "foundation_weight"), (1.0, -2, "sft_weight"), (0.0, 0.0, "both 0"), (float("nan"), 1.0, "finite"),
     (1.0, float("inf"), "finite"), ("0.5", 0.5, "number")],
)
def test_bad_weights_are_refused(tiny_pair, w_f, w_s, match):
    with pytest.raises(ValueError, match=match):
        check_weights(w_f, w_s)
    with pytest.raises(ValueError, match=match):
        EnsembleLM(tiny_pair, w_f, w_s)


def test_weights_are_normalised_and_mix_checked(tiny_pair):
    assert EnsembleLM(tiny_pair, 3, 1).weights == (0.75, 0.25)
    with pytest.raises(ValueError, match="mix"):
        EnsembleLM(tiny_pair, 0.5, 0.5, mix="average")


def _ids(pair, texts):
    tok = pair.tokenizer
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def test_single_expert_is_exactly_its_own_distribution_over_all_rows(tiny_pair):
    """The parity rule: each expert normalised over all its rows (padded ones included), as the expert alone does."""
    ids, mask = _ids(tiny_pair, ["计算 12+7 等于多少\n答:12+7=19"])
    V, W = tiny_pair.vocab_size, tiny_pair.width
    assert W == tiny_pair.foundation.lm_head.weight.shape[0] == V + 3  # the fixture pads lm_head past the tokenizer
    with torch.no_grad():
        z_f = tiny_pair.foundation(ids).logits
        z_s = tiny_pair.sft(ids).logits
    for mix in ("prob", "logit"):
        got_f = EnsembleLM(tiny_pair, 1, 0, mix).logprobs(ids, mask)
        got_s = EnsembleLM(tiny_pair, 0, 1, mix).logprobs(ids, mask)
        assert got_f.shape == (1, ids.shape[1], W) and got_f.dtype == torch.float32
        assert torch.equal(got_f, z_f.log_softmax(-1)) and torch.equal(got_s, z_s.log_softmax(-1))  # bit for bit
    half = EnsembleLM(tiny_pair, 0.5, 0.5, "prob").logprobs(ids, mask)
    expected = torch.log(0.5 * z_f.softmax(-1) + 0.5 * z_s.softmax(-1))
    torch.testing.assert_close(half, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(half.exp().sum(-1), torch.ones(half.shape[:2]))  # one distribution over all W rows
    prod = EnsembleLM(tiny_pair, 0.25, 0.75, "logit").logprobs(ids, mask)
    torch.testing.assert_close(prod, (0.25 * z_f + 0.75 * z_s).log_softmax(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mix", ["prob", "logit"])
def test_chunked_mixing_equals_the_whole_tensor_computation(tiny_pair, mix, monkeypatch):
    """Mixing over time chunks (bounded memory at a 152k vocabulary) gives exactly the unchunked values."""
    import sopmoe_models.fused as fused

    ids, mask = _ids(tiny_pair, ["计算 12+7 等于多少\n答:12+7=19", "您好\n答:"])
    whole = EnsembleLM(tiny_pair, 0.3, 0.7, mix).logprobs(ids, mask)
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 3 * tiny_pair.width)  # 1 position per chunk at batch 2
    assert len(fused.time_chunks(whole)) == ids.shape[1]
    torch.testing.assert_close(EnsembleLM(tiny_pair, 0.3, 0.7, mix).logprobs(ids, mask), whole, atol=0, rtol=0)


def test_an_expert_with_weight_zero_is_not_run(tiny_pair):
    calls = {"foundation": 0, "sft": 0}
    hooks = [
        m.register_forward_pre_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
        for n, m in zip(("foundation", "sft"), tiny_pair.experts)
    ]
    try:
        ids, mask = _ids(tiny_pair, ["您好"])
        EnsembleLM(tiny_pair, 1, 0).logprobs(ids, mask)
        assert calls == {"foundation": 1, "sft": 0}
        EnsembleLM(tiny_pair, 0.5, 0.5).logprobs(ids, mask)
        assert calls == {"foundation": 2, "sft": 1}
    finally:
        for h in hooks:
            h.remove()


def test_left_padding_does_not_change_scores(tiny_pair):
    ens = EnsembleLM(tiny_pair, 0.6, 0.4, "prob")
    ids, mask = _ids(tiny_pair, ["计算 12+7 等于多少\n答:", "您好\n答:"])
    alone_ids, alone_mask = _ids(tiny_pair, ["您好\n答:"])
    batch = ens.logprobs(ids, mask)[1, -alone_ids.shape[1]:]
    torch.testing.assert_close(batch, ens.logprobs(alone_ids, alone_mask)[0], atol=1e-5, rtol=0)


def test_bfloat16_experts_give_float32_logprobs(tiny_pair_dirs):
    pair = load_experts(*tiny_pair_dirs, dtype="bfloat16", device="cpu")
    assert pair.foundation.dtype == torch.bfloat16
    out = EnsembleLM(pair, 0.5, 0.5).logprobs(*_ids(pair, ["您好"]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_mismatched_tokenizers_are_refused(tiny_pair_dirs, tmp_path):
    other_tok = tiny.make_tokenizer(extra_chars="αβγδ")  # a different character set: different vocab
    with pytest.raises(ExpertMismatchError, match="tokenizers differ"):
        check_same_tokenizer(tiny.make_tokenizer(), other_tok)
    other = tmp_path / "other_sft"
    tiny.make_model(other_tok, seed=3).save_pretrained(other)
    other_tok.save_pretrained(other)
    with pytest.raises(ExpertMismatchError, match="foundation and sft tokenizers differ"):
        load_experts(tiny_pair_dirs[0], other, device="cpu")


def test_identical_tokenizer_files_are_loaded_once(tiny_pair_dirs, monkeypatch, tmp_path):
    """A 152k-token tokenizer costs seconds to load: byte-identical files are one tokenizer, loaded once."""
    import shutil

    import sopmoe_models.experts as experts

    loads = []
    real = experts.load_tokenizer
    monkeypatch.setattr(experts, "load_tokenizer", lambda path: loads.append(path) or real(path))
    experts.load_experts(*tiny_pair_dirs, device="cpu")
    assert len(loads) == 1
    edited = tmp_path / "sft"
    shutil.copytree(tiny_pair_dirs[1], edited)
    cfg = edited / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"model_max_length": 77, ', 1))
    assert not experts.same_tokenizer_files(tiny_pair_dirs[0], edited)
    experts.load_experts(tiny_pair_dirs[0], edited, device="cpu")  # loaded and compared: same vocab and specials
    assert len(loads) == 3


def test_same_vocab_different_special_tokens_are_refused():
    a, b = tiny.make_tokenizer(), tiny.make_tokenizer()
    b.eos_token = "<unk>"
    with pytest.raises(ExpertMismatchError, match="eos_token"):
        check_same_tokenizer(a, b)


def test_missing_model_folder_is_a_clear_error(tiny_pair_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="sft model folder"):
        load_experts(tiny_pair_dirs[0], tmp_path / "nope", device="cpu")


@pytest.mark.parametrize("mix", ["prob", "logit"])
def test_mix_keeps_inputs_and_gradients(mix):
    """In-place accumulation (no autograd) must not touch the experts' logits; with autograd it must be exact."""
    z_f, z_s = _hand_made()
    keep = (z_f.clone(), z_s.clone())
    with torch.inference_mode():
        fast = mix_logits([z_f, z_s], (0.3, 0.7), mix)
    assert torch.equal(z_f, keep[0]) and torch.equal(z_s, keep[1])
    a, b = z_f.clone().requires_grad_(), z_s.clone().requires_grad_()
    slow = mix_logits([a, b], (0.3, 0.7), mix)
    torch.testing.assert_close(slow.detach(), fast)
    ref = (torch.log(0.3 * a.softmax(-1) + 0.7 * b.softmax(-1)) if mix == "prob"
           else F.log_softmax(0.3 * a + 0.7 * b, -1))
    g = torch.randn_like(ref)
    got = torch.autograd.grad((slow * g).sum(), (a, b))
    want = torch.autograd.grad((ref * g).sum(), (a, b))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_cached_ensemble_scores_like_the_ensemble(tiny_pair):
    from sopmoe_models.ensemble import CachedEnsembleLM, ExpertLogprobCache

    cache = ExpertLogprobCache(tiny_pair)
    ids, mask = _ids(tiny_pair, ["计算 12+7 等于多少\n答:12+7=19", "您好\n答:您好"])
    for w, mix in [(0.0, "prob"), (0.3, "prob"), (0.3, "logit"), (0.8, "logit"), (1.0, "logit")]:
        got = CachedEnsembleLM(cache, w, 1 - w, mix).logprobs(ids, mask)
        torch.testing.assert_close(got, EnsembleLM(tiny_pair, w, 1 - w, mix).logprobs(ids, mask), atol=1e-5, rtol=0)
    assert (cache.misses, cache.hits) == (1, 4)  # both experts ran once for five ensembles
    other = ids.flip(0)
    CachedEnsembleLM(cache, 0.5, 0.5).logprobs(other, mask.flip(0))
    assert cache.misses == 2
    tiny_budget = ExpertLogprobCache(tiny_pair, max_bytes=10)
    CachedEnsembleLM(tiny_budget).logprobs(ids, mask)
    CachedEnsembleLM(tiny_budget).logprobs(ids, mask)
    assert tiny_budget.misses == 2 and tiny_budget.bytes == 0  # over budget: recomputed, nothing kept
    # generation does not go through the cache
    gen = CachedEnsembleLM(cache, 0.5, 0.5).generate(ids, mask, max_new_tokens=4, eos_token_id=[])
    assert torch.equal(gen.sequences, EnsembleLM(tiny_pair).generate(ids, mask, max_new_tokens=4, eos_token_id=[]).sequences)
