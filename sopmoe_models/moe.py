"""The fused pair as one standard Mixture-of-Experts checkpoint (Branch-Train-MiX, Sukhbaatar et al. 2024,
https://arxiv.org/abs/2403.07816).

BTX turns several fine-tunes of one seed model into one MoE: in every decoder layer the experts' feed-forward blocks
become the experts of one MoE layer, the remaining weights (embeddings, attention, norms, head) come from one source,
and a router per layer is trained. Written in the hub's own layout, the result is an ordinary checkpoint that
transformers, lm-eval's ``hf``, vLLM, SGLang and llama.cpp run, and shard with their tensor / expert parallelism:

==================  ===========================  =========================================================
dense experts       MoE architecture             per-layer tensors (E = expert 0 foundation, 1 sft)
==================  ===========================  =========================================================
Qwen3               ``Qwen3MoeForCausalLM``      ``mlp.experts.E.{gate,up,down}_proj``, ``mlp.gate``
Llama, Mistral      ``MixtralForCausalLM``       ``block_sparse_moe.experts.E.{w1,w3,w2}``, ``block_sparse_moe.gate``
Qwen2               ``Qwen2MoeForCausalLM``      as Qwen3, plus a zero shared expert (its output is exactly 0)
==================  ===========================  =========================================================

Anything else is refused by name. :func:`build_moe` streams tensors shard by shard (an 8B pair never has to fit in
memory at once) and writes the folder whole (hidden temporary sibling, then rename): ``config.json``, safetensors
(sharded with an index past :data:`SHARD_BYTES`), the tokenizer and chat template, ``generation_config.json``, a
model card ``README.md`` and ``moe.json`` (what it was built from, with fingerprints).

Exactness. Routing weights are normalised over the chosen experts (``norm_topk_prob``; Mixtral always normalises),
so a token sent to one expert gets exactly that expert's block, and the MoE built from (F, F) *is* F for any gates;
shared weights and gates forced to the sft (with ``attention="sft"``) give the sft. Heads stay as they were (padded
rows, tied or untied). transformers' default expert kernel (``grouped_mm``) needs rows whose byte length is a
multiple of 16; an expert width that is not a multiple of :data:`ALIGN` is zero-padded, which is exact: the padded
units compute silu(0)·0 = 0 and their ``down_proj`` columns are 0.

Gates. ``zero``: every gate row 0, so top-2 mixes the experts 0.5/0.5 (top-1 then sends every token to expert 0).
``hidden`` (mergekit-moe's idea, our own code): in each layer, each expert's gate row is the mean router input over
the prompts where that expert is the better one (:func:`hidden_gate_rows`), normalised, so a token is routed by
cosine similarity to each expert's typical state. With top-1 and normalised weights the chosen expert's weight is
always 1 and the gate gets no gradient, so gates are trained at top-2 and may be served at top-1 (train soft, serve
hard): :func:`with_top_k` re-serves a checkpoint at another k without touching its weights.

Cost per token (:func:`inference_cost`): attention, embeddings and head once, k feed-forward blocks, in multiply-adds
relative to one dense expert; top-1 is a 1× fusion.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sopmoe_models.errors import UserError
from sopmoe_models.experts import ExpertMismatchError

log = logging.getLogger(__name__)

ALIGN = 16  # expert widths are zero-padded to a multiple of this many units (16 bytes even at one byte per value)
SHARD_BYTES = 4 << 30  # tensors per safetensors shard before a new one starts (the hub's usual ~4-5 GB)
EXPERTS = ("foundation", "sft")  # expert 0, expert 1: the MoE's experts in this order everywhere
ATTENTION = ("foundation", "sft", "mean")
GATE_INITS = ("zero", "hidden")
CARD = "moe.json"
CARD_FORMAT = 1
# Files copied from the source of the shared weights besides the weights and config (tokenizer, chat template,
# generation defaults).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
              "generation_config.json")
# Config keys that never describe the network (compared when checking that two experts are one architecture).
VOLATILE_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "use_cache", "architectures",
                 "bos_token_id", "eos_token_id", "pad_token_id", "output_router_logits"}


@dataclass(frozen=True)
class MoeForm:
    """How one dense architecture is written as an MoE: its type, tensor names and the config keys it sets."""

    dense: tuple[str, ...]  # model_type(s) of the dense experts
    model_type: str
    architecture: str
    block: str  # the per-layer MoE module name (``mlp`` or ``block_sparse_moe``)
    proj: dict[str, str]  # dense projection -> expert projection name
    experts_key: str  # config key holding the number of experts
    width_key: str  # config key holding an expert's intermediate width
    fixed: dict[str, Any] = field(default_factory=dict)  # config keys every checkpoint of this form gets
    refuse_true: tuple[str, ...] = ()  # dense config flags the MoE form cannot represent
    shared_expert: bool = False  # Qwen2-MoE always runs a shared expert: written as zeros

    def expert_name(self, layer: int, expert: int, proj: str) -> str:
        return f"model.layers.{layer}.{self.block}.experts.{expert}.{self.proj[proj]}.weight"

    def gate_name(self, layer: int) -> str:
        return f"model.layers.{layer}.{self.block}.gate.weight"


_SAME = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}
_QWEN_MOE = {"decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "output_router_logits": False}
FORMS = {
    "qwen3": MoeForm(("qwen3",), "qwen3_moe", "Qwen3MoeForCausalLM", "mlp", _SAME, "num_experts",
                     "moe_intermediate_size", _QWEN_MOE),
    "llama": MoeForm(("llama", "mistral"), "mixtral", "MixtralForCausalLM", "block_sparse_moe",
                     {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}, "num_local_experts", "intermediate_size",
                     {"router_jitter_noise": 0.0, "output_router_logits": False},
                     refuse_true=("attention_bias", "mlp_bias")),
    "qwen2": MoeForm(("qwen2",), "qwen2_moe", "Qwen2MoeForCausalLM", "mlp", _SAME, "num_experts",
                     "moe_intermediate_size", {**_QWEN_MOE, "qkv_bias": True, "shared_expert_intermediate_size": ALIGN},
                     shared_expert=True),
}
MOE_TYPES = {f.model_type for f in FORMS.values()}


def form_for(model_type: str) -> MoeForm:
    for form in FORMS.values():
        if model_type in form.dense:
            return form
    known = ", ".join(f"{'/'.join(f.dense)} -> {f.architecture}" for f in FORMS.values())
    raise UserError(f"model_type {model_type!r} has no MoE form in sopmoe ({known}); fuse it with the ensemble or "
                    "a router instead")


# --- reading the experts ---------------------------------------------------------------------------------------
def read_config(folder: Path) -> dict[str, Any]:
    from sopmoe_models.outputs import read_json

    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: no config.json (not a transformers model folder)")
    cfg = read_json(path, "; the model folder is damaged")
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise UserError(f"{path}: no model_type; not a transformers model config")
    return cfg


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no *.safetensors weights (sopmoe moe reads safetensors only; re-save the model "
                        "with save_pretrained(safe_serialization=True))")
    return files


class Weights:
    """Lazy access to a folder's safetensors tensors by name (each shard opened once)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.handles = [safe_open(str(f), "pt") for f in weight_files(folder)]
        self.where = {name: h for h in self.handles for name in h.keys()}

    def names(self) -> list[str]:
        return sorted(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)


def check_pair(f_cfg: dict, s_cfg: dict, f: Weights, s: Weights) -> None:
    """Refuse two experts that are not one architecture with one set of shapes (naming the first difference)."""
    if f_cfg["model_type"] != s_cfg["model_type"]:
        raise ExpertMismatchError(f"the experts are different architectures: {f_cfg['model_type']} vs "
                                  f"{s_cfg['model_type']}")
    for key in sorted((set(f_cfg) | set(s_cfg)) - VOLATILE_KEYS):
        if f_cfg.get(key) != s_cfg.get(key):
            raise ExpertMismatchError(f"the experts' config.json differ in {key}: {f_cfg.get(key)!r} vs "
                                      f"{s_cfg.get(key)!r}; an MoE needs one architecture")
    for name in sorted(set(f.where) | set(s.where)):
        if name not in f.where or name not in s.where:
            raise ExpertMismatchError(f"tensor {name} exists in only one of the experts")
        if f.shape(name) != s.shape(name):
            raise ExpertMismatchError(f"tensor {name} differs in shape: {f.shape(name)} vs {s.shape(name)}")


# --- the MoE config -------------------------------------------------------------------------------------------
def padded(width: int) -> int:
    return -(-width // ALIGN) * ALIGN


def moe_config(dense: dict[str, Any], form: MoeForm, *, top_k: int, aux_loss_coef: float) -> dict[str, Any]:
    """The MoE's ``config.json``: the dense config with the MoE keys of ``form`` (hub spelling)."""
    for flag in form.refuse_true:
        if dense.get(flag):
            raise UserError(f"config.json has {flag}: true, which {form.architecture} cannot represent; no MoE form "
                            "for this checkpoint (fuse it with the ensemble or a router instead)")
    width = int(dense["intermediate_size"])
    cfg = {k: v for k, v in dense.items() if k not in ("architectures", "model_type", "transformers_version")}
    cfg.update(form.fixed)
    cfg.update({"architectures": [form.architecture], "model_type": form.model_type, form.experts_key: len(EXPERTS),
                "num_experts_per_tok": top_k, form.width_key: padded(width), "router_aux_loss_coef": aux_loss_coef})
    if form.width_key != "intermediate_size":
        cfg["intermediate_size"] = padded(width)  # the dense-layer width (no layer is dense: mlp_only_layers [])
    return cfg


def inference_cost(config: dict[str, Any], top_k: int | None = None) -> float:
    """Multiply-adds per token of an MoE checkpoint relative to one dense expert (attention, embeddings and head
    once, ``top_k`` feed-forward blocks): ``(A + k·F + H) / (A + F + H)``, with the dense width (padding excluded
    when the card records it). Attention's cost in sequence length is left out (the same in both)."""
    k = top_k if top_k is not None else int(config["num_experts_per_tok"])
    h, n = int(config["hidden_size"]), int(config["num_hidden_layers"])
    heads, kv = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or h // heads)
    width = int(config.get("sopmoe_dense_intermediate_size") or config.get("moe_intermediate_size")
                or config["intermediate_size"])
    attention = n * (h * head_dim * (2 * heads + 2 * kv))  # q, o + k, v
    ffn = n * 3 * h * width
    head = h * int(config["vocab_size"])
    experts = int(config.get("num_experts") or config.get("num_local_experts") or 1)
    router = n * h * experts
    return round((attention + k * ffn + router + head) / (attention + ffn + head), 4)


# --- building -------------------------------------------------------------------------------------------------
def build_moe(foundation: str | Path, sft: str | Path, out: str | Path, *, attention: str = "mean", top_k: int = 2,
              gate_init: str = "zero", gate_prompts: list[tuple[str, int]] | None = None,
              aux_loss_coef: float = 0.01, overwrite: bool = False, provenance: dict | None = None) -> dict[str, Any]:
    """Write the MoE of (foundation, sft) to ``out`` (see the module docstring); returns its card.

    ``gate_prompts``: (formatted prompt, expert index) pairs for ``gate_init="hidden"``.
    """
    from sopmoe_models.experts import check_same_tokenizer, load_tokenizer, same_tokenizer_files
    from sopmoe_models.outputs import new_temp_dir, replace_dir, write_marker

    foundation, sft, out = Path(foundation).expanduser(), Path(sft).expanduser(), Path(out).expanduser()
    if attention not in ATTENTION:
        raise UserError(f"--attention {attention!r}: choose one of {', '.join(ATTENTION)}")
    if gate_init not in GATE_INITS:
        raise UserError(f"--gate_init {gate_init!r}: choose one of {', '.join(GATE_INITS)}")
    if top_k not in (1, 2):
        raise UserError(f"--top_k {top_k}: the MoE of two experts routes each token to 1 or 2 of them")
    if gate_init == "hidden" and not gate_prompts:
        raise UserError("--gate_init hidden needs prompts of each expert's kind (data.train_file)")
    guard_out(out, overwrite, [foundation, sft])
    f_cfg, s_cfg = read_config(foundation), read_config(sft)
    for role, cfg in (("foundation", f_cfg), ("sft", s_cfg)):
        if cfg.get("quantization_config"):  # an MoE is written from full-precision weights, never dequantized silently
            raise UserError(f"--{role}: the checkpoint is quantized ({cfg['quantization_config'].get('quant_method')}); "
                            "build the MoE from the full-precision checkpoint and quantize the MoE when you load it")
    form = form_for(f_cfg["model_type"])
    f_w, s_w = Weights(foundation), Weights(sft)
    check_pair(f_cfg, s_cfg, f_w, s_w)
    if not same_tokenizer_files(foundation, sft):
        check_same_tokenizer(load_tokenizer(foundation), load_tokenizer(sft))
    source = sft if attention == "sft" else foundation
    config = moe_config(f_cfg, form, top_k=top_k, aux_loss_coef=aux_loss_coef)
    config["sopmoe_dense_intermediate_size"] = int(f_cfg["intermediate_size"])

    tmp = new_temp_dir(out)
    try:
        shards = _write_tensors(tmp, form, config, f_w, s_w, attention)
        for name in SIDE_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if gate_init == "hidden":
            rows = hidden_gate_rows(tmp, gate_prompts)
            _rewrite_tensors(tmp, shards, {form.gate_name(i): r for i, r in enumerate(rows)})
        card = _card(foundation, sft, form, config, attention=attention, gate_init=gate_init,
                     gate_prompts=gate_prompts, provenance=provenance)
        (tmp / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(card), encoding="utf-8")
        write_marker(tmp, "moe")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    log.info("moe: %s (%s, top-%d, gates %s, shared weights from %s) -> %s", form.architecture,
             f"{config['num_hidden_layers']} layers", top_k, gate_init, attention, out)
    return card


def guard_out(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse an --out that is or holds an input (always), an existing one without --overwrite, and with it any
    folder ``sopmoe moe`` did not write."""
    from sopmoe_models.outputs import has_content, overlaps, written_by

    for inp in inputs:
        hit = overlaps(out, [inp]) or ([inp] if Path(inp).resolve() in Path(out).resolve().parents else [])
        if hit:
            raise UserError(f"--out {out} is, holds or lies inside an expert ({inp}); choose another --out")
    if not has_content(out):
        return
    if not overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it (only a folder sopmoe moe "
                        "wrote), or choose another --out")
    if not out.is_dir() or out.is_symlink() or not written_by(out, "moe"):
        raise UserError(f"--out {out} was not written by sopmoe moe (no .sopmoe.json marker saying so); --overwrite "
                        "never deletes other folders: choose another --out")


def _tensors(form: MoeForm, config: dict, f: Weights, s: Weights, attention: str):
    """(name, tensor) of the MoE in write order: the dense tensors with the FFNs split into experts."""
    dense_width = int(config["sopmoe_dense_intermediate_size"])
    width = int(config[form.width_key])
    hidden = int(config["hidden_size"])
    for name in f.names():
        parts = name.split(".")
        if len(parts) == 6 and parts[:2] == ["model", "layers"] and parts[3] == "mlp" and parts[4] in form.proj:
            layer, proj = int(parts[2]), parts[4]
            for e, w in enumerate((f, s)):
                t = w.get(name)
                pad = width - dense_width
                if pad:  # exact: padded units are silu(0) * 0 = 0 and contribute nothing through down_proj
                    t = torch.nn.functional.pad(t, (0, pad) if proj == "down_proj" else (0, 0, 0, pad))
                yield form.expert_name(layer, e, proj), t
            if proj == "down_proj":
                dtype = t.dtype
                yield form.gate_name(layer), torch.zeros(len(EXPERTS), hidden, dtype=dtype)
                if form.shared_expert:
                    shared = config["shared_expert_intermediate_size"]
                    pre = f"model.layers.{layer}.mlp.shared_expert"
                    yield f"{pre}.gate_proj.weight", torch.zeros(shared, hidden, dtype=dtype)
                    yield f"{pre}.up_proj.weight", torch.zeros(shared, hidden, dtype=dtype)
                    yield f"{pre}.down_proj.weight", torch.zeros(hidden, shared, dtype=dtype)
                    yield f"model.layers.{layer}.mlp.shared_expert_gate.weight", torch.zeros(1, hidden, dtype=dtype)
            continue
        if attention == "foundation":
            yield name, f.get(name)
        elif attention == "sft":
            yield name, s.get(name)
        else:  # BTX: the mean of the experts' other weights (in float32, back to the stored dtype)
            a, b = f.get(name), s.get(name)
            yield name, ((a.float() + b.float()) / 2).to(a.dtype) if a.is_floating_point() else a


def _write_tensors(folder: Path, form: MoeForm, config: dict, f: Weights, s: Weights, attention: str) -> dict[str, str]:
    """Write the MoE's tensors as safetensors shards (with an index when there are several); returns
    ``{tensor name: shard file}``."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in _tensors(form, config, f, s, attention):
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += nbytes
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    where: dict[str, str] = {}
    total = 0
    for file, tensors in zip(files, shards):
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        where.update(dict.fromkeys(tensors, file))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(where.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return where


def _rewrite_tensors(folder: Path, where: dict[str, str], new: dict[str, torch.Tensor]) -> None:
    """Replace some tensors in the shards that hold them (each such shard rewritten whole)."""
    from safetensors.torch import load_file, save_file

    for file in sorted({where[name] for name in new}):
        tensors = load_file(str(folder / file))
        for name, t in new.items():
            if where[name] == file:
                tensors[name] = t.to(tensors[name].dtype).contiguous()
        tmp = folder / f".{file}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / file)


# --- gates from hidden states --------------------------------------------------------------------------------------
@torch.inference_mode()
def hidden_gate_rows(folder: Path, prompts: list[tuple[str, int]], batch_size: int = 8) -> list[torch.Tensor]:
    """Per layer, a (2, hidden) gate: row e = the mean router input over the prompt tokens of the prompts labelled
    e, divided by its norm (mergekit-moe's ``hidden`` gate mode, computed here on the MoE itself with zero gates, so
    each layer sees the residual stream the MoE really produces)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    blocks = [moe_block(layer) for layer in model.model.layers]
    sums = torch.zeros(len(blocks), len(EXPERTS), model.config.hidden_size, dtype=torch.float64)
    counts = torch.zeros(len(EXPERTS), dtype=torch.float64)
    current: dict[str, Any] = {}

    def hook(i):
        def pre(_module, args):
            h, m = args[0].double(), current["mask"]
            for e in range(len(EXPERTS)):
                rows = (m * (current["label"] == e)[:, None]).unsqueeze(-1)  # (B, T, 1) tokens of expert e's prompts
                sums[i, e] += (h * rows).sum((0, 1))
        return pre

    handles = [b.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tok([p for p, _ in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            current["mask"] = enc["attention_mask"].double()
            current["label"] = torch.tensor([e for _, e in chunk])
            for e in range(len(EXPERTS)):
                counts[e] += float((enc["attention_mask"].sum(1) * (current["label"] == e)).sum())
            model(**enc)
    finally:
        for h in handles:
            h.remove()
    if (counts == 0).any():
        missing = [EXPERTS[e] for e in range(len(EXPERTS)) if counts[e] == 0]
        raise UserError(f"--gate_init hidden: no prompt where the {missing[0]} expert is the better one; use "
                        "--gate_init zero or training data of both kinds")
    means = sums / counts[None, :, None]
    return [(m / m.norm(dim=-1, keepdim=True).clamp(min=1e-12)).float() for m in means]


# --- re-serving and records ------------------------------------------------------------------------------------------
def with_top_k(src: str | Path, out: str | Path, top_k: int, *, overwrite: bool = False) -> Path:
    """A copy of the MoE ``src`` served with ``top_k`` experts per token: the same weights (hard-linked where the
    file system allows), ``config.json`` and ``moe.json`` updated."""
    from sopmoe_models.outputs import new_temp_dir, replace_dir, write_marker

    src, out = Path(src), Path(out)
    config = read_config(src)
    if config["model_type"] not in MOE_TYPES:
        raise UserError(f"{src}: a {config['model_type']} checkpoint, not an MoE written by sopmoe moe")
    guard_out(out, overwrite, [src])
    tmp = new_temp_dir(out)
    try:
        for p in src.iterdir():
            if p.is_file() and p.name not in ("config.json", CARD, "README.md"):
                try:
                    os.link(p, tmp / p.name)
                except OSError:
                    shutil.copy2(p, tmp / p.name)
        config["num_experts_per_tok"] = top_k
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        card = json.loads((src / CARD).read_text(encoding="utf-8")) if (src / CARD).is_file() else {}
        card.update(top_k=top_k, inference_cost=inference_cost(config),
                    reserved_from={"path": str(src.resolve()), "top_k": card.get("top_k")})
        (tmp / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(card), encoding="utf-8")
        write_marker(tmp, "moe")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_dir(tmp, out)


def _card(foundation: Path, sft: Path, form: MoeForm, config: dict, *, attention: str, gate_init: str,
          gate_prompts: list | None, provenance: dict | None) -> dict[str, Any]:
    import transformers

    import sopmoe_models
    from sopmoe_models.experts import fingerprint

    dense = int(config["sopmoe_dense_intermediate_size"])
    return {
        "format": CARD_FORMAT, "kind": "sopmoe_moe", "method": "btx", "reference": "https://arxiv.org/abs/2403.07816",
        "architecture": form.architecture,
        "experts": {name: {"index": i, "path": str(p.resolve()), "fingerprint": fingerprint(p)}
                    for i, (name, p) in enumerate(zip(EXPERTS, (foundation, sft)))},
        "shared_weights": attention, "top_k": int(config["num_experts_per_tok"]), "gate_init": gate_init,
        "gate_prompts": None if not gate_prompts else {EXPERTS[e]: sum(1 for _, x in gate_prompts if x == e)
                                                        for e in range(len(EXPERTS))},
        "expert_width": {"dense": dense, "written": int(config[form.width_key]), "padding": "zeros (exact)"},
        "inference_cost": inference_cost(config),
        "trained": None,
        "provenance": provenance or {},
        "versions": {"sopmoe": sopmoe_models.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
    }


def model_card(card: dict[str, Any]) -> str:
    """The checkpoint's ``README.md``: what it is, what it was built from, how to run it."""
    ex = card.get("experts", {})
    trained = card.get("trained") or {}
    lines = [
        "---", "library_name: transformers", "tags: [moe, btx, sopmoe]", "---", "",
        f"# {card.get('architecture', 'MoE')} built by sopmoe (Branch-Train-MiX)", "",
        "The feed-forward blocks of two checkpoints of one architecture are the two experts of one MoE layer in every "
        "decoder layer; the other weights come from one source; a router per layer picks the experts per token.", "",
        "| | |", "|---|---|",
        *(f"| expert {v.get('index')} ({k}) | `{v.get('path')}` (fingerprint `{v.get('fingerprint')}`) |"
          for k, v in ex.items()),
        f"| shared weights (embeddings, attention, norms, head) | {card.get('shared_weights')} |",
        f"| experts per token (top-k) | {card.get('top_k')} |",
        f"| gate init | {card.get('gate_init')} |",
        f"| gates trained | {'yes: ' + json.dumps(trained) if trained else 'no'} |",
        f"| multiply-adds per token vs one expert | {card.get('inference_cost')}x |", "",
        "Run it with any engine that runs this architecture, with no sopmoe code:", "",
        "```bash",
        "lm_eval --model hf --model_args pretrained=THIS_FOLDER --tasks sopmoe",
        "vllm serve THIS_FOLDER   # add --tensor-parallel-size N (and --enable-expert-parallel) on several GPUs",
        "```", "",
    ]
    return "\n".join(lines)


def is_moe_folder(path: str | Path) -> bool:
    """Whether ``path`` holds an MoE checkpoint of one of sopmoe's forms (its config's model_type)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") in MOE_TYPES
    except ValueError:
        return False


def moe_block(layer: torch.nn.Module) -> torch.nn.Module:
    """A loaded decoder layer's MoE block (transformers 5 names Mixtral's ``mlp`` in memory, ``block_sparse_moe`` in
    the hub's files; older versions use the file's name in memory too)."""
    for name in ("mlp", "block_sparse_moe"):
        block = getattr(layer, name, None)
        if block is not None and hasattr(block, "gate") and hasattr(block, "experts"):
            return block
    raise ValueError(f"{type(layer).__name__} has no MoE block")


def set_top_k(model: torch.nn.Module, top_k: int) -> None:
    """Serve a loaded MoE with ``top_k`` experts per token from now on (its config and every router: transformers 5
    keeps the k in each router, 4.x in each block)."""
    model.config.num_experts_per_tok = top_k
    for layer in model.model.layers:
        block = moe_block(layer)
        for module in (block, block.gate):
            if hasattr(module, "top_k"):
                module.top_k = top_k


def gate_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The router (gate) weights of a loaded MoE model: ``<layer>.<block>.gate.weight`` of every MoE block."""
    return [(n, p) for n, p in model.named_parameters() if n.endswith((".mlp.gate.weight", ".block_sparse_moe.gate.weight"))]


def moe_experts(path: str | Path) -> int:
    """The number of experts of the MoE checkpoint at ``path``."""
    cfg = read_config(Path(path))
    return int(cfg.get("num_experts") or cfg.get("num_local_experts") or len(EXPERTS))


def moe_cost(path: str | Path) -> float:
    """Multiply-adds per token relative to one expert of the model at ``path``: 1.0 for a dense model."""
    return inference_cost(read_config(Path(path))) if is_moe_folder(path) else 1.0


def stored_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's config says its weights are stored in (float32 when it says none)."""
    cfg = read_config(Path(path))
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, name) if isinstance(getattr(torch, str(name), None), torch.dtype) else torch.float32


def finish_trained(folder: Path, source: Path, record: dict[str, Any]) -> None:
    """Make a trained MoE folder (``save_pretrained`` of the student) the checkpoint it was built as: ``source``'s
    ``config.json`` (top-k, hub key spelling, dtype) and its ``moe.json`` with ``trained`` filled in, plus the model
    card. Training changes weights, never the architecture, so the source's config is the trained model's."""
    shutil.copy2(source / "config.json", folder / "config.json")
    card = json.loads((source / CARD).read_text(encoding="utf-8")) if (source / CARD).is_file() else {}
    card["trained"] = {
        "from": str(source.resolve()), "finetuning": record.get("finetuning"),
        "teacher": (record.get("teacher") or {}).get("type"), "best": record.get("best"),
        "data": {k: (record.get("config") or {}).get("data", {}).get(k) for k in ("train_file", "train_kinds")},
        "router_top_k": (record.get("config") or {}).get("distill", {}).get("router_top_k"),
    }
    (folder / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(model_card(card), encoding="utf-8")


def router_balance_loss(router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, n_experts: int
                        ) -> torch.Tensor:
    """transformers' Switch load-balancing loss (N·Σ_e f_e·P_e over the layers, padding masked) at top-1 assignment:
    with two experts at top-2 every token uses both, so the term would be a constant."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    return load_balancing_loss_func(tuple(router_logits), n_experts, 1, attention_mask)
