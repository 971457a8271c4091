"""Model specs for ``sopmoe evaluate``: which lm-eval model and arguments each ``--models`` entry means, whether its
inputs exist, its inference cost by construction, and the training cost its artefact records.

Specs, simplest first:

- ``foundation`` | ``sft`` | ``ensemble`` | ``btm`` | ``distill`` | ``merge``: the built-in kinds, arguments from
  the config (``btm``: ``--btm_router``; ``distill``: ``--distill_model``; their defaults are the model factory's,
  :mod:`sopmoe_models.factory`).
- ``ensemble@0.7``: the ensemble with foundation_weight 0.7 and sft_weight 0.3 (label ``ensemble@0.7``; also as
  a kind: ``w7=ensemble@0.7:mix=logit``).
- ``LABEL=KIND:key=value,...``: kind is a built-in kind (its arguments, then these in lm-eval's ``--model_args``
  syntax on top) or any registered lm-eval model (then exactly these arguments). E.g. ``btm_token=btm:router=DIR``,
  ``student_sft=distill:pretrained=DIR``, ``ties=merge:method=ties,density=0.3``, ``mine=hf:pretrained=DIR``.

The label names the leaderboard row and the run's sub-folder, so it is a name, never a path: letters, digits and
``_.@+-``, not starting with ``.`` (no ``..``, no ``/``), and none of the run folder's own files.

Refused before anything runs (a :class:`UserError`, exit 2): a kind that is neither built in nor a registered lm-eval
model, a NaN/infinite number in the arguments, and ``trust_remote_code`` unless ``allow_remote_code`` (``sopmoe
evaluate --trust_remote_code``), which lets it through to lm-eval's own models (``hf``, and the built-in
``foundation``/``sft``); sopmoe's adapters never run remote code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from sopmoe_models.cards import BedCard
from sopmoe_models.errors import UserError
from sopmoe_models.factory import router_checkpoint, student_path

BUILTIN = {  # kind -> lm-eval model
    "foundation": "hf",
    "sft": "hf",
    "ensemble": "sopmoe_ensemble",
    "btm": "sopmoe_btm",
    "distill": "sopmoe_distill",
    "merge": "sopmoe_merge",
    "dispatch": "sopmoe_dispatch",
    "replay": "sopmoe_distill",
    "moe": "hf",  # the pair as one MoE checkpoint (sopmoe moe / train-moe): lm-eval's own model, no sopmoe code
}
# Expert forwards per generated/scored token (dispatch also runs one foundation prefill of each prompt to route it).
FORWARDS_PER_TOKEN = {"hf": 1, "sopmoe_merge": 1, "sopmoe_distill": 1, "sopmoe_dispatch": 1, "sopmoe_ensemble": 2,
                      "sopmoe_btm": 2}
LABEL = re.compile(r"^[A-Za-z0-9_@+-][A-Za-z0-9_.@+-]*$")  # a folder name: never "..", "/", or hidden
RESERVED = {"config.yaml", "summary.json", ".sopmoe.json"}  # files of the run folder itself
PATH_ARGS = ("pretrained", "foundation", "sft", "student", "router", "classifier")
OURS = ("sopmoe_ensemble", "sopmoe_btm", "sopmoe_distill", "sopmoe_merge", "sopmoe_dispatch")  # never run remote code


@dataclass(frozen=True)
class ModelSpec:
    """One ``--models`` entry: ``name`` labels the row and the folder; ``kind`` is built-in or an lm-eval model."""

    name: str
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass
class Planned:
    spec: ModelSpec
    lm_eval_model: str
    model_args: dict[str, Any]
    forwards_per_token: float | None
    problem: str | None = None  # why it cannot run (missing input, adapter not importable)


def parse_model_spec(text: str) -> ModelSpec:
    """``foundation`` | ``ensemble@0.7`` | ``LABEL=KIND[:key=value,...]`` (see the module docstring)."""
    from lm_eval.utils import simple_parse_args_string

    text = text.strip()
    args: dict[str, Any] = {}
    if "=" in text.split(":", 1)[0]:
        name, rest = text.split("=", 1)
        kind, _, argstr = rest.partition(":")
        args = simple_parse_args_string(argstr) if argstr else {}
    else:
        name = kind = text
    if "@" in kind:  # ensemble@W: foundation weight W, sft weight 1 - W (explicit args still win)
        kind, weight = kind.split("@", 1)
        if kind != "ensemble":
            raise UserError(f"--models {text}: KIND@W is the ensemble shorthand only (ensemble@0.7)")
        try:
            w = float(weight)
        except ValueError:
            raise UserError(f"--models {text}: {weight!r} is not a number (ensemble@0.7)") from None
        if not 0 <= w <= 1:
            raise UserError(f"--models {text}: foundation weight must be in [0, 1]")
        args = {"foundation_weight": w, "sft_weight": round(1 - w, 10), **args}
    if not LABEL.match(name or "") or name in RESERVED or len(name) > 100:
        raise UserError(f"--models {text}: label {name!r} must be a name (letters, digits, _.@+-, not starting with "
                        "'.', no '/', at most 100 characters): it names the model's sub-folder of the run")
    if not kind:
        raise UserError(f"--models {text}: missing model kind after '=' (e.g. {name}=btm:router=DIR)")
    for key, value in args.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--models {text}: {key}={value} is not a finite number (NaN and infinity are refused)")
    return ModelSpec(name, kind, args, text)


def wants_remote_code(args: dict[str, Any]) -> bool:
    """Whether model args ask for ``trust_remote_code`` (any value but false/0/none/empty)."""
    value = args.get("trust_remote_code")
    return value not in (None, False, 0) and str(value).strip().lower() not in ("", "false", "0", "none", "no")


def device_for(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _dtype(setting: str, device: str) -> str:
    if setting != "auto":
        return setting
    return "float32" if device == "cpu" else "bfloat16"


# Single models score through plain HFLM, whose log-softmax runs in the model's dtype by default: for a bf16
# checkpoint its log-probabilities are rounded to bf16 (~0.4 %, nats per request). The fused models' are float32
# (the parity rule, sopmoe_models/experts.py), so every row of a leaderboard asks HFLM for a float32 log-softmax.
FLOAT32_SOFTMAX = {"softmax_dtype": "float32"}


PURE = {"foundation": {"foundation_weight": 1.0, "sft_weight": 0.0}, "sft": {"foundation_weight": 0.0, "sft_weight": 1.0}}


def quantization_args(m) -> dict[str, str]:
    """The adapters' ``quantization=``/``sft_quantization=`` of the config's ``models.*.quantization`` ({} if none)."""
    f, s = m.foundation.quantization, m.sft.quantization
    args = {"quantization": f} if f != "none" else {}
    if s != f:
        args["sft_quantization"] = s
    return args


def lm_eval_model(kind: str, cfg) -> str:
    """The lm-eval model of a built-in kind: a quantized foundation/sft runs as ``sopmoe_ensemble`` at its pure
    weight (lm-eval's ``hf`` cannot be handed a ``TorchAoConfig``), which is exactly that quantized expert."""
    if kind in PURE and getattr(cfg.models, kind).quantization != "none":
        return "sopmoe_ensemble"
    return BUILTIN[kind]


def builtin_args(kind: str, cfg, *, btm_router: str | None, distill_model: str | None, device: str) -> dict[str, Any]:
    """lm-eval model_args of a built-in kind, from the config."""
    m, e, g = cfg.models, cfg.ensemble, cfg.merge
    quantized = quantization_args(m)
    experts = {"foundation": m.foundation.path, "sft": m.sft.path, "dtype": m.foundation.dtype, **quantized}
    if m.sft.dtype != m.foundation.dtype:
        experts["sft_dtype"] = m.sft.dtype
    if kind in ("foundation", "sft"):
        expert = getattr(m, kind)
        if expert.quantization != "none":  # lm-eval's hf takes no TorchAoConfig: the ensemble at a pure weight is
            return {**experts, **PURE[kind]}  # exactly that quantized expert (the parity rule), the other never runs
        return {"pretrained": expert.path, "dtype": _dtype(expert.dtype, device), **FLOAT32_SOFTMAX}
    if kind == "ensemble":
        return {**experts, "foundation_weight": e.foundation_weight, "sft_weight": e.sft_weight, "mix": e.mix}
    if kind == "btm":
        router = router_checkpoint(cfg, btm_router)  # the one default rule (sopmoe_models.factory)
        return {"router": router, **quantized} if router is not None else {**experts, "router_type": "posterior"}
    if kind == "moe":
        return {"pretrained": cfg.moe.output_dir, "dtype": _dtype(m.foundation.dtype, device), **FLOAT32_SOFTMAX}
    if kind in ("distill", "replay"):
        return {"pretrained": student_path(cfg, distill_model),
                "dtype": _dtype(m.foundation.dtype, device), **FLOAT32_SOFTMAX}
    if kind == "dispatch":
        return {"classifier": None, "dtype": m.foundation.dtype, **quantized}
    if kind == "merge":
        args = {"foundation": m.foundation.path, "sft": m.sft.path, "dtype": m.foundation.dtype, "method": g.method,
                **quantized, **FLOAT32_SOFTMAX}  # quantized experts: the merge refuses them in one line
        if g.method == "linear":
            args["weight"] = g.weight
        else:
            args["scale"] = g.scale
            if g.method in ("ties", "dare"):
                args["density"] = g.density
            if g.method == "dare":
                args["seed"] = g.seed
        return args
    raise ValueError(f"unknown built-in model kind {kind!r}")


HINTS = {"distill": "train one with `sopmoe distill`, or pass --distill_model",
         "merge": "set models.*.path", "ensemble": "set models.*.path"}


def _input_problem(args: dict[str, Any], kind: str) -> str | None:
    """Why a model's inputs are missing (None when every path argument exists)."""
    for key in PATH_ARGS:
        if key not in args:
            continue
        value = args[key]
        if not value:
            return f"{key} is not set (set it in the config or on the command line)"
        p = Path(str(value)).expanduser()
        if key == "router":
            card = (p if p.is_dir() else p.parent) / "router.json"
            if not p.exists() or not card.is_file():
                return f"no router checkpoint at {p} (train one with `sopmoe train-router`, or pass --btm_router)"
        elif key == "classifier":
            if not ((p if p.is_dir() else p.parent) / "dispatch.json").is_file():
                return f"no dispatch classifier at {p} (train one with `sopmoe train-dispatch`)"
        elif not (p / "config.json").is_file():
            hint = HINTS.get(kind, "expected a transformers folder with config.json")
            return f"no model folder at {p} ({key}=; {hint})"
    return None


def _adapter_problem(spec: ModelSpec, lm_eval_model: str) -> str | None:
    """Why lm-eval cannot build this model here (adapter module broken), else None; an unknown model is an error."""
    for ep in importlib_metadata.entry_points(group="lm_eval.models"):
        if ep.name == lm_eval_model:
            try:
                ep.load()
                return None
            except Exception as e:  # an adapter still being written must not stop the other models
                return f"adapter {ep.value} not importable ({type(e).__name__}: {e})"
    from lm_eval.api.registry import get_model

    try:
        get_model(lm_eval_model)
    except Exception:
        raise UserError(f"--models {spec.text or spec.name}: unknown model {lm_eval_model!r}: not a built-in kind "
                        f"({', '.join(BUILTIN)}) nor a registered lm-eval model (e.g. hf); check the spelling") from None
    return None


def plan(spec: ModelSpec, cfg, *, btm_router=None, distill_model=None, device="cpu", allow_remote_code: bool = False,
         allow_missing_fingerprint: bool = False) -> Planned:
    if spec.kind in BUILTIN:
        lm_model = lm_eval_model(spec.kind, cfg)
        args = builtin_args(spec.kind, cfg, btm_router=btm_router, distill_model=distill_model, device=device)
        args.update(spec.args)
    else:
        lm_model, args = spec.kind, dict(spec.args)
    if wants_remote_code(args):
        if lm_model in OURS:
            raise UserError(f"--models {spec.text or spec.name}: sopmoe's {lm_model} never runs remote code; drop "
                            "trust_remote_code (or evaluate the folder with KIND hf and --trust_remote_code)")
        if not allow_remote_code:
            raise UserError(f"--models {spec.text or spec.name}: trust_remote_code runs Python code shipped with the "
                            "model; pass --trust_remote_code to allow it for this run")
    if allow_missing_fingerprint and lm_model == "sopmoe_btm":
        args.setdefault("allow_missing_fingerprint", True)
    forwards = 1 if spec.kind in PURE else _forwards_per_token(lm_model, args)  # a pure weight runs one expert
    p = Planned(spec, lm_model, args, forwards)
    p.problem = _adapter_problem(spec, lm_model) or _input_problem(args, spec.kind)
    return p


def _forwards_per_token(lm_eval_model: str, args: dict[str, Any]) -> float | None:
    """Expert forwards per token by construction; an MoE checkpoint (any ``pretrained`` folder holding one) costs its
    multiply-adds relative to one expert: attention and head once, k feed-forward blocks (1.0 at top-1)."""
    from sopmoe_models.moe import is_moe_folder, moe_cost

    pretrained = args.get("pretrained")
    if pretrained and is_moe_folder(Path(str(pretrained)).expanduser()):
        return moe_cost(Path(str(pretrained)).expanduser())
    return FORWARDS_PER_TOKEN.get(lm_eval_model)


def _read_card(path: Path):
    """The typed card (:mod:`sopmoe_models.cards`) of an artefact JSON, by its file name."""
    from sopmoe_models.cards import CARDS

    return CARDS[path.name].read(path)


def _data_of(card) -> str | None:
    """'<train file> [kinds]' from a training card (router.json, distill.json or dispatch.json)."""
    data = card.training_data() or {}
    train = data.get("train_file")
    if not train:
        return None
    kinds = data.get("train_kinds")
    return f"{Path(train).name} [{', '.join(kinds) if kinds else 'every row'}]"


def training_data(p: Planned) -> str:
    """What data made this model (the leaderboard's "Trained on"), from the records beside its artefact."""
    a, kind = p.model_args, p.spec.kind
    path = a.get("pretrained") or a.get(kind)  # a quantized expert's row names it foundation=/sft= (lm_eval_model)
    if kind in ("foundation", "sft") and path:
        bed = BedCard.in_folder(Path(path).parent)
        if bed is not None:
            if bed.is_real():  # the real bed (issue 12)
                return ("SmolLM2-135M-Instruct as published (not trained here)" if kind == "foundation"
                        else "SOP-only rows (sopmoe sft, from the foundation)")
            return ("pretraining corpus (reasoning, loose SOP, general)" if kind == "foundation"
                    else "SOP-only SFT corpus (from the foundation)")
        return "given checkpoint"
    if p.lm_eval_model == "sopmoe_ensemble":
        return "none (weights chosen on dev)"
    for key, card_name in (("router", "router.json"), ("classifier", "dispatch.json"), ("pretrained", "distill.json"),
                           ("pretrained", "merge.json")):
        if not a.get(key):
            continue
        q = Path(a[key])
        for card in ((q if q.is_dir() else q.parent) / card_name, q.parent / card_name):
            if card.is_file():
                if card_name == "merge.json":
                    return "none (weight merge; parameters chosen on dev)"
                record = _read_card(card)
                data = _data_of(record)
                if card_name == "distill.json":
                    teacher = record.teacher_type()
                    how = "plain CE" if teacher == "none" else f"KD from {teacher} + CE"
                    how = {"router": f"gates only, {how}", "router+lora": f"gates + LoRA attention, {how}"}.get(
                        record.finetuning, how)
                    return f"{data} ({how})" if data else how
                return data or "–"
    if p.lm_eval_model == "sopmoe_merge":
        return "none (weight merge)"
    if a.get("pretrained") and (Path(str(a["pretrained"])) / "moe.json").is_file():
        return "none (BTX checkpoint, untrained gates)"
    return "–"


def training_cost(p: Planned, load_s: float) -> dict[str, Any]:
    """Wall-clock of the step that made this model from its inputs, read from that step's JSON record.

    foundation / sft: ``testbed.json`` stage ``pretrain`` / ``sft`` (test bed only); ensemble: 0 (training-free);
    btm: ``router.json``; distill: ``distill.json`` (student folder or its parent); merge: ``merge.json`` of a
    merged folder, else the in-memory merge happens while loading, so its cost is at most ``load_s``.
    """
    a, kind = p.model_args, p.spec.kind
    if kind in ("foundation", "sft") and a.get("pretrained"):
        folder = Path(a["pretrained"]).parent
        bed = BedCard.in_folder(folder)
        if bed is not None:
            stage = "pretrain" if kind == "foundation" else "sft"
            return {"wall_s": bed.stage_wall_s(stage), "source": f"{folder / BedCard.FILE} times.{stage}"}
        return {"wall_s": None, "source": "given checkpoint (no testbed.json beside it)"}
    if p.lm_eval_model == "sopmoe_ensemble":
        return {"wall_s": 0.0, "source": "training-free"}
    if p.lm_eval_model == "sopmoe_btm" and not a.get("router") and a.get("router_type") == "posterior":
        return {"wall_s": 0.0, "source": "training-free (posterior router, uniform prior)"}
    candidates: list[Path] = []
    if a.get("router"):
        r = Path(a["router"])
        candidates.append((r if r.is_dir() else r.parent) / "router.json")
    if a.get("classifier"):
        c = Path(a["classifier"])
        candidates.append((c if c.is_dir() else c.parent) / "dispatch.json")
    if a.get("pretrained"):
        d = Path(a["pretrained"])
        candidates += [d / "distill.json", d.parent / "distill.json", d / "merge.json"]
    for card in candidates:
        if card.is_file():
            return {"wall_s": _read_card(card).wall_time_s(), "source": str(card)}
    if p.lm_eval_model == "sopmoe_merge":
        return {"wall_s": round(load_s, 3), "source": "in-memory merge at load (load_s, experts' loading included)"}
    return {"wall_s": None, "source": "unknown"}
