"""``sopmoe moe`` / ``sopmoe train-moe``: the pair as one standard MoE checkpoint (BTX), loaded with no sopmoe code.

Parity (issue 21): the MoE built from (F, F) is F through plain lm-eval ``hf`` (<= 1e-4 nats per request, identical
greedy generations) for a Qwen3 pair with a padded, tied head and a Llama pair with an untied head, both at an
expert width (37) that is not a multiple of 16; with the sft's shared weights and every gate forced to the sft it is
the sft. Gate training changes the gates and nothing else; refusals are one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import tiny

TASKS = ["sop_strict", "reasoning", "sop_strict_gen"]


def _save(model, tok, folder: Path) -> str:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _qwen3_tied(tok, seed: int):
    """A tiny Qwen3 with its head tied to the embeddings and padded past the tokenizer (as Qwen3-0.6B's is)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok) + 5, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(40.0)  # sharp distributions: greedy decoding without near-ties
    return model


def _llama(tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_pairs")
    tok = tiny.make_tokenizer()
    out = {}
    for arch, make in (("qwen3", _qwen3_tied), ("llama", _llama)):
        out[arch] = {role: _save(make(tok, seed), tok, root / arch / role) for role, seed in (("foundation", 0), ("sft", 1))}
    return out


@pytest.fixture(scope="module")
def moes(pairs, tmp_path_factory):
    from sopmoe_models.moe import build_moe

    root = tmp_path_factory.mktemp("moes")
    out = {}
    for arch, p in pairs.items():
        build_moe(p["foundation"], p["foundation"], root / f"{arch}_ff", attention="foundation")
        build_moe(p["foundation"], p["sft"], root / f"{arch}_fs_sft", attention="sft", top_k=1)
        out[arch] = {"ff": str(root / f"{arch}_ff"), "fs_sft": str(root / f"{arch}_fs_sft")}
    return out


@pytest.fixture(scope="module")
def lm_eval_run(tiny_data_dir, pairs):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir

    register_all()
    tm = TaskManager(include_path=tasks_dir(), include_defaults=False,
                     metadata={"data_dir": str(tiny_data_dir / "eval"), "tokenizer": pairs["qwen3"]["foundation"]})
    cache = {}

    def run(pretrained: str):
        if pretrained not in cache:
            cache[pretrained] = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": pretrained, "device": "cpu"},
                                                        tasks=TASKS, task_manager=tm, batch_size=2, log_samples=True)
        return cache[pretrained]

    return run


def _same_requests(a: dict, b: dict) -> float:
    """Asserts request-for-request identity; returns the largest log-likelihood difference (printed with -s)."""
    worst = 0.0
    for task in TASKS:
        ra = sorted(a["samples"][task], key=lambda s: s["doc_id"])
        rb = sorted(b["samples"][task], key=lambda s: s["doc_id"])
        assert len(ra) == len(rb) > 0
        for sa, sb in zip(ra, rb):
            x, y = sa["resps"][0][0], sb["resps"][0][0]
            if task.endswith("_gen"):
                assert len(x) > 0 and x == y, (task, sa["doc_id"], x, y)
            else:
                assert abs(x[0] - y[0]) <= 1e-4 and x[1] == y[1], (task, sa["doc_id"], x, y)
                worst = max(worst, abs(x[0] - y[0]))
    return worst


@pytest.mark.parametrize("arch, cls", [("qwen3", "Qwen3MoeForCausalLM"), ("llama", "MixtralForCausalLM")])
def test_moe_of_f_and_f_is_f_through_plain_lm_eval_hf(pairs, moes, lm_eval_run, arch, cls):
    cfg = json.loads((Path(moes[arch]["ff"]) / "config.json").read_text())
    assert cfg["architectures"] == [cls] and cfg["num_experts_per_tok"] == 2
    assert cfg.get("num_experts", cfg.get("num_local_experts")) == 2
    assert cfg["sopmoe_dense_intermediate_size"] == 37 and cfg.get("moe_intermediate_size", cfg["intermediate_size"]) == 48
    if arch == "qwen3":  # the head stays as it was: tied, padded past the tokenizer
        assert cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == len(tiny.make_tokenizer()) + 5
    worst = _same_requests(lm_eval_run(pairs[arch]["foundation"]), lm_eval_run(moes[arch]["ff"]))
    print(f"parity {arch}: MoE(F, F) vs F through lm-eval hf, max |d loglik| per request = {worst:.3g} nats")


def test_hub_tensor_names(moes):
    from safetensors import safe_open

    with safe_open(str(Path(moes["qwen3"]["ff"]) / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.layers.1.mlp.experts.1.gate_proj.weight", "model.layers.1.mlp.gate.weight"} <= names
    assert "lm_head.weight" not in names  # tied
    with safe_open(str(Path(moes["llama"]["ff"]) / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.layers.0.block_sparse_moe.experts.0.w1.weight", "model.layers.0.block_sparse_moe.gate.weight",
            "lm_head.weight"} <= names


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_gates_forced_to_the_sft_with_its_weights_give_the_sft(pairs, moes, arch):
    from transformers import AutoModelForCausalLM

    from sopmoe_models.moe import moe_block

    sft = AutoModelForCausalLM.from_pretrained(pairs[arch]["sft"]).eval()
    moe = AutoModelForCausalLM.from_pretrained(moes[arch]["fs_sft"]).eval()
    assert moe.config.num_experts_per_tok == 1
    for layer in moe.model.layers:  # a router that sends every token to expert 1 (sft), whatever the hidden state
        gate = moe_block(layer).gate
        gate.forward = _forced_to_sft(gate.forward)
    ids = torch.randint(3, 60, (2, 13))
    a, b = sft(ids).logits, moe(ids).logits
    print(f"parity {arch}: MoE(F, S) with --attention sft, gates forced to the sft, vs S: max |d logit| = "
          f"{(a - b).abs().max().item():.3g}")
    assert torch.allclose(a, b, atol=1e-5)


def _forced_to_sft(original):
    """A router forward with every token on expert 1: transformers 5's routers return (logits, weights, indices),
    4.x's gate is a linear layer whose logits the block turns into top-k weights itself."""
    def forward(hidden):
        out = original(hidden)
        n = hidden.reshape(-1, hidden.shape[-1]).shape[0]
        logits = torch.tensor([[-1e4, 1e4]], dtype=hidden.dtype).expand(n, 2)
        if isinstance(out, tuple):
            return logits, torch.ones(n, 1, dtype=hidden.dtype), torch.ones(n, 1, dtype=torch.long)
        return logits
    return forward


def test_refusals_are_one_line(pairs, tmp_path, capsys):
    from harness.cli import main

    q, la = pairs["qwen3"], pairs["llama"]
    cases = [
        (["--foundation", q["foundation"], "--sft", la["sft"]], "different architectures"),
        (["--foundation", q["foundation"], "--sft", q["sft"], "--out", str(Path(q["foundation"]) / "moe")], "expert"),
    ]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    cases.append((["--foundation", q["foundation"], "--sft", q["sft"], "--out", str(tmp_path / "mine")], "--overwrite"))
    cases.append((["--foundation", q["foundation"], "--sft", q["sft"], "--out", str(tmp_path / "mine"), "--overwrite"],
                  "not written by sopmoe moe"))
    for argv, match in cases:
        out = argv if "--out" in argv else [*argv, "--out", str(tmp_path / "m")]
        assert main(["moe", *out]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_no_moe_form_is_refused_by_name(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.cli import main

    tok = tiny.make_tokenizer()
    d = _save(GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)), tok, tmp_path / "gpt2")
    assert main(["moe", "--foundation", d, "--sft", d, "--out", str(tmp_path / "m")]) == 2
    assert "model_type 'gpt2' has no MoE form" in capsys.readouterr().err


def test_train_moe_trains_only_the_gates_and_keeps_the_checkpoint_standard(pairs, tiny_data_dir, tmp_path):
    from safetensors import safe_open

    from harness.cli import main

    q = pairs["qwen3"]
    built, run = tmp_path / "moe", tmp_path / "trained"
    common = ["--foundation", q["foundation"], "--sft", q["sft"]]
    assert main(["moe", *common, "--out", str(built), "--gate_init", "hidden",
                 "--train_file", str(tiny_data_dir / "train" / "train.jsonl")]) == 0
    assert main(["train-moe", *common, "--moe", str(built), "--output_dir", str(run), "--num_epochs", "1",
                 "--batch_size", "2", "--train_file", str(tiny_data_dir / "train" / "train.jsonl"),
                 "--eval_file", str(tiny_data_dir / "eval" / "eval_all.jsonl")]) == 0
    best = run / "best_student"
    assert (best / "config.json").read_text() == (built / "config.json").read_text()
    changed = []
    with safe_open(str(best / "model.safetensors"), "pt") as a, safe_open(str(built / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            if not torch.equal(a.get_tensor(k), b.get_tensor(k)):
                changed.append(k)
    assert changed and all(k.endswith(".mlp.gate.weight") for k in changed)
    card = json.loads((best / "moe.json").read_text())
    assert card["trained"]["finetuning"] == "router" and card["gate_init"] == "hidden"
    assert json.loads((best / "distill.json").read_text())["finetuning"] == "router"


def test_reserve_at_top_1_keeps_the_weights(moes, tmp_path):
    from harness.cli import main

    src = Path(moes["llama"]["ff"])
    assert main(["moe", "--from", str(src), "--top_k", "1", "--out", str(tmp_path / "top1")]) == 0
    cfg = json.loads((tmp_path / "top1" / "config.json").read_text())
    assert cfg["num_experts_per_tok"] == 1
    assert (tmp_path / "top1" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "top1" / "moe.json").read_text())["inference_cost"] < \
        json.loads((src / "moe.json").read_text())["inference_cost"]


def test_qwen2_pair_becomes_qwen2_moe_with_a_zero_shared_expert(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from sopmoe_models.moe import build_moe

    tok = tiny.make_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok) + 3, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    dense = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in dense.model.layers:  # Qwen2's q/k/v biases must come through as the MoE's attention biases
            layer.self_attn.q_proj.bias.normal_()
    f = _save(dense, tok, tmp_path / "qwen2")
    build_moe(f, f, tmp_path / "moe", attention="foundation", top_k=1)
    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "moe").eval()
    assert type(moe).__name__ == "Qwen2MoeForCausalLM"
    ids = torch.randint(3, 60, (2, 9))
    assert torch.allclose(dense(ids).logits, moe(ids).logits, atol=1e-5)


def test_router_training_refuses_a_dense_student_and_reserving_refuses_a_dense_folder(pairs, tiny_data_dir, tmp_path,
                                                                                     capsys):
    from harness.cli import main

    q = pairs["qwen3"]
    assert main(["train-moe", "--foundation", q["foundation"], "--sft", q["sft"], "--moe", q["foundation"],
                 "--output_dir", str(tmp_path / "t"), "--train_file", str(tiny_data_dir / "train" / "train.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a Mixture-of-Experts checkpoint" in err and len(err.splitlines()) == 1
    assert main(["moe", "--from", q["foundation"], "--top_k", "1", "--out", str(tmp_path / "m")]) == 2
    assert "not an MoE written by sopmoe moe" in capsys.readouterr().err


def test_the_dev_choice_prefers_the_better_mean_then_the_cheaper_top_k(monkeypatch, tmp_path):
    from training import moe_choice

    scores = {("a", 1): 0.6, ("a", 2): 0.7, ("b", 1): 0.7, ("b", 2): 0.7}
    monkeypatch.setattr(moe_choice, "dev_accuracy", lambda path, dev, fams, top_k, **kw: {
        "sop_strict": scores[(Path(path).name, top_k)], "mean": scores[(Path(path).name, top_k)]})
    cands = [moe_choice.Candidate(tmp_path / n, {"attention": n}) for n in ("a", "b")]
    best, k, table = moe_choice.choose(cands, (1, 2), tmp_path, ("sop_strict",), style="raw", dtype="float32")
    assert (best.settings["attention"], k) == ("b", 1) and len(table) == 4  # a@2 ties b@1: the cheaper k wins
