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

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sopmoe_models.compat import cache_kwarg, output_cache  # noqa: F401 (re-exported: the cache seam lives in compat)
from sopmoe_models.errors import UserError

if TYPE_CHECKING:
    from sopmoe_models.config import SopmoeConfig

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8", "int4")  # models.*.quantization (config.py spells the same three)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A folder holds a tokenizer when it has one of these (the vocabulary itself; tokenizer_config.json alone is not one).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# What transformers (5.x) loads as a causal LM's weights from a local folder, besides config.json: single-file and
# sharded safetensors and torch ``.bin`` (with their ``*.index.json``), and a PEFT adapter (adapter_config.json plus
# adapter_model.safetensors / .bin). ``.pt``/``.pth``, TF (``.h5``) and Flax (``.msgpack``) files are never loaded by
# ``from_pretrained`` here, so they are not part of the identity.
WEIGHT_PATTERNS = ("*.bin", "*.index.json", "adapter_config.json")


class ExpertMismatchError(UserError):
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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` -> cuda:0 when present, else cpu; any other device must exist on this machine (else a UserError)."""
    if device in (None, "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    check_device_available(dev)
    return dev


def check_device_available(dev: torch.device) -> None:
    """A :class:`UserError` naming the device when this machine lacks it (a GPU index past the last, no CUDA)."""
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise UserError(f"device {str(dev)!r} is not on this machine ({n} CUDA device(s)); set "
                            "models.foundation.device / models.sft.device (or --device) to auto, cpu or an existing GPU")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' is not available on this machine; use auto or cpu")


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
    """The folder's own tokenizer; a folder without tokenizer files is an error (transformers would otherwise build
    an empty tokenizer from config.json, and two empty tokenizers look identical)."""
    from transformers import AutoTokenizer

    path = Path(path).expanduser()
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer "
                                "with the model (tokenizer.save_pretrained(DIR))")
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if len(tok) < 2:
        raise FileNotFoundError(f"{path}: the tokenizer has {len(tok)} token(s); its files are incomplete")
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


def load_model(path: str | Path, *, dtype: str | torch.dtype | None = "auto", device: str | None = "auto", role="model",
               quantization: str | None = "none"):
    """Load one causal LM from a local folder, frozen and in eval mode; ``quantization`` int8/int4 quantizes its
    linear weights as they load (:func:`quantization_config`), on the device it runs on."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(path, role)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    qcfg = quantization_config(quantization, dev, torch_dtype, role)
    if qcfg is None:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=False)
        model.to(dev)
    else:  # quantized while loading, straight onto the device (int4's packing is CUDA's)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=False,
                                                     quantization_config=qcfg, device_map={"": dev})
        model.sopmoe_quantization = quantization
    model.eval().requires_grad_(False)
    return model


def quantization_key(role: str) -> str:
    """The setting that names a role's quantization, for messages (config key and lm-eval model argument)."""
    if role in ("foundation", "sft"):
        arg = "quantization" if role == "foundation" else "sft_quantization"
        return f"models.{role}.quantization (lm-eval model argument {arg}=)"
    return "quantization"


def quantization_config(quantization: str | None, device: torch.device, dtype: torch.dtype, role: str = "model"):
    """transformers' ``TorchAoConfig`` for ``quantization`` (None for ``none``): weight-only, the activations stay
    in ``dtype``, and the embeddings and output layer stay unquantized (transformers' default), so the output rows
    and the parity rule are those of the expert.

    torchao, because it is the one backend whose int8 runs on the CPU and on CUDA alike (bitsandbytes' 8-bit is
    CUDA's; a CPU-tested path is the one CI checks). ``int8``: ``Int8WeightOnlyConfig`` (per-channel int8 weights,
    half of bf16), on any device. ``int4``: ``Int4WeightOnlyConfig`` (group size 128, the ``tile_packed_to_4d``
    layout of torch's tinygemm int4 kernel, a quarter of bf16), CUDA and bfloat16 only: torchao 0.18's int4 layouts
    have no CPU kernel (its CPU int4 stores the weights unpacked in int8, no smaller than ``int8``)."""
    if quantization in (None, "none"):
        return None
    key = quantization_key(role)
    if quantization not in QUANTIZATIONS:
        raise UserError(f"{key}: {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError:
        raise UserError(f"{key}={quantization} needs torchao: pip install 'sopmoe[quant]' (or set it to none)") from None
    from transformers import TorchAoConfig

    if quantization == "int8":
        return TorchAoConfig(quant_type=Int8WeightOnlyConfig())
    if device.type != "cuda":
        raise UserError(f"{key}=int4 needs a CUDA device (torchao's int4 weight kernels are CUDA's); on {device.type} "
                        "use int8")
    if dtype != torch.bfloat16:
        raise UserError(f"{key}=int4 runs in bfloat16 (torch's int4 kernel); set the dtype to bfloat16 or auto")
    return TorchAoConfig(quant_type=Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))


def quantization_of(model: nn.Module) -> str:
    """``none``, sopmoe's ``int8``/``int4``, or the method a pre-quantized checkpoint's config names (e.g. ``gptq``)."""
    label = getattr(model, "sopmoe_quantization", None)
    if label:
        return label
    q = getattr(getattr(model, "config", None), "quantization_config", None)
    if q is None:
        return "none"
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return str(getattr(method, "value", method) or "quantized")


def check_full_precision(model: nn.Module, role: str, what: str) -> None:
    """Refuse to write a checkpoint (``what``: a merge, an MoE) from quantized weights: a :class:`UserError`
    naming the role's setting. Quantized experts are for running (fused models, evaluation), never for writing."""
    q = quantization_of(model)
    if q != "none":
        raise UserError(f"{what} needs the {role}'s full-precision weights, but it is loaded quantized ({q}): set "
                        f"{quantization_key(role)} to none (quantized experts run the fused models; they are never "
                        "written into a checkpoint)")


def load_experts(
    foundation: str | Path,
    sft: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    sft_dtype: str | torch.dtype | None = None,
    sft_device: str | None = None,
    quantization: str = "none",
    sft_quantization: str | None = None,
) -> ExpertPair:
    """Load foundation and sft (frozen, eval) with one shared, checked tokenizer.

    ``device`` places the foundation; ``sft_device`` (default: same as ``device``) places the sft, so two GPUs can
    hold one expert each. Fused models move tensors between the two devices as needed. ``quantization`` (and
    ``sft_quantization``, default the same): ``none``, ``int8`` or ``int4`` weights (:func:`quantization_config`).
    """
    foundation, sft = check_model_dir(foundation, "foundation"), check_model_dir(sft, "sft")
    tok_f = load_tokenizer(foundation)
    if not same_tokenizer_files(foundation, sft):  # identical files load to the identical tokenizer
        check_same_tokenizer(tok_f, load_tokenizer(sft))
    f_model = load_model(foundation, dtype=dtype, device=device, role="foundation", quantization=quantization)
    s_model = load_model(sft, dtype=sft_dtype or dtype, device=sft_device or device, role="sft",
                         quantization=sft_quantization or quantization)
    check_same_architecture(f_model, s_model, strict_shapes=False)
    return ExpertPair(f_model, s_model, tok_f, usable_vocab_size(tok_f, f_model, s_model), str(foundation), str(sft))


def load_experts_from_config(cfg: SopmoeConfig) -> ExpertPair:
    """:func:`load_experts` with the ``models`` section of a :class:`sopmoe_models.config.SopmoeConfig`."""
    m = cfg.models
    if not m.foundation.path or not m.sft.path:
        raise ValueError("models.foundation.path and models.sft.path must be set (config or --foundation/--sft)")
    return load_experts(
        m.foundation.path, m.sft.path, dtype=m.foundation.dtype, device=m.foundation.device,
        sft_dtype=m.sft.dtype, sft_device=m.sft.device,
        quantization=m.foundation.quantization, sft_quantization=m.sft.quantization,
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
    """A cheap, stable identity of a model folder: ``config.json`` plus every file transformers would load as its
    weights (``*.safetensors`` and :data:`WEIGHT_PATTERNS`): each file's name, size, first and last MiB.

    Hashing 16 GB of an 8B model would take minutes; the safetensors header (names, shapes, offsets) plus the first
    and last MiB of every shard changes whenever the weights do in practice (any training step touches them all), and
    a ``.bin`` is a zip whose central directory at the end holds the CRC-32 of every tensor. Files are hashed in
    the order config, ``*.safetensors``, then the rest, so a folder of config + safetensors keeps the fingerprint it
    had before ``.bin``/index/adapter files counted (see :func:`legacy_fingerprint_matches`).
    """
    return _fingerprint(Path(path), legacy=False)


def legacy_fingerprint_matches(path: str | Path, recorded: str) -> bool:
    """Whether ``recorded`` is the folder's fingerprint as computed before index/``.bin``/adapter files counted
    (config + ``*.safetensors``), and that older identity still covers every weight the folder loads (no ``.bin``,
    no adapter): then a router recorded with it is beside the same weights."""
    path = Path(path)
    if any(path.glob("*.bin")) or (path / "adapter_config.json").exists():
        return False
    return _fingerprint(path, legacy=True) == recorded


def _fingerprint(path: Path, legacy: bool) -> str:
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            h.update(json.dumps(json.loads(cfg.read_text(encoding="utf-8")), sort_keys=True).encode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{cfg}: not valid JSON ({e}); the model folder is damaged") from None
    files = sorted(path.glob("*.safetensors"))
    if not legacy:
        files += sorted({f for pattern in WEIGHT_PATTERNS for f in path.glob(pattern) if f.is_file()} - set(files))
    for f in files:
        _hash_file(h, f)
    return h.hexdigest()[:16]


def _hash_file(h, f: Path) -> None:
    size = f.stat().st_size
    h.update(f.name.encode() + str(size).encode())
    with f.open("rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(size - (1 << 20), 1 << 20))
            h.update(fh.read())


def nonfinite_parameters(model: nn.Module, limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) parameters/buffers holding NaN or infinity."""
    bad = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad
