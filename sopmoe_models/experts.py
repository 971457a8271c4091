"""The one expert-pair loader: every ``from_pretrained`` of foundation + sft goes through :func:`load_experts`.

It checks the two tokenizers agree (vocab and special tokens), records the tokenizer's vocabulary (``vocab_size``)
and the experts' output width (``width``: lm_head rows may be padded past the tokenizer, e.g. Qwen3 151669 ->
151936), places each expert on its own dtype/device, freezes both, and never enables ``trust_remote_code``.

**The parity rule** (every fused model follows it): each expert's distribution is its own log-softmax over *all* its
output rows, exactly as the expert alone (``--model hf``, ``generate``) normalises it, and fused distributions live
on the full padded width. Nothing is ever renormalised over the tokenizer's vocabulary: padded rows are outcomes like
any other (a trained checkpoint gives them almost no mass, since they are never targets). So a fused model at a pure
weight *is* its expert, on every checkpoint: the same log-likelihoods, the same greedy argmax, the same generated ids
(a padded id only where the expert alone would generate it). An expert with fewer rows than ``width`` gives the
missing ids probability 0.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExpertMismatchError(ValueError):
    """The two experts cannot be fused (different tokenizers, architectures or shapes)."""


@dataclass
class ExpertPair:
    """Two frozen causal LMs that share a tokenizer.

    ``vocab_size`` is the tokenizer's vocabulary (ids that are tokens); ``width`` the number of output rows fused
    distributions cover (the larger expert's lm_head, padded rows included; default: read from the experts).
    """

    foundation: nn.Module
    sft: nn.Module
    tokenizer: Any
    vocab_size: int
    foundation_path: str | None = None
    sft_path: str | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        if self.width is None:
            self.width = output_width(self.foundation, self.sft)

    @property
    def experts(self) -> tuple[nn.Module, nn.Module]:
        return (self.foundation, self.sft)

    @property
    def names(self) -> tuple[str, str]:
        return ("foundation", "sft")

    def fingerprints(self) -> dict[str, str | None]:
        return {
            "foundation": fingerprint(self.foundation_path) if self.foundation_path else None,
            "sft": fingerprint(self.sft_path) if self.sft_path else None,
        }


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_model_dir(path: str | Path, role: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{role} model folder {path} does not exist (set models.{role}.path or --{role})")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{role} model folder {path} has no config.json: not a transformers model folder")
    return path


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_same_tokenizer(tok_a: Any, tok_b: Any, name_a: str = "foundation", name_b: str = "sft") -> None:
    """Raise :class:`ExpertMismatchError` unless both tokenizers map every string to the same ids."""
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:3]
        only_b = sorted(set(vb) - set(va))[:3]
        differ = sorted(k for k in set(va) & set(vb) if va[k] != vb[k])[:3]
        raise ExpertMismatchError(
            f"the {name_a} and {name_b} tokenizers differ (sizes {len(va)} vs {len(vb)}; only in {name_a}: {only_a}; "
            f"only in {name_b}: {only_b}; different ids: {differ}); fusion needs one shared tokenizer"
        )
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        a, b = getattr(tok_a, attr, None), getattr(tok_b, attr, None)
        if a != b:
            raise ExpertMismatchError(f"the {name_a} and {name_b} tokenizers differ in {attr}: {a!r} vs {b!r}")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt")


def same_tokenizer_files(a: Path, b: Path) -> bool:
    """Whether two model folders hold byte-identical tokenizer files (then loading the second is redundant: a
    152k-token tokenizer takes seconds to load and its vocabulary a second to compare)."""
    for name in TOKENIZER_FILES:
        fa, fb = a / name, b / name
        if fa.is_file() != fb.is_file() or fa.is_file() and fa.read_bytes() != fb.read_bytes():
            return False
    return (a / "tokenizer.json").is_file() or (a / "tokenizer_config.json").is_file()


def usable_vocab_size(tokenizer: Any, *models: nn.Module) -> int:
    """The tokenizer's vocabulary, which must fit inside every model's (possibly padded) output layer."""
    n = len(tokenizer)
    for m in models:
        rows = output_rows(m)
        if rows < n:
            raise ExpertMismatchError(f"model has {rows} output rows but the tokenizer has {n} tokens")
    return n


def output_rows(model: nn.Module) -> int:
    """Rows of a causal LM's output layer (the width of its next-token distribution)."""
    return int(model.get_output_embeddings().weight.shape[0])


def output_width(*models: nn.Module) -> int:
    """The width fused distributions cover: the most output rows of any expert (see the parity rule above)."""
    return max(output_rows(m) for m in models)


def load_model(path: str | Path, *, dtype: str | torch.dtype | None = "auto", device: str | None = "auto", role="model"):
    """Load one causal LM from a local folder, frozen and in eval mode."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, role)
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype, dev), trust_remote_code=False)
    model.to(dev).eval().requires_grad_(False)
    return model


def load_experts(
    foundation: str | Path,
    sft: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    sft_dtype: str | torch.dtype | None = None,
    sft_device: str | None = None,
) -> ExpertPair:
    """Load foundation and sft (frozen, eval) with one shared, checked tokenizer.

    ``device`` places the foundation; ``sft_device`` (default: same as ``device``) places the sft, so two GPUs can
    hold one expert each. Fused models move tensors between the two devices as needed.
    """
    foundation, sft = check_model_dir(foundation, "foundation"), check_model_dir(sft, "sft")
    tok_f = load_tokenizer(foundation)
    if not same_tokenizer_files(foundation, sft):  # identical files load to the identical tokenizer
        check_same_tokenizer(tok_f, load_tokenizer(sft))
    f_model = load_model(foundation, dtype=dtype, device=device, role="foundation")
    s_model = load_model(sft, dtype=sft_dtype or dtype, device=sft_device or device, role="sft")
    check_same_architecture(f_model, s_model, strict_shapes=False)
    return ExpertPair(f_model, s_model, tok_f, usable_vocab_size(tok_f, f_model, s_model), str(foundation), str(sft))


def load_experts_from_config(cfg) -> ExpertPair:
    """:func:`load_experts` with the ``models`` section of a :class:`harness.config.SopmoeConfig`."""
    m = cfg.models
    if not m.foundation.path or not m.sft.path:
        raise ValueError("models.foundation.path and models.sft.path must be set (config or --foundation/--sft)")
    return load_experts(
        m.foundation.path, m.sft.path, dtype=m.foundation.dtype, device=m.foundation.device,
        sft_dtype=m.sft.dtype, sft_device=m.sft.device,
    )


def check_same_architecture(a: nn.Module, b: nn.Module, *, strict_shapes: bool = True) -> None:
    """Refuse two models of different architectures; with ``strict_shapes`` also any differing tensor shape."""
    ta, tb = type(a).__name__, type(b).__name__
    if ta != tb:
        raise ExpertMismatchError(f"the experts are different architectures: {ta} vs {tb}")
    if not strict_shapes:
        return
    sa, sb = a.state_dict(), b.state_dict()
    for name in sorted(set(sa) | set(sb)):
        if name not in sa or name not in sb:
            raise ExpertMismatchError(f"tensor {name} exists in only one of the experts")
        if sa[name].shape != sb[name].shape:
            raise ExpertMismatchError(f"tensor {name} differs in shape: {tuple(sa[name].shape)} vs {tuple(sb[name].shape)}")


def fingerprint(path: str | Path) -> str:
    """A cheap, stable identity of a model folder: config plus each weight file's size, header and edges.

    Hashing 16 GB of an 8B model would take minutes; the safetensors header (names, shapes, offsets) plus the first
    and last MiB of every shard changes whenever the weights do in practice (any training step touches them all).
    """
    path = Path(path)
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.is_file():
        h.update(json.dumps(json.loads(cfg.read_text()), sort_keys=True).encode())
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f.name.encode() + str(size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 1 << 20:
                fh.seek(max(size - (1 << 20), 1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def cache_kwarg(model: nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; use whichever this version's forward takes."""
    return _cache_kwarg(type(model))


@functools.cache
def _cache_kwarg(cls: type) -> str:
    # per class, not per call: inspect.signature costs ~0.1 ms, paid twice per decoding step otherwise
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)
