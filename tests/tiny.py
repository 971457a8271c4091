"""Builders for the tiny offline models and data the tests use (no hub, seconds on a CPU)."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from training.testbed import perturb_like_a_fine_tune_, save_pair

SPECIALS = ["<|pad|>", "<|endoftext|>", "<unk>"]

TINY_EXAMPLES = {
    "sop_strict": [
        ("请按照SOP流程处理客户退款申请:订单A12,价格30元", "步骤1:核实订单A12;步骤2:退款金额30*1-0=30元;步骤3:通知客户"),
        ("请按照SOP流程处理客户投诉:订单B7", "步骤1:记录投诉B7;步骤2:升级主管;步骤3:回访客户"),
    ],
    "reasoning": [("计算 12+7 等于多少", "12+7=19"), ("小明有3个苹果,又买了4个,共几个", "3+4=7个")],
    "mixed": [("请按照SOP流程处理退款:单价8元,数量3件,优惠2元", "步骤1:核实订单;步骤2:退款金额8*3-2=22元;步骤3:通知客户")],
    "eval": [("客服问候语是什么", "您好,请问有什么可以帮您")],
}


def all_text() -> str:
    return "".join(i + o for rows in TINY_EXAMPLES.values() for i, o in rows) + "答:\n"


def make_tokenizer(extra_chars: str = ""):
    """A character-level ``PreTrainedTokenizerFast`` over ASCII plus the tiny data's characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable + all_text() + extra_chars))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token="<unk>"
    )


def make_model(tokenizer, seed: int, *, hidden: int = 32, layers: int = 2, vocab_pad: int = 3,
               head_scale: float = 1.0, padded_scale: float = 1.0):
    """A tiny random Qwen3 whose lm_head is padded past the tokenizer by ``vocab_pad`` rows (as Qwen3's is).

    ``head_scale`` multiplies the lm_head (sharper distributions: greedy decoding without near-ties);
    ``padded_scale`` the padded rows on top of it (> 1: they carry real probability mass).
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tokenizer) + vocab_pad,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        model.lm_head.weight[len(tokenizer):].mul_(padded_scale)
    return model


def make_parity_pair(root: Path, *, vocab_pad: int = 5, padded_scale: float = 1.5) -> dict[str, str]:
    """Two independent tiny experts whose padded lm_head rows carry real probability mass (about 11 % per position,
    the argmax at about one position in five), sharp enough that greedy decoding has no near-ties: the pair on
    which a fused model at a pure weight must equal ``--model hf`` exactly (the parity rule)."""
    tok = make_tokenizer()
    dirs = {}
    for name, seed in (("foundation", 0), ("sft", 1)):
        model = make_model(tok, seed, vocab_pad=vocab_pad, head_scale=20.0, padded_scale=padded_scale)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


def make_pair(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a foundation and an sft (= foundation + noise) with the same tokenizer under ``root``."""
    tok = make_tokenizer()
    foundation = make_model(tok, seed)
    sft = make_model(tok, seed)
    perturb_like_a_fine_tune_(sft, foundation, 0.5, seed=seed + 1)
    return save_pair(root, foundation, sft, tok)


def make_data(root: Path) -> Path:
    """train/eval/task JSONL files in ``root`` built from :data:`TINY_EXAMPLES`."""
    from sopmoe_models.data import Example, write_jsonl

    everything = []
    for family, rows in TINY_EXAMPLES.items():
        exs = [Example(i, o, id=f"{family}-{k}", category=family) for k, (i, o) in enumerate(rows)]
        write_jsonl(root / "eval" / f"{family}.jsonl", exs)
        everything += exs
    write_jsonl(root / "train" / "train.jsonl", everything)
    write_jsonl(root / "eval" / "eval_all.jsonl", everything)
    return root
