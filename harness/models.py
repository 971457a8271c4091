"""Build a fused model by the name a command line uses: ``foundation`` | ``sft`` | ``ensemble`` (| ``btm``).

One factory for every command that runs a model by name (``sopmoe generate``, ``sopmoe sweep``, ...). Each name is a
builder ``(cfg, pair, **options) -> FusedLM`` registered with :func:`register`; the expert pair is loaded once by
:func:`sopmoe_models.experts.load_experts_from_config` unless the caller passes one (to run several models on the
same loaded experts). ``foundation`` and ``sft`` are the ensemble at weights (1, 0) and (0, 1): the other expert is
never run, and the result equals the expert's own HF ``generate`` token for token (tests/test_generation.py), so
every model in a comparison decodes with exactly the same loop, stop strings and EOS handling.

A new kind (``btm``) is one more builder::

    @register("btm")
    def _btm(cfg, pair, *, router_checkpoint=None, **_):
        return load_router(router_checkpoint, pair)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays unimported until a model is built (the CLI imports every command at start)
    from sopmoe_models.experts import ExpertPair
    from sopmoe_models.fused import FusedLM

Builder = Callable[..., "FusedLM"]
BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    return list(BUILDERS)


def build_fused_model(name: str, cfg, pair: ExpertPair | None = None, **options: Any) -> FusedLM:
    """The fused model ``name`` from the resolved config (``pair``: reuse already loaded experts)."""
    if name not in BUILDERS:
        raise ValueError(f"--model {name!r} is not one of {', '.join(BUILDERS)}")
    if pair is None:
        from sopmoe_models.experts import load_experts_from_config

        pair = load_experts_from_config(cfg)
    return BUILDERS[name](cfg, pair, **options)


@register("foundation")
def _foundation(cfg, pair: ExpertPair, **_: Any) -> FusedLM:
    from sopmoe_models.ensemble import EnsembleLM

    return EnsembleLM(pair, 1.0, 0.0)


@register("sft")
def _sft(cfg, pair: ExpertPair, **_: Any) -> FusedLM:
    from sopmoe_models.ensemble import EnsembleLM

    return EnsembleLM(pair, 0.0, 1.0)


@register("ensemble")
def _ensemble(cfg, pair: ExpertPair, **_: Any) -> FusedLM:
    from sopmoe_models.ensemble import EnsembleLM

    e = cfg.ensemble
    return EnsembleLM(pair, e.foundation_weight, e.sft_weight, e.mix)


@register("btm")
def _btm(cfg, pair: ExpertPair, *, router_checkpoint: str | None = None, allow_missing_fingerprint: bool = False,
         **_: Any) -> FusedLM:
    """A router from ``router_checkpoint`` (default ``<btm.output_dir>/best_router.safetensors``; see
    harness/router_view.py, which also fills missing expert paths from the checkpoint's router.json)."""
    from harness.router_view import build_btm

    return build_btm(cfg, pair, router_checkpoint, allow_missing_fingerprint=allow_missing_fingerprint)


def build_drafter(cfg, pair: ExpertPair, draft: str | None = None):
    """The drafter of ``generation.draft`` (or ``draft``): a model folder, or ``auto`` = the distilled student
    ``<distill.output_dir>/best_student`` when one exists; None when speculation is off (or auto finds no student)."""
    from sopmoe_models.speculative import load_drafter, resolve_draft

    g = cfg.generation
    path = resolve_draft(draft if draft is not None else g.draft, cfg.distill.output_dir)
    if path is None:
        return None
    return load_drafter(path, pair, num_draft_tokens=g.num_draft_tokens, schedule=g.draft_schedule,
                        confidence=g.draft_confidence)
