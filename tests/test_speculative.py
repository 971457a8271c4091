"""Speculative decoding (sopmoe_models/speculative.py): the same greedy tokens as each fused model's own decode, the
fused model's sampling distribution, rollback of router state, stops and EOS, loading checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sopmoe_models.ensemble import EnsembleLM
from sopmoe_models.experts import ExpertMismatchError, load_experts
from sopmoe_models.routers import build_router
from sopmoe_models.speculative import Drafter, load_drafter, resolve_draft
from tests import tiny

PROMPTS = ["计算 12+7 等于多少\n答:", "您好\n答:", "请按照SOP流程处理客户投诉:订单B7\n答:"]
FUSED = ["ensemble", "ensemble_logit", "posterior", "token_level", "layer_level"]


def _enc(pair, texts):
    enc = pair.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def _fused(name, pair):
    if name == "ensemble":
        return EnsembleLM(pair, 0.6, 0.4, "prob")
    if name == "ensemble_logit":
        return EnsembleLM(pair, 0.6, 0.4, "logit")
    torch.manual_seed(0)
    router = build_router(name, pair, **({} if name == "posterior" else {"hidden_size": 8}))
    for p in router.parameters():  # non-trivial gates (an untrained router starts at 0.5/0.5)
        torch.nn.init.normal_(p, std=0.5)
    return router


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory, tiny_pair):
    """An untrained model with the experts' tokenizer: a drafter that almost never agrees."""
    root = tmp_path_factory.mktemp("random_drafter")
    tiny.make_model(tiny_pair.tokenizer, seed=123).save_pretrained(root)
    tiny_pair.tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def drafters(tiny_pair, tiny_pair_dirs, random_dir):
    """foundation: agrees with the fused models part of the time (rows accept different lengths); random: ~never."""
    return {"foundation": load_drafter(tiny_pair_dirs[0], tiny_pair, num_draft_tokens=3, schedule="constant"),
            "random": load_drafter(random_dir, tiny_pair, num_draft_tokens=3, schedule="heuristic")}


@pytest.mark.parametrize("rows", [[1], [0, 1, 2]], ids=["batch1", "padded3"])
@pytest.mark.parametrize("drafter", ["foundation", "random"])
@pytest.mark.parametrize("fused", FUSED)
def test_greedy_output_is_the_fused_models_own(tiny_pair, drafters, fused, drafter, rows, monkeypatch):
    model = _fused(fused, tiny_pair)
    keeps = []  # per round, the tokens each row kept: rows that reject early leave holes no later token may see
    commit = model.commit_state
    monkeypatch.setattr(model, "commit_state", lambda state, keep, n: (keeps.append(keep.tolist()), commit(state, keep, n))[1])
    ids, mask = _enc(tiny_pair, [PROMPTS[i] for i in rows])
    plain = model.generate(ids, mask, max_new_tokens=24, eos_token_id=[])
    spec = model.generate(ids, mask, max_new_tokens=24, eos_token_id=[], draft=drafters[drafter])
    assert torch.equal(spec.sequences, plain.sequences)
    assert spec.texts == plain.texts
    if plain.gates is not None:  # each generated token's gate, as the one-token loop computed it
        assert spec.gates.shape == plain.gates.shape
        assert (spec.gates - plain.gates).abs().max() < 1e-4
    s = spec.speculation
    assert s.drafted > 0 and 0 <= s.accepted <= s.drafted and s.tokens == 23 * len(rows)  # the first is prefill's
    if drafter == "foundation" and len(rows) > 1:
        assert any(len(set(k)) > 1 for k in keeps)  # rows really kept different numbers of tokens in one round


@pytest.mark.parametrize("fused", ["ensemble", "posterior", "layer_level"])
def test_a_drafter_that_always_agrees_is_always_accepted(tiny_pair, tiny_pair_dirs, fused):
    """Fused model at weight (1, 0) = the foundation; the foundation drafts: every draft accepted, 4 tokens a forward."""
    model = EnsembleLM(tiny_pair, 1.0, 0.0) if fused == "ensemble" else _fused(fused, tiny_pair).force_gate((1.0, 0.0))
    drafter = load_drafter(tiny_pair_dirs[0], tiny_pair, num_draft_tokens=3, schedule="constant")
    calls = []
    hook = tiny_pair.foundation.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("input_ids")),
                                                          with_kwargs=True)
    try:
        ids, mask = _enc(tiny_pair, PROMPTS)
        plain = model.generate(ids, mask, max_new_tokens=25, eos_token_id=[])
        n_plain = len(calls)
        calls.clear()
        spec = model.generate(ids, mask, max_new_tokens=25, eos_token_id=[], draft=drafter)
    finally:
        hook.remove()
    assert torch.equal(spec.sequences, plain.sequences)
    assert spec.speculation.acceptance_rate == 1.0 and spec.speculation.tokens_per_round == 4.0
    if fused != "layer_level":  # layer_level runs the decoder layers itself, not the model's forward
        assert n_plain == 25 and len(calls) == 1 + 24 // 4  # prefill + one verify per 4 tokens (drafter: own model)


# --- the parity rule: padded lm_head rows are outcomes like any other ------------------------------------------------


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """The parity pair (:func:`tests.tiny.make_parity_pair`: W = V + 5 output rows whose padded rows carry real mass)
    and drafters over W rows (its foundation), fewer rows (V: the tokenizer's only) and more rows (V + 8)."""
    root = tmp_path_factory.mktemp("padded_speculative")
    dirs = tiny.make_parity_pair(root)
    pair = load_experts(dirs["foundation"], dirs["sft"], device="cpu")
    paths = {"foundation": dirs["foundation"]}
    for name, pad in (("narrow", 0), ("wide", 8)):
        tiny.make_model(pair.tokenizer, seed=3, vocab_pad=pad, head_scale=20.0, padded_scale=1.5).save_pretrained(root / name)
        pair.tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    return pair, paths


@pytest.mark.parametrize("drafter", ["foundation", "narrow", "wide"])
@pytest.mark.parametrize("fused", FUSED)
def test_greedy_is_identical_when_the_output_layer_has_more_rows_than_the_tokenizer(padded, fused, drafter):
    """Greedy speculative = the plain fused greedy decode on a padded vocabulary: both take the argmax over all W rows,
    so padded ids the fused model picks are emitted (and can be drafted), whatever rows the drafter has."""
    pair, paths = padded
    assert pair.width > pair.vocab_size
    model = _fused(fused, pair)
    d = load_drafter(paths[drafter], pair, num_draft_tokens=3, schedule="constant")
    for rows in ([1], [0, 1, 2]):
        ids, mask = _enc(pair, [PROMPTS[i] for i in rows])
        plain = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
        spec = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[], draft=d)
        assert torch.equal(spec.sequences, plain.sequences), rows
        assert spec.texts == plain.texts
    assert (plain.sequences >= pair.vocab_size).any()  # the fused model really generates padded ids here


def test_a_drafter_that_always_agrees_drafts_padded_ids_too(padded):
    """At weight (1, 0) the fused model is the foundation, padded rows included; the foundation drafting it is
    accepted every time, which needs its drafts to be argmaxes over all W rows (padded ids included)."""
    pair, paths = padded
    model = EnsembleLM(pair, 1.0, 0.0)
    d = load_drafter(paths["foundation"], pair, num_draft_tokens=3, schedule="constant")
    ids, mask = _enc(pair, PROMPTS)
    plain = model.generate(ids, mask, max_new_tokens=25, eos_token_id=[])
    spec = model.generate(ids, mask, max_new_tokens=25, eos_token_id=[], draft=d)
    assert torch.equal(spec.sequences, plain.sequences)
    assert (plain.sequences[:, 1:] >= pair.vocab_size).any()  # padded ids among the drafted (not prefill's) tokens
    assert spec.speculation.acceptance_rate == 1.0


def test_heuristic_schedule_grows_k_while_everything_is_accepted(tiny_pair, tiny_pair_dirs):
    drafter = load_drafter(tiny_pair_dirs[0], tiny_pair, num_draft_tokens=2, schedule="heuristic")
    ids, mask = _enc(tiny_pair, PROMPTS[:1])
    res = EnsembleLM(tiny_pair, 1.0, 0.0).generate(ids, mask, max_new_tokens=41, eos_token_id=[], draft=drafter)
    # k = 2, 4, 6, 8, 10 (+ the fused model's own token each round): 1 + 3 + 5 + 7 + 9 + 11 = 36, then 4 + 1 = 41
    assert res.speculation.rounds == 6
    assert res.speculation.acceptance_rate == 1.0


def test_eos_and_stop_strings_end_rows_at_the_same_token(tiny_pair, drafters):
    model = _fused("ensemble", tiny_pair)
    ids, mask = _enc(tiny_pair, PROMPTS)
    free = model.generate(ids, mask, max_new_tokens=30, eos_token_id=[])
    rows = free.sequences.tolist()
    eos = rows[0][9]  # a token the first row really generates: as EOS it ends that row (maybe others) early
    stop = tiny_pair.tokenizer.decode(rows[1][5:7])  # a stop string the second row completes at token 7
    for drafter, kw in ((drafters["foundation"], {"eos_token_id": [eos]}),
                        (drafters["foundation"], {"eos_token_id": [eos], "stop": [stop]}),
                        (drafters["random"], {"eos_token_id": [], "stop": [stop]})):
        plain = model.generate(ids, mask, max_new_tokens=30, **kw)
        spec = model.generate(ids, mask, max_new_tokens=30, draft=drafter, **kw)
        assert torch.equal(spec.sequences, plain.sequences), kw
        assert spec.texts == plain.texts, kw
        assert plain.sequences.shape[1] < 30 or not torch.equal(plain.sequences, free.sequences), kw  # a row ended early


def test_max_new_tokens_is_exact_for_every_k(tiny_pair, tiny_pair_dirs):
    model = EnsembleLM(tiny_pair, 1.0, 0.0)
    ids, mask = _enc(tiny_pair, PROMPTS)
    for n, k in itertools.product((1, 2, 5, 7), (1, 3, 8)):
        drafter = load_drafter(tiny_pair_dirs[0], tiny_pair, num_draft_tokens=k, schedule="constant")
        res = model.generate(ids, mask, max_new_tokens=n, eos_token_id=[], draft=drafter)
        assert torch.equal(res.sequences, model.generate(ids, mask, max_new_tokens=n, eos_token_id=[]).sequences)


def test_drafter_loading_checks(tiny_pair, tiny_pair_dirs, tmp_path, caplog):
    from transformers import PreTrainedTokenizerFast

    other = tiny.make_tokenizer(extra_chars="ÆØÅ")
    assert isinstance(other, PreTrainedTokenizerFast) and len(other) != len(tiny_pair.tokenizer)
    tiny.make_model(other, seed=1).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ExpertMismatchError, match="drafter .*tokenizers differ"):
        load_drafter(tmp_path / "other", tiny_pair)
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        resolve_draft(str(tmp_path / "nowhere"))
    assert resolve_draft(None) is None and resolve_draft("none") is None
    assert resolve_draft("auto", tmp_path / "no_distill" / "best_student") is None
    assert resolve_draft("auto") is None and "no distilled student" in caplog.text
    student = tmp_path / "distill" / "best_student"
    student.mkdir(parents=True)
    (student / "config.json").write_text("{}")
    assert resolve_draft("auto", student) == str(student)
    with pytest.raises(ValueError, match="num_draft_tokens must be >= 1"):
        Drafter(tiny_pair.foundation, tiny_pair.width, num_draft_tokens=0)


# --- sampling: the output distribution is the fused model's ----------------------------------------------------------

V_CHARS = "abcde"  # 3 specials + 5 letters: 8 tokens; lm_head has 3 padded rows more (W = 11): 11^4 sequences of 4


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """Two peaked, disagreeing experts over an 8-token vocabulary (a test with power needs non-uniform outputs)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tiny.SPECIALS + list(V_CHARS))}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    raw.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token="<unk>")
    root = tmp_path_factory.mktemp("small_pair")
    for name, seed in (("foundation", 0), ("sft", 1)):
        model = tiny.make_model(tok, seed)
        with torch.no_grad():
            model.lm_head.weight.mul_(6.0)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return load_experts(root / "foundation", root / "sft", device="cpu"), root


def _enumerate(model, prompt: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every continuation of n tokens, (V^n, n), and the fused model's log-probs of each of its tokens, (V^n, n, V)."""
    V = model.width  # every output row: padded ids are outcomes too (the parity rule)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V^n, n)
    ids = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
    with torch.inference_mode():
        lp = model.logprobs(ids)[:, prompt.shape[1] - 1 : -1]  # (V^n, n, V): the distribution of each t_i
    return seqs, lp


def _exact(model, prompt: torch.Tensor, n: int, d, enumerated=None) -> torch.Tensor:
    """P(t_1..t_n) (V,)*n of the fused model's sampler (its temperature/top-p at every step), by enumeration
    (``enumerated``: :func:`_enumerate`'s answer for this model, prompt and n, when already computed)."""
    V = model.width
    seqs, lp = enumerated or _enumerate(model, prompt, n)
    probs = torch.softmax(d.warpers(None, lp.reshape(-1, V)), -1).reshape(lp.shape)
    step = probs.gather(-1, seqs[..., None]).squeeze(-1)  # (V^n, n)
    return step.double().prod(-1).reshape((V,) * n)


@pytest.fixture(scope="module")
def exact_of(small_pair):
    """:func:`_exact` for ensembles over ``small_pair``, each enumeration's forward pass (~1 s: 14,641 sequences
    through both experts) done once per module: the sampling tests score the same sequences with the same 0.5/0.5
    ensemble and the drafter's 1/0; only the sampler's temperature and top-p, applied afterwards, differ."""
    cache = {}

    def fn(model: EnsembleLM, prompt: torch.Tensor, n: int, d) -> torch.Tensor:
        assert model.pair is small_pair[0]
        key = (tuple(model.weights), model.mix, tuple(prompt.flatten().tolist()), n)
        if key not in cache:
            cache[key] = _enumerate(model, prompt, n)
        return _exact(model, prompt, n, d, cache[key])

    return fn


def _chi2_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness-of-fit p-value; cells expected below 5 are pooled into one."""
    from scipy.stats import chi2

    counts, probs = counts.flatten().double(), probs.flatten().double()
    expected = probs / probs.sum() * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    if bool((obs[~keep] > 0).any()):
        return 0.0  # a sample the distribution gives probability 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(chi2.sf(stat, max(1, len(obs) - 1)))


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_sampling_keeps_the_fused_distribution(small_pair, exact_of, temperature, top_p):
    pair, root = small_pair
    model = EnsembleLM(pair, 0.5, 0.5, "prob")
    drafter = load_drafter(root / "foundation", pair, num_draft_tokens=3, schedule="constant")
    tok = pair.tokenizer
    prompt = torch.tensor([tok("abca", add_special_tokens=False)["input_ids"]])
    n, N = 4, 4000
    d = model.decoding(temperature, top_p, 0, (), [])
    exact = exact_of(model, prompt, n, d)
    draft_only = exact_of(EnsembleLM(pair, 1.0, 0.0), prompt, n, d)  # the drafter's own distribution
    batch = prompt.expand(N, -1)
    spec = model.generate(batch, max_new_tokens=n, temperature=temperature, top_p=top_p, seed=0, eos_token_id=[],
                          draft=drafter)
    s = spec.speculation
    assert 0.2 < s.acceptance_rate < 0.95  # really speculative: many drafts accepted, many rejected
    seqs = spec.sequences
    assert seqs.shape == (N, n)
    assert (seqs >= pair.vocab_size).any()  # padded ids are sampled too (the parity rule: all W rows are outcomes)
    V = model.width
    joint = torch.zeros((V,) * n, dtype=torch.long)
    joint.index_put_(tuple(seqs.T), torch.ones(N, dtype=torch.long), accumulate=True)
    # marginals of each position and of each pair of neighbours (the joint of 14641 cells is too sparse for N)
    views = {f"t{i + 1}": tuple(j for j in range(n) if j != i) for i in range(n)}
    views |= {f"t{i + 1}t{i + 2}": tuple(j for j in range(n) if j not in (i, i + 1)) for i in range(n - 1)}
    for name, axes in views.items():
        p = _chi2_p(joint.sum(axes), exact.sum(axes))
        assert p > 1e-4, f"{name}: speculative samples do not follow the fused distribution (chi-square p={p:.2e})"
    tv = max(0.5 * (joint.sum(axes).double() / N - exact.sum(axes)).abs().sum().item() for axes in views.values())
    # total variation of every marginal above, against what N exact samples show on average (normal approximation
    # per cell: E|X/N - p| = sqrt(2 p (1 - p) / (pi N))); 121 cells at most (W = 11 ids, padded rows included), where
    # sampling noise alone is ~0.07 (0.05 at 64 cells)
    noise = max(0.5 * (2 * exact.sum(axes) * (1 - exact.sum(axes)) / (math.pi * N)).sqrt().sum().item()
                for axes in views.values())
    assert tv < noise + 0.03, (tv, noise)
    # the test has power: the same samples are far from the drafter's own distribution
    assert min(_chi2_p(joint.sum(axes), draft_only.sum(axes)) for axes in views.values()) < 1e-8
    # and the plain sampler passes the same test (the enumeration is right)
    plain = model.generate(batch, max_new_tokens=n, temperature=temperature, top_p=top_p, seed=1, eos_token_id=[])
    pj = torch.zeros((V,) * n, dtype=torch.long)
    pj.index_put_(tuple(plain.sequences.T), torch.ones(N, dtype=torch.long), accumulate=True)
    assert min(_chi2_p(pj.sum(axes), exact.sum(axes)) for axes in views.values()) > 1e-4
    print(f"acceptance {s.acceptance_rate:.3f}, max marginal TV {tv:.4f} (exact sampler's ~{noise:.4f})")


def test_sampling_with_a_seed_is_reproducible(tiny_pair, drafters):
    model = _fused("token_level", tiny_pair)
    ids, mask = _enc(tiny_pair, PROMPTS)
    kw = dict(max_new_tokens=20, temperature=1.2, eos_token_id=[], draft=drafters["foundation"])
    a, b = model.generate(ids, mask, seed=5, **kw), model.generate(ids, mask, seed=5, **kw)
    assert torch.equal(a.sequences, b.sequences) and a.speculation.drafted > 0
    assert not torch.equal(a.sequences, model.generate(ids, mask, seed=6, **kw).sequences)


# --- wiring: sopmoe generate --draft, the lm-eval adapters' draft= ---------------------------------------------------

GEN_REQS = [("计算 12+7 等于多少\n答:", "reasoning_gen"), ("您好\n答:", "eval_gen"), ("请按照SOP流程处理客户投诉:订单B7\n答:", "sop_strict_gen")]


def _gen_requests():
    from lm_eval.api.instance import Instance

    return [Instance("generate_until", {}, (ctx, {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False}), i,
                     metadata=(task, i, 1)) for i, (ctx, task) in enumerate(GEN_REQS)]


def test_generate_cli_draft(tiny_pair, tiny_pair_dirs, tiny_data_dir, tmp_path, monkeypatch, capsys):
    import json

    import yaml

    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    f, s = map(str, tiny_pair_dirs)
    base = ["generate", "--foundation", f, "--sft", s, "--model", "ensemble", "--max_new_tokens", "12"]
    assert main([*base, "--prompt", "计算 12+7 等于多少"]) == 0
    plain = capsys.readouterr().out
    assert main([*base, "--prompt", "计算 12+7 等于多少", "--draft", f, "--num_draft_tokens", "3",
                 "--draft_schedule", "constant"]) == 0
    out = capsys.readouterr()
    assert out.out == plain  # the answer alone on stdout, the same as without a drafter
    assert f"drafter {f}, k=3 constant" in out.err and "acceptance" in out.err
    # draft: auto = the distilled student of the config (here: a copy of the foundation); btm with routing stats
    import shutil

    shutil.copytree(f, tmp_path / "distill" / "best_student")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"distill": {"output_dir": str(tmp_path / "distill")},
                                   "btm": {"router_type": "posterior"}}))
    out_file = tmp_path / "gen.jsonl"
    argv = ["generate", "--config", str(cfg), "--foundation", f, "--sft", s, "--model", "btm", "--max_new_tokens", "10",
            "--eval_file", str(tiny_data_dir / "eval" / "eval_all.jsonl"), "--output_file", str(out_file),
            "--batch_size", "3", "--show_router_stats"]
    def rows():
        return [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]

    assert main(argv) == 0
    plain_rows = rows()
    capsys.readouterr()
    assert main([*argv, "--draft", "auto", "--overwrite"]) == 0  # the same output file again
    printed = capsys.readouterr().out
    for a, b in zip(rows(), plain_rows, strict=True):  # same answers; same routing shares up to float rounding
        assert a["outputs"] == b["outputs"]
        assert a["routing"]["n_tokens"] == b["routing"]["n_tokens"]
        assert a["routing"]["sft"] == pytest.approx(b["routing"]["sft"], abs=1e-5)
    assert "speculative decoding of btm" in printed and "best_student" in printed and "acceptance" in printed
    summary = json.loads(out_file.with_name("gen.summary.json").read_text())
    spec = summary["speculation"]
    assert spec["model"] == "btm" and spec["draft"].endswith("best_student") and spec["drafted"] > 0
    assert 0 <= spec["acceptance_rate"] <= 1


@pytest.mark.parametrize("adapter", ["sopmoe_ensemble", "sopmoe_btm"])
def test_adapter_draft_arg(tiny_pair_dirs, tmp_path, adapter):
    import json

    from sopmoe_models.adapters.btm import BTMLMEval
    from sopmoe_models.adapters.ensemble import EnsembleLMEval

    f, s = map(str, tiny_pair_dirs)
    cls, extra = (EnsembleLMEval, {}) if adapter == "sopmoe_ensemble" else (BTMLMEval, {"router_type": "posterior"})
    plain = cls(foundation=f, sft=s, device="cpu", batch_size=2, **extra)
    stats = tmp_path / "stats.json"
    if adapter == "sopmoe_btm":
        extra["stats_path"] = str(stats)
    spec = cls(foundation=f, sft=s, device="cpu", batch_size=2, draft=f, num_draft_tokens=2, draft_schedule="constant",
               **extra)
    assert plain.drafter is None and spec.drafter.num_draft_tokens == 2
    answers = spec.generate_until(_gen_requests())
    assert answers == plain.generate_until(_gen_requests())
    info = spec.get_model_info()["sopmoe"]["speculation"]
    assert info["draft"] == f and info["drafted"] > 0 and 0 <= info["acceptance_rate"] <= 1
    assert "speculation" not in plain.get_model_info()["sopmoe"]
    if adapter == "sopmoe_btm":
        saved = json.loads(stats.read_text())
        assert saved["speculation"]["drafted"] == info["drafted"]
        assert saved["router"]["routing"]["tasks"]["eval_gen"]["n_queries"] == 1


def test_config_keeps_draft_auto_and_resolves_a_relative_drafter(tmp_path):
    from harness.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("generation:\n  draft: auto\n")
    assert load_config(cfg).generation.draft == "auto"
    cfg.write_text("generation:\n  draft: students/s1\n  num_draft_tokens: 6\n  draft_schedule: constant\n")
    g = load_config(cfg).generation
    assert g.draft == str(tmp_path / "students" / "s1") and g.num_draft_tokens == 6 and g.draft_schedule == "constant"
    cfg.write_text("generation:\n  draft: lookup\n  draft_corpus: data/train.jsonl\n")
    g = load_config(cfg).generation
    assert g.draft == "lookup" and g.draft_corpus == str(tmp_path / "data" / "train.jsonl")


# --- lookup drafting (sopmoe_models/lookup.py): drafts copied from the prompt and a corpus, no drafter model -----------


@pytest.fixture(scope="module")
def lookup_corpus(tmp_path_factory, tiny_pair):
    """A JSONL corpus of the foundation's greedy answers to the prompts: the fused models agree with it part of the
    time, so lookup drafts are accepted in part and rejected in part (and rows draft different lengths)."""
    import json

    ids, mask = _enc(tiny_pair, PROMPTS)
    texts = EnsembleLM(tiny_pair, 1.0, 0.0).generate(ids, mask, max_new_tokens=30, eos_token_id=[]).texts
    path = tmp_path_factory.mktemp("lookup") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"input": p, "output": t}, ensure_ascii=False) + "\n"
                            for p, t in zip(PROMPTS, texts)), encoding="utf-8")
    return path


@pytest.mark.parametrize("rows", [[1], [0, 1, 2]], ids=["batch1", "padded3"])
@pytest.mark.parametrize("corpus", [False, True], ids=["prompt_only", "corpus"])
@pytest.mark.parametrize("fused", FUSED)
def test_lookup_greedy_output_is_the_fused_models_own(tiny_pair, lookup_corpus, fused, corpus, rows):
    from sopmoe_models.lookup import load_lookup_drafter

    model = _fused(fused, tiny_pair)
    drafter = load_lookup_drafter(tiny_pair, tiny_pair.width, corpus=lookup_corpus if corpus else None,
                                  num_draft_tokens=4)
    ids, mask = _enc(tiny_pair, [PROMPTS[i] for i in rows])
    plain = model.generate(ids, mask, max_new_tokens=24, eos_token_id=[])
    spec = model.generate(ids, mask, max_new_tokens=24, eos_token_id=[], draft=drafter)
    assert torch.equal(spec.sequences, plain.sequences)
    assert spec.texts == plain.texts
    if plain.gates is not None:
        assert (spec.gates - plain.gates).abs().max() < 1e-4
    s = spec.speculation
    assert s.tokens == 23 * len(rows) and 0 <= s.accepted <= s.drafted
    if corpus:
        assert s.drafted > 0


def test_lookup_drafts_what_the_corpus_and_the_prompt_hold(tiny_pair, tmp_path, monkeypatch):
    """A corpus holding the fused model's own answer to one prompt: that row's drafts are accepted (several tokens a
    forward), the others' draft less or nothing (filler columns); output identical, rows of unequal draft lengths."""
    import json

    from sopmoe_models.lookup import load_lookup_drafter

    model = _fused("ensemble", tiny_pair)
    ids, mask = _enc(tiny_pair, PROMPTS)
    plain = model.generate(ids, mask, max_new_tokens=30, eos_token_id=[])
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"output": plain.texts[0]}, ensure_ascii=False) + "\n", encoding="utf-8")
    drafter = load_lookup_drafter(tiny_pair, tiny_pair.width, corpus=corpus, num_draft_tokens=6)
    one = model.generate(ids[:1], mask[:1], max_new_tokens=30, eos_token_id=[], draft=drafter)
    assert torch.equal(one.sequences, plain.sequences[:1, : one.sequences.shape[1]])
    assert one.speculation.tokens_per_round > 3 and one.speculation.acceptance_rate > 0.8
    import sopmoe_models.speculative as spec_mod

    seen = []
    verify = spec_mod.verify_greedy
    monkeypatch.setattr(spec_mod, "verify_greedy", lambda dr, lp, lengths=None: (seen.append(lengths), verify(dr, lp, lengths))[1])
    both = model.generate(ids, mask, max_new_tokens=30, eos_token_id=[], draft=drafter)
    assert torch.equal(both.sequences, plain.sequences)
    assert any(x is not None and len(set(x.tolist())) > 1 for x in seen)  # rows drafted unequal lengths in a round
    assert drafter.describe()["draft"] == "lookup" and drafter.describe()["draft_corpus"] == str(corpus)


def test_lookup_eos_stop_and_max_new_tokens(tiny_pair, lookup_corpus):
    from sopmoe_models.lookup import load_lookup_drafter

    model = _fused("ensemble", tiny_pair)
    ids, mask = _enc(tiny_pair, PROMPTS)
    free = model.generate(ids, mask, max_new_tokens=30, eos_token_id=[])
    rows = free.sequences.tolist()
    eos, stop = rows[0][9], tiny_pair.tokenizer.decode(rows[1][5:7])
    drafter = load_lookup_drafter(tiny_pair, tiny_pair.width, corpus=lookup_corpus, num_draft_tokens=5)
    for kw in ({"eos_token_id": [eos]}, {"eos_token_id": [eos], "stop": [stop]}, {"eos_token_id": [], "stop": [stop]}):
        plain = model.generate(ids, mask, max_new_tokens=30, **kw)
        spec = model.generate(ids, mask, max_new_tokens=30, draft=drafter, **kw)
        assert torch.equal(spec.sequences, plain.sequences), kw
        assert spec.texts == plain.texts, kw
    for n in (1, 2, 5, 7):
        res = model.generate(ids, mask, max_new_tokens=n, eos_token_id=[], draft=drafter)
        assert torch.equal(res.sequences, free.sequences[:, :n])


def test_lookup_sampling_keeps_the_fused_distribution(small_pair, exact_of, tmp_path):
    """A deterministic drafter is a point-mass q: accepted with probability p(d), else p without d is sampled."""
    from sopmoe_models.lookup import load_lookup_drafter

    pair, _ = small_pair
    model = EnsembleLM(pair, 0.5, 0.5, "prob")
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcab\nbcd\ncabe\n", encoding="utf-8")
    drafter = load_lookup_drafter(pair, pair.width, corpus=corpus, num_draft_tokens=3)
    tok = pair.tokenizer
    prompt = torch.tensor([tok("abca", add_special_tokens=False)["input_ids"]])
    n, N = 4, 4000
    d = model.decoding(0.9, 1.0, 0, (), [])
    exact = exact_of(model, prompt, n, d)
    spec = model.generate(prompt.expand(N, -1), max_new_tokens=n, temperature=0.9, seed=0, eos_token_id=[], draft=drafter)
    s = spec.speculation
    assert s.drafted > N and 0.05 < s.acceptance_rate < 0.95
    V = model.width
    joint = torch.zeros((V,) * n, dtype=torch.long)
    joint.index_put_(tuple(spec.sequences.T), torch.ones(N, dtype=torch.long), accumulate=True)
    views = {f"t{i + 1}": tuple(j for j in range(n) if j != i) for i in range(n)}
    views |= {f"t{i + 1}t{i + 2}": tuple(j for j in range(n) if j not in (i, i + 1)) for i in range(n - 1)}
    for name, axes in views.items():
        p = _chi2_p(joint.sum(axes), exact.sum(axes))
        assert p > 1e-4, f"{name}: lookup-speculative samples do not follow the fused distribution (p={p:.2e})"


def test_lookup_loading_and_corpus_formats(tiny_pair, tmp_path):
    from sopmoe_models.lookup import LookupDrafter, corpus_texts, load_lookup_drafter

    (tmp_path / "a.jsonl").write_text('{"output": "答:好"}\n\n{"text": "步骤1"}\n', encoding="utf-8")
    assert corpus_texts(tmp_path / "a.jsonl") == ["答:好", "步骤1"]
    (tmp_path / "b.txt").write_text("第一行\n\n第二行\n", encoding="utf-8")
    assert corpus_texts(tmp_path / "b.txt") == ["第一行", "第二行"]
    (tmp_path / "c.jsonl").write_text('{"input": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="'output' or 'text'"):
        corpus_texts(tmp_path / "c.jsonl")
    with pytest.raises(FileNotFoundError, match="draft corpus"):
        load_lookup_drafter(tiny_pair, tiny_pair.width, corpus=tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match="num_draft_tokens must be >= 1"):
        LookupDrafter(tiny_pair.width, num_draft_tokens=0)
    assert resolve_draft("lookup") == "lookup" and resolve_draft("LOOKUP ") == "lookup"
    d = load_lookup_drafter(tiny_pair, tiny_pair.width, corpus=tmp_path / "a.jsonl", max_ngram=3)
    tok = tiny_pair.tokenizer
    row = d.index(tok("请答:", add_special_tokens=False)["input_ids"])
    assert tok.decode(d.propose(row, 5)) == "好" + tok.eos_token  # the corpus answer after "答:", then its EOS
    row = d.index(tok("订单B7 订单", add_special_tokens=False)["input_ids"])
    assert tok.decode(d.propose(row, 2)) == "B7"  # prompt lookup: the row's own text after "订单"


def test_lookup_wiring_cli_and_adapter(tiny_pair_dirs, lookup_corpus, tmp_path, monkeypatch, capsys):
    """``sopmoe generate --draft lookup --draft_corpus FILE`` and the adapters' ``draft=lookup``: same answers."""
    from harness.cli import main
    from sopmoe_models.adapters.ensemble import EnsembleLMEval
    from sopmoe_models.lookup import LookupDrafter

    monkeypatch.chdir(tmp_path)
    f, s = map(str, tiny_pair_dirs)
    base = ["generate", "--foundation", f, "--sft", s, "--model", "ensemble", "--max_new_tokens", "12",
            "--prompt", "请按照SOP流程处理客户投诉:订单B7"]
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert main([*base, "--draft", "lookup", "--draft_corpus", str(lookup_corpus)]) == 0
    out = capsys.readouterr()
    assert out.out == plain and "drafter lookup, k=8 constant" in out.err and "acceptance" in out.err
    spec = EnsembleLMEval(foundation=f, sft=s, device="cpu", batch_size=2, draft="lookup",
                          draft_corpus=str(lookup_corpus), num_draft_tokens=3)
    assert isinstance(spec.drafter, LookupDrafter) and spec.drafter.num_draft_tokens == 3
    plain_lm = EnsembleLMEval(foundation=f, sft=s, device="cpu", batch_size=2)
    assert spec.generate_until(_gen_requests()) == plain_lm.generate_until(_gen_requests())
    info = spec.get_model_info()["sopmoe"]["speculation"]
    assert info["draft"] == "lookup" and info["draft_corpus"] == str(lookup_corpus) and info["drafted"] > 0
