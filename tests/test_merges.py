"""Weight-space merges (sopmoe_models.merges): exact limits, the papers' definitions on hand-made tensors, refusals."""

import math

import pytest
import torch
from torch import nn

from sopmoe_models.experts import ExpertMismatchError
from sopmoe_models.merges import MergeParams, merge_models, merge_state_dicts, merge_tensor, tensor_seed
from sopmoe_models.merges.auto import auto_merge, cocktail_weights
from tests import tiny


def equal_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def tied_model(tok, seed: int, tie: bool = True):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tie,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    return Qwen3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("weight, expert", [(0.0, "foundation"), (1.0, "sft")])
def test_linear_limits_are_the_inputs_exactly(tiny_pair, weight, expert):
    merged = merge_models(tiny_pair, "linear", weight=weight)
    assert equal_state(merged, getattr(tiny_pair, expert))
    assert merged is not tiny_pair.foundation  # not in place: the pair is untouched


@pytest.mark.parametrize("scale, expert", [(0.0, "foundation"), (1.0, "sft")])
def test_task_arithmetic_limits_are_the_inputs_exactly(tiny_pair, scale, expert):
    assert equal_state(merge_models(tiny_pair, "task_arithmetic", scale=scale), getattr(tiny_pair, expert))


@pytest.mark.parametrize("method", ["ties", "dare"])
def test_density_one_scale_one_is_the_sft(tiny_pair, method):
    assert equal_state(merge_models(tiny_pair, method, scale=1.0, density=1.0), tiny_pair.sft)


def test_linear_and_task_arithmetic_by_hand():
    f = torch.tensor([1.0, -2.0, 0.5, 4.0])
    s = torch.tensor([3.0, -1.0, 0.5, 0.0])
    # WiSE-FT: (1 - α) θ_f + α θ_s with α = 0.25
    assert torch.equal(merge_tensor(f, s, MergeParams("linear", weight=0.25)), torch.tensor([1.5, -1.75, 0.5, 3.0]))
    # task arithmetic: θ_f + λ (θ_s - θ_f) with λ = 1.5 (extrapolation past the sft)
    assert torch.equal(merge_tensor(f, s, MergeParams("task_arithmetic", scale=1.5)),
                       torch.tensor([4.0, -0.5, 0.5, -2.0]))


def test_ties_by_hand():
    f = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    tau = torch.tensor([[0.5, -3.0, 0.1, 2.0], [-0.2, 0.05, -1.0, 0.3]])
    s = f + tau
    # trim: density 0.5 keeps the 4 largest |τ| of 8 entries: -3.0, 2.0, -1.0, 0.5; elect sign / disjoint mean
    # with one task vector keep each kept entry as it is; then θ_f + λ τ̂ with λ = 0.5.
    kept = torch.tensor([[0.5, -3.0, 0.0, 2.0], [0.0, 0.0, -1.0, 0.0]])
    out = merge_tensor(f, s, MergeParams("ties", scale=0.5, density=0.5))
    torch.testing.assert_close(out, f + 0.5 * kept, rtol=0, atol=1e-7)
    # density 0.25 keeps the top 2: -3.0 and 2.0
    out = merge_tensor(f, s, MergeParams("ties", scale=1.0, density=0.25))
    torch.testing.assert_close(out, f + torch.tensor([[0.0, -3.0, 0.0, 2.0], [0.0] * 4]), rtol=0, atol=1e-7)


def test_dare_by_hand_and_seeded():
    torch.manual_seed(123)
    f, s = torch.randn(64, 50), torch.randn(64, 50)
    tau = (s.double() - f.double())
    p = MergeParams("dare", scale=0.8, density=0.3, seed=7)
    state = torch.get_rng_state()
    out = merge_tensor(f, s, p, name="w")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    # DARE: m ~ Bernoulli(d), θ = θ_f + λ m ⊙ τ / d; the mask is drawn from the per-tensor seed
    gen = torch.Generator().manual_seed(tensor_seed(7, "w"))
    mask = torch.bernoulli(torch.full_like(tau, 0.3), generator=gen)
    expected = (f.double() + (mask * tau / 0.3) * 0.8).float()  # peft's order: drop, rescale, then weight
    assert torch.equal(out, expected)
    kept = (out != f).double().mean().item()
    assert abs(kept - 0.3) < 0.05  # drop rate p = 1 - density
    assert torch.equal(merge_tensor(f, s, p, name="w"), out)  # same seed, same merge
    assert not torch.equal(merge_tensor(f, s, p.with_(seed=8), name="w"), out)
    assert not torch.equal(merge_tensor(f, s, p, name="v"), out)  # each tensor its own mask


def test_dare_state_dict_matches_model_merge(tiny_pair):
    p = MergeParams("dare", scale=1.0, density=0.4, seed=3)
    merged = merge_models(tiny_pair, **p.__dict__)
    sd = merge_state_dicts(tiny_pair.foundation.state_dict(), tiny_pair.sft.state_dict(), p)
    assert all(torch.equal(sd[k], v) for k, v in merged.state_dict().items())


def test_half_precision_merges_in_float32():
    f = torch.randn(40).bfloat16()
    s = torch.randn(40).bfloat16()
    out = merge_tensor(f, s, MergeParams("linear", weight=0.5))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ((f.float() + s.float()) / 2).bfloat16())


def test_tied_embeddings_stay_tied(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = tiny.make_tokenizer()
    f, s = tied_model(tok, 0), tied_model(tok, 1)
    merged = merge_models((f, s), "dare", density=0.5, seed=1, tokenizers=(tok, tok))
    emb, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert emb.data_ptr() == head.data_ptr()
    expected = merge_tensor(f.get_input_embeddings().weight, s.get_input_embeddings().weight,
                            MergeParams("dare", density=0.5, seed=1), "model.embed_tokens.weight")
    assert torch.equal(emb, expected)
    merged.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert equal_state(loaded, merged)


def test_buffers_and_integer_tensors_are_the_foundations():
    class Tiny(nn.Module):
        def __init__(self, k: float):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.register_buffer("scale", torch.full((2,), k))
            self.register_buffer("steps", torch.tensor([int(k)]))

    f, s = Tiny(1.0), Tiny(5.0)
    merged = merge_models((f, s), "linear", weight=0.5)
    assert torch.equal(merged.scale, f.scale) and torch.equal(merged.steps, f.steps)
    assert torch.allclose(merged.lin.weight, (f.lin.weight + s.lin.weight) / 2)
    sd = merge_state_dicts(f.state_dict(), s.state_dict(), MergeParams("linear", weight=0.5))
    assert torch.equal(sd["steps"], f.steps)


def test_refuses_different_shapes_naming_the_tensor():
    tok = tiny.make_tokenizer()
    f, s = tiny.make_model(tok, 0), tiny.make_model(tok, 0, vocab_pad=5)
    with pytest.raises(ExpertMismatchError, match=r"tensor lm_head\.weight differs in shape"):
        merge_models((f, s), "linear")
    with pytest.raises(ExpertMismatchError, match=r"model\.layers\.2\.\S+ exists in only one"):
        merge_models((tiny.make_model(tok, 0, layers=3), f), "ties")
    with pytest.raises(ExpertMismatchError, match=r"tensor lm_head\.weight differs in shape"):  # sorted order
        merge_state_dicts(f.state_dict(), s.state_dict(), MergeParams())


def test_refuses_different_architectures_tying_and_tokenizers():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny.make_tokenizer()
    f = tiny.make_model(tok, 0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok) + 3, hidden_size=32, intermediate_size=37,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ExpertMismatchError, match="different architectures"):
        merge_models((f, llama), "linear")
    with pytest.raises(ExpertMismatchError, match=r"tensor lm_head\.weight is tied"):
        merge_models((tied_model(tok, 0, tie=True), tied_model(tok, 0, tie=False)), "linear")
    other = tiny.make_tokenizer(extra_chars="€")
    with pytest.raises(ExpertMismatchError, match="tokenizers differ"):
        merge_models((f, tiny.make_model(tok, 1)), "linear", tokenizers=(tok, other))


@pytest.mark.parametrize("kw, msg", [({"method": "slerp"}, "not one of"), ({"weight": 1.5}, r"\[0, 1\]"),
                                     ({"density": 0.0}, r"\(0, 1\]"), ({"scale": math.inf}, "finite")])
def test_bad_parameters_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        MergeParams(**kw)


def test_cocktail_weights_are_softmax_of_negative_loss_over_t():
    w = cocktail_weights([1.0, 2.0], temperature=0.5)
    e1, e2 = math.exp(-2.0), math.exp(-4.0)
    assert w == pytest.approx([e1 / (e1 + e2), e2 / (e1 + e2)])
    with pytest.raises(ValueError, match="temperature"):
        cocktail_weights([1.0, 2.0], 0.0)


def test_auto_merge_picks_lowest_dev_loss(tiny_pair, tiny_data_dir):
    from sopmoe_models.data import load_jsonl

    examples = load_jsonl(tiny_data_dir / "eval" / "eval_all.jsonl")
    model, result = auto_merge(tiny_pair, MergeParams("linear"), examples, grid={"weight": [0.0, 0.5, 1.0]})
    assert [r.source for r in result.rows] == ["grid", "grid", "grid", "cocktail"]
    assert result.best.score.loss == min(r.score.loss for r in result.rows)
    # the grid's end points are the experts, scored the same way as the experts themselves
    assert result.rows[0].score.loss == pytest.approx(result.cocktail["dev_loss"]["foundation"], abs=1e-9)
    assert result.rows[2].score.loss == pytest.approx(result.cocktail["dev_loss"]["sft"], abs=1e-9)
    w_s = result.cocktail["weights"]["sft"]
    assert result.rows[3].params.weight == pytest.approx(w_s)
    assert equal_state(model, merge_models(tiny_pair, **result.best.params.__dict__))


def test_auto_merge_ties_searches_density_and_scale(tiny_pair, tiny_data_dir):
    from sopmoe_models.data import load_jsonl

    examples = load_jsonl(tiny_data_dir / "eval" / "eval_all.jsonl")[:3]
    _, result = auto_merge(tiny_pair, MergeParams("ties", density=0.5), examples,
                           grid={"density": [0.2, 1.0], "scale": [0.5, 1.0]})
    grid = [(r.params.density, r.params.scale) for r in result.rows if r.source == "grid"]
    assert grid == [(0.2, 0.5), (0.2, 1.0), (1.0, 0.5), (1.0, 1.0)]
    cocktail = result.rows[-1].params
    assert (cocktail.density, cocktail.scale) == (0.5, pytest.approx(result.cocktail["weights"]["sft"]))
    with pytest.raises(ValueError, match="cannot search"):
        auto_merge(tiny_pair, MergeParams("linear"), examples, grid={"density": [0.5]})
