"""What the benchmarks share: offline environment, the random expert pairs they time, and the interleaved timer.

Imported by the scripts in this folder as ``from common import ...`` (``python benchmarks/bench_x.py`` puts this
folder first on ``sys.path``). Importing it sets the offline variables before torch or transformers load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from sopmoe_models.data import load_jsonl  # noqa: E402
from training.testbed import (  # noqa: E402
    TestbedSpec,
    build_tokenizer,
    new_model,
    perturb_like_a_fine_tune_,
    save_pair,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "data"
SHAPES = {
    "testbed": TestbedSpec(),  # hidden 128, 2 layers: the shape `sopmoe testbed` trains
    "large": replace(TestbedSpec(), hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8,
                     num_kv_heads=4, max_position_embeddings=512),
}


def task_tokenizer():
    """The test bed's character tokenizer, trained on the shipped task data."""
    examples = [ex for f in sorted(DATA.glob("*.jsonl")) for ex in load_jsonl(f)]
    return build_tokenizer((ex.input + ex.output for ex in examples), max_length=512)


def random_pair(root: Path, shape: str | TestbedSpec, tok=None, noise: float | None = 0.3) -> tuple[Path, Path]:
    """Save a random foundation and an sft under ``root``; returns their folders.

    ``noise``: the sft is the foundation plus ``noise`` × each tensor's std of Gaussian noise (experts that agree
    in shape and roughly in output, as a fine-tune does); ``None``: an independently initialised sft.
    """
    spec = SHAPES[shape] if isinstance(shape, str) else shape
    tok = tok or task_tokenizer()
    foundation, sft = new_model(spec, tok, seed=0), new_model(spec, tok, seed=1)
    if noise is not None:
        perturb_like_a_fine_tune_(sft, foundation, noise, seed=1)
    return save_pair(root, foundation, sft, tok)


def loglikelihood_requests(tok, n: int, length: int, cont: int) -> list:
    """``n`` lm-eval loglikelihood requests of ``length`` context + ``cont`` continuation tokens, cut from the shipped
    task data (overlapping windows, so any ``n`` fits)."""
    from lm_eval.api.instance import Instance

    rows = [ex for f in sorted(DATA.glob("*.jsonl")) for ex in load_jsonl(f)]
    ids = tok("".join(ex.input + ex.output for ex in rows), add_special_tokens=False)["input_ids"]
    mid = len(ids) // 2
    assert mid > length + n * 7, "the shipped task data is too short for this many requests of this length"
    reqs = []
    for i in range(n):
        ctx = tok.decode(ids[i * 7 : i * 7 + length])
        out = tok.decode(ids[mid + i * 5 : mid + i * 5 + cont])
        reqs.append(Instance("loglikelihood", {}, (ctx, out), i))
    return reqs


def weight_bytes(*modules) -> int:
    """Bytes of the storage behind the modules' parameters, each storage once (tied weights, shared experts);
    a quantized tensor (torchao's subclasses) counts its integer data and scales, not a dense copy. Read from the
    tensors, so memory-mapped weights count whether or not their pages were touched yet."""
    seen, total = set(), 0
    for mod in modules:
        for p in mod.parameters():
            for t in _plain_tensors(p):
                storage = t.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key not in seen:
                    seen.add(key)
                    total += key[1]
    return total


def _plain_tensors(t) -> list:
    import torch

    if type(t) in (torch.Tensor, torch.nn.Parameter):
        return [t]
    names = t.__tensor_flatten__()[0] if hasattr(t, "__tensor_flatten__") else []
    return [x for n in names for x in _plain_tensors(getattr(t, n))]


def task_data_file(root: Path) -> Path:
    """All shipped task data as one training JSONL under ``root`` (for benchmarks that need a data file)."""
    data = root / "train.jsonl"
    data.write_text("".join(f.read_text(encoding="utf-8") for f in sorted(DATA.glob("*.jsonl"))), encoding="utf-8")
    return data


def best_seconds(fns: dict[str, Callable[[], object]], repeats: int,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Best time of each function after one warm-up each; interleaved so load drift on a shared machine hits all
    alike. ``clock``: ``time.perf_counter`` (wall) or ``time.process_time`` (this process's CPU seconds)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], clock() - t0)
    return best


def bed_config(tb: Path):
    """The bed's own ``config.yaml`` through sopmoe's config loader (the defaults when the bed has none): its prompt
    format (the real bed's is ``chat``; the test bed's ``raw``) and its experts' dtype (the real bed's is
    ``bfloat16``), so the bed is timed as it is run, HF generate and the fused models alike."""
    from sopmoe_models.config import load_config

    cfg = tb / "config.yaml"
    return load_config(cfg if cfg.is_file() else None, use_default=False)


def bed_prompt_format(tb: Path) -> str:
    return bed_config(tb).data.prompt_format


def bed_dtype(tb: Path) -> str:
    """The experts' dtype of the bed's config; float32 for a bed without one (what its experts were trained in)."""
    return bed_config(tb).models.foundation.dtype if (tb / "config.yaml").is_file() else "float32"
