"""The router interface, its registry and its checkpoint format (DESIGN §4 "Routers").

A router is a :class:`~sopmoe_models.fused.FusedLM` whose ``forward`` also returns ``gates``: the weight of
(foundation, sft) per position, (B, T, 2), or per position and layer, (B, T, L, 2). A new router type is one class
in one file decorated with :func:`register_router`; it implements ``forward`` and may override
:meth:`Router.target_logprobs` (the training path) when it can be computed more cheaply than the full mixture.

Checkpoint (``save_router``): ``<name>.safetensors`` holds the router's own tensors only (the experts are never
copied); ``router.json`` beside it holds ``type``, ``kwargs`` (sizes), ``training`` (config), ``metrics``, ``gate_names``
and ``experts`` = ``{foundation: {path, fingerprint}, sft: {path, fingerprint}}``, ``weights`` (the file name) and
``weights_sha256``. :func:`load_router` refuses to load beside experts whose fingerprints differ (naming both), a card
without a fingerprint (unless ``allow_missing_fingerprint``), a card or weights file that is broken, truncated or not
the one the card was written with, and weights holding NaN or infinity: each is one :class:`UserError` line.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sopmoe_models.cards import RouterCard
from sopmoe_models.errors import UserError
from sopmoe_models.experts import ExpertMismatchError, ExpertPair, legacy_fingerprint_matches, load_experts
from sopmoe_models.fused import FusedLM, float_out, time_chunks
from sopmoe_models.outputs import file_sha256, read_json

log = logging.getLogger(__name__)

ROUTERS: dict[str, type[Router]] = {}
CARD = "router.json"
BEST = "best_router.safetensors"


def register_router(name: str):
    """Class decorator: make a :class:`Router` subclass buildable as ``router_type: name``."""

    def deco(cls: type[Router]) -> type[Router]:
        if name in ROUTERS and ROUTERS[name] is not cls:
            raise ValueError(f"router type {name!r} is already registered by {ROUTERS[name].__qualname__}")
        cls.router_type = name
        cls.name = name
        ROUTERS[name] = cls
        return cls

    return deco


def router_class(router_type: str) -> type[Router]:
    if router_type not in ROUTERS:
        raise ValueError(f"unknown router type {router_type!r}; registered: {', '.join(sorted(ROUTERS))}")
    return ROUTERS[router_type]


def router_kwargs(router_type: str, available: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``available`` that ``router_type``'s constructor accepts (e.g. ``hidden_size``)."""
    params = inspect.signature(router_class(router_type).__init__).parameters
    return {k: v for k, v in available.items() if k in params and k != "pair"}


def build_router(router_type: str, pair: ExpertPair, **kwargs: Any) -> Router:
    """A fresh (untrained) router of the registered ``router_type`` over ``pair``."""
    return router_class(router_type)(pair, **kwargs)


def mix_two(gates: torch.Tensor, lp_f: torch.Tensor, lp_s: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
    """log(g_f p_f + g_s p_s) per position: gates (B, T, 2), log-probs (B, T, W) -> (B, T, W).

    Pairwise ``logaddexp`` (no stacked (B, T, 2, W) tensor); a gate of exactly 0 gives log 0 = -inf, so a forced
    one-hot gate returns the other expert's log-probs exactly. Without autograd it runs over time chunks into one
    output (``lp_f`` itself when ``overwrite``), so no (B, T, W) temporary is made.
    """
    lg = torch.log(gates)
    if lp_f.dim() != 3 or torch.is_grad_enabled() and (gates.requires_grad or lp_f.requires_grad or lp_s.requires_grad):
        return torch.logaddexp(lg[..., 0:1] + lp_f, lg[..., 1:2] + lp_s)
    out = float_out(lp_f, overwrite)
    for sl in time_chunks(lp_f):
        out[:, sl] = torch.logaddexp(lg[:, sl, 0:1] + lp_f[:, sl], lg[:, sl, 1:2] + lp_s[:, sl])
    return out


def mix_two_logits(gates: torch.Tensor, z_f: torch.Tensor, z_s: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
    """:func:`mix_two` straight from the experts' logits (B, T, W) in their own dtype: each is log-softmaxed over
    all its rows chunk by chunk, so neither float32 (B, T, W) log-softmax is ever whole (only the output is)."""
    if z_f.dim() != 3 or torch.is_grad_enabled() and gates.requires_grad:
        return mix_two(gates, F.log_softmax(z_f.clone().float(), dim=-1), F.log_softmax(z_s.clone().float(), dim=-1))
    lg = torch.log(gates)
    out = float_out(z_f, overwrite)
    for sl in time_chunks(z_f):
        out[:, sl] = torch.logaddexp(lg[:, sl, 0:1] + F.log_softmax(z_f[:, sl].float(), dim=-1),
                                     lg[:, sl, 1:2] + F.log_softmax(z_s[:, sl].float(), dim=-1))
    return out


class Router(FusedLM):
    """Base of every router: forced gates, statistics names, the training path and checkpointing."""

    router_type = "router"
    trainable = True  # False: nothing to learn by gradient (posterior)

    def __init__(self, pair: ExpertPair, **kwargs: Any):
        super().__init__(pair)
        self.kwargs = dict(kwargs)  # what the constructor needs to rebuild this router (saved in router.json)
        self.forced_gate: tuple[float, float] | None = None

    # --- gates ---------------------------------------------------------------------------------------------
    def force_gate(self, gate: tuple[float, float] | None) -> Router:
        """Fix every gate to ``gate`` = (foundation, sft) (e.g. (1, 0) reproduces the foundation); None = learned."""
        if gate is not None:
            f, s = (float(x) for x in gate)
            if f < 0 or s < 0 or abs(f + s - 1.0) > 1e-6:
                raise ValueError(f"a forced gate must be two weights >= 0 summing to 1, got {gate!r}")
            gate = (f, s)
        self.forced_gate = gate
        return self

    def _forced(self, gates: torch.Tensor) -> torch.Tensor:
        """Replace computed gates (..., 2) by the forced ones when set."""
        if self.forced_gate is None:
            return gates
        return torch.tensor(self.forced_gate, dtype=gates.dtype, device=gates.device).expand_as(gates)

    def gate_names(self) -> list[str] | None:
        """Names of the L gate rows of per-layer gates (B, T, L, 2); None for one gate per position."""
        return None

    def generate(self, *args: Any, **kwargs: Any):
        """:meth:`FusedLM.generate`, also kept as ``last_generation`` (its per-token gates feed routing statistics)."""
        result = super().generate(*args, **kwargs)
        self.last_generation = result
        return result

    # --- training ------------------------------------------------------------------------------------------
    def target_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_mix(y_{t+1}) (B, T-1) and gates (B, T-1, ...) with autograd through the router's parameters.

        ``targets`` (B, T-1) are the next tokens (any valid id where masked out). Default: the full forward.
        """
        out = self(input_ids, attention_mask)
        lp = out.logprobs[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return lp, out.gates[:, :-1]

    # --- checkpoint ----------------------------------------------------------------------------------------
    def card(self, *, training: dict | None = None, metrics: dict | None = None) -> dict[str, Any]:
        fps = self.pair.fingerprints()
        return {
            "type": self.router_type,
            "kwargs": self.kwargs,
            "gate_names": self.gate_names(),
            "n_parameters": sum(p.numel() for p in self.parameters()),
            "training": training or {},
            "metrics": metrics or {},
            "experts": {
                "foundation": {"path": self.pair.foundation_path, "fingerprint": fps["foundation"]},
                "sft": {"path": self.pair.sft_path, "fingerprint": fps["sft"]},
            },
        }

    def save_router(
        self,
        out_dir: str | Path,
        *,
        training: dict | None = None,
        metrics: dict | None = None,
        filename: str = BEST,
    ) -> Path:
        """Write ``<out_dir>/<filename>`` (router tensors only) and ``<out_dir>/router.json``, atomically."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        weights = out_dir / filename
        tmp = weights.with_name(weights.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "router_type": self.router_type})
        card = RouterCard.new(**self.card(training=training, metrics=metrics), weights=filename,
                              weights_sha256=file_sha256(tmp))  # ties the card to these weights (a torn pair is detected)
        tmp.replace(weights)
        card.write(out_dir / CARD)
        return weights


def parse_card(card: Path) -> RouterCard:
    """The ``router.json`` file ``card`` as a :class:`~sopmoe_models.cards.RouterCard`, checked field by field (its
    weights need not exist, unlike :func:`read_card`'s checkpoint); any problem is one line naming the file and the
    field."""
    data = read_json(card, "; the router checkpoint is damaged (retrain it with `sopmoe train-router`)")
    bad = None
    if not isinstance(data, dict):
        bad = "the top level is not an object"
    elif not isinstance(data.get("type"), str) or not data["type"]:
        bad = "'type' (the router type) is missing or not a string"
    elif not isinstance(data.get("kwargs", {}), dict):
        bad = "'kwargs' is not an object"
    elif not isinstance(data.get("experts", {}), dict):
        bad = "'experts' is not an object"
    elif data.get("weights") is not None and (not isinstance(data["weights"], str)
                                              or Path(data["weights"]).name != data["weights"]
                                              or not data["weights"].endswith(".safetensors")):
        bad = f"'weights' must be a file name ending in .safetensors beside {CARD}, got {data.get('weights')!r}"
    elif data.get("weights_sha256") is not None and not isinstance(data["weights_sha256"], str):
        bad = "'weights_sha256' is not a string"
    else:
        for role, entry in data.get("experts", {}).items():
            if not isinstance(entry, dict):
                bad = f"'experts.{role}' is not an object"
            elif not isinstance(entry.get("fingerprint"), (str, type(None))):
                bad = f"'experts.{role}.fingerprint' is not a string"
            elif not isinstance(entry.get("path"), (str, type(None))):
                bad = f"'experts.{role}.path' is not a string"
    if bad:
        raise UserError(f"{card}: not a sopmoe router card: {bad}; retrain the router with `sopmoe train-router`")
    return RouterCard.from_dict(data, card)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(weights file, router.json) for a ``.safetensors`` file or a checkpoint folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        card = path / CARD
        name = (parse_card(card).get("weights") or BEST) if card.is_file() else BEST
        weights = path / name
    else:
        weights, card = path, path.parent / CARD
    if not weights.is_file():
        raise FileNotFoundError(f"router checkpoint {weights} not found (train one with `sopmoe train-router`)")
    if not card.is_file():
        raise FileNotFoundError(f"router checkpoint {weights} has no {CARD} beside it; it was not saved by sopmoe")
    return weights, card


def read_card(path: str | Path) -> RouterCard:
    """The checked ``router.json`` of a checkpoint (file or folder)."""
    _, card = resolve_checkpoint(path)
    return parse_card(card)


def check_fingerprints(card: dict[str, Any], pair: ExpertPair, source: str, *,
                       allow_missing_fingerprint: bool = False) -> None:
    """Refuse a router trained beside other experts (naming both fingerprints of the first expert that differs), and
    one whose card records no fingerprint, or whose experts have no folder to fingerprint, unless
    ``allow_missing_fingerprint`` (the ``--allow_missing_fingerprint`` flag) says to run it unverified."""
    now = pair.fingerprints()
    for role in ("foundation", "sft"):
        want = (card.get("experts", {}).get(role) or {}).get("fingerprint")
        have = now[role]
        if want is None or have is None:
            why = (f"its {CARD} records no fingerprint for the {role} expert" if want is None
                   else f"the {role} expert given has no folder to fingerprint")
            if allow_missing_fingerprint:
                log.warning("router %s: %s; running it unverified (--allow_missing_fingerprint)", source, why)
                continue
            raise UserError(f"router {source}: {why}, so it cannot be checked against the experts it was trained "
                            "with; retrain it, or pass --allow_missing_fingerprint (model argument "
                            "allow_missing_fingerprint=true) to run it unverified")
        if want != have:
            path = getattr(pair, f"{role}_path")
            if path and legacy_fingerprint_matches(path, want):
                log.info("router %s: %s fingerprint recorded before index files counted; same weights", source, role)
                continue
            raise ExpertMismatchError(
                f"router {source} was trained with a {role} expert of fingerprint {want} "
                f"({card['experts'][role].get('path')}), but the {role} given ({path}) has fingerprint {have}; "
                f"pass the experts it was trained with or retrain the router"
            )


def load_router(
    path: str | Path,
    pair: ExpertPair | None = None,
    *,
    foundation: str | None = None,
    sft: str | None = None,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    check: bool = True,
    allow_missing_fingerprint: bool = False,
) -> Router:
    """Rebuild a saved router; experts come from ``pair``, else ``foundation``/``sft``, else router.json.

    ``check=False`` skips the expert fingerprints (tests only); the card, the weights file and its values are always
    checked."""
    weights, card_path = resolve_checkpoint(path)
    card = read_card(path)
    if pair is None:
        experts = card.get("experts", {})
        f = foundation or (experts.get("foundation") or {}).get("path")
        s = sft or (experts.get("sft") or {}).get("path")
        if not f or not s:
            raise UserError(f"{card_path}: no expert paths recorded; pass foundation= and sft=")
        pair = load_experts(f, s, dtype=dtype, device=device)
    if check:
        check_fingerprints(card, pair, str(weights), allow_missing_fingerprint=allow_missing_fingerprint)
    try:
        router = build_router(card["type"], pair, **card.get("kwargs", {}))
    except TypeError as e:
        raise UserError(f"{card_path}: 'kwargs' do not fit a {card['type']} router ({e})") from None
    state = read_router_weights(weights, card)
    missing, unexpected = router.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: tensors do not fit a {card['type']} router (missing {missing}, unexpected {unexpected})")
    router.to(router.device)
    router.card_data = card
    return router.eval()


def read_router_weights(weights: Path, card: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a router weights file, refused (one line naming the file) when the file is truncated or not
    safetensors, is not the file its card was written with, or holds NaN/infinity (it would generate nothing)."""
    from safetensors.torch import load_file

    card = card or {}
    want = card.get("weights_sha256") if weights.name == card.get("weights") else None
    if want and file_sha256(weights) != want:
        raise UserError(f"{weights}: not the weights its {CARD} was written with (sha256 differs): a partial copy or "
                        "a mix of two checkpoints; retrain, or copy the checkpoint folder whole")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError (truncated, bad header) or OSError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{weights}: not a readable safetensors file ({first}); the file is truncated or damaged, "
                        "retrain the router or copy it again") from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"{weights}: tensor(s) {', '.join(bad[:3])} hold NaN or infinity; this router cannot "
                        "route (retrain it, e.g. with a lower btm.learning_rate)")
    return state
