"""The one model factory: every model kind built from the typed config (:class:`~sopmoe_models.config.SopmoeConfig`),
and every default decided here, once.

The CLI (``sopmoe generate``/``sweep`` through :mod:`harness.models`), ``sopmoe evaluate``'s model specs, ``sopmoe
check``, the lm-eval adapters, the distillation teacher and the route viewer all call these functions; none of them
decides a default itself. This module sits on the models floor: it imports only ``sopmoe_models`` (lazily, so
importing it costs no torch).

Kinds:

- expert pair: :func:`load_pair` (one shared tokenizer; ``device`` replaces the config's ``auto``)
- ``foundation`` / ``sft``: :func:`build_expert`, the ensemble at weights (1, 0) / (0, 1) (the other expert never runs)
- ``ensemble``: :func:`build_ensemble` at ``ensemble.*``
- ``btm`` (each router): :func:`build_router_model`, a trained router from a checkpoint, or the training-free
  ``posterior`` router
- merge: :func:`build_merge` (in memory, from the pair, at ``merge.*``) and :func:`load_merged` (a folder written
  by ``sopmoe merge``, default ``merge.output_dir``)
- student: :func:`student_path` / :func:`load_student` (a distilled ``best_student`` folder)
- drafter: :func:`build_drafter` (speculative decoding, ``generation.draft``)
- dispatch baseline: :func:`build_dispatch` (a classifier written by ``sopmoe train-dispatch`` and its experts)
- by name: :func:`build_fused_model` (``foundation`` | ``sft`` | ``ensemble`` | ``btm``; add one with :func:`register`)

Defaults, each decided in exactly one function:

- **router checkpoint** (:func:`router_checkpoint`): the path given explicitly (``--router_checkpoint``,
  ``--btm_router``, lm-eval's ``router=``), else ``distill.btm_router`` (the one router the config names), else
  ``<btm.output_dir>/best_router.safetensors`` (where ``sopmoe train-router`` writes). When nothing is given or
  named, that file is absent and ``btm.router_type`` is ``posterior``, the model is the training-free posterior
  router (uniform prior; it needs no checkpoint). Before this module, ``sopmoe evaluate`` and ``sopmoe check`` read
  ``distill.btm_router`` while ``sopmoe generate --model btm`` and lm-eval's ``sopmoe_btm`` did not, and only
  ``generate`` fell back to the posterior router; all four now follow this rule (tests/test_factory.py).
- **a router's or classifier's experts** (:func:`recorded_experts_config`): the config's expert paths; a role the
  config leaves unset (or the caller does not pin) takes the path recorded in the checkpoint's ``router.json``
  (:func:`router_experts_config`) or the classifier's ``dispatch.json`` (:func:`dispatch_experts_config`).
- **expert placement** (:func:`load_pair`): each role's ``models.*.dtype``/``device`` (default ``auto``). The lm-eval
  adapters (dispatch included) map ``dtype=``/``device=`` onto both roles and ``sft_dtype=``/``sft_device=`` onto
  the sft in :func:`sopmoe_models.adapters.base.resolve_model_args`, then load through :func:`load_pair`.
- **student folder** (:func:`student_path`): the path given, else ``<distill.output_dir>/best_student``.
- **merged folder** (:func:`merged_path`): the path given, else ``merge.output_dir``.
- **drafter** (:func:`build_drafter`): ``generation.draft``; ``auto`` = the student folder above when it exists;
  ``lookup`` = drafts copied from the prompt and ``generation.draft_corpus`` (no model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays unimported until a model is built (the CLI imports every command at start)
    from sopmoe_models.config import SopmoeConfig
    from sopmoe_models.dispatch import Dispatcher
    from sopmoe_models.ensemble import EnsembleLM
    from sopmoe_models.experts import ExpertPair
    from sopmoe_models.fused import FusedLM
    from sopmoe_models.routers.base import Router

BEST_ROUTER = "best_router.safetensors"  # = sopmoe_models.routers.BEST (not imported: that would import torch)
BEST_STUDENT = "best_student"
ROLES = ("foundation", "sft")


# --- defaults -------------------------------------------------------------------------------------------------


def router_checkpoint(cfg: SopmoeConfig, explicit: str | Path | None = None) -> str | None:
    """The router checkpoint a ``btm`` model loads (a ``.safetensors`` file or its folder), or None for the
    training-free posterior router. The one rule (module docstring): explicit > ``distill.btm_router`` >
    ``<btm.output_dir>/best_router.safetensors``; posterior when none of those exists and ``btm.router_type`` is
    posterior. The path is returned whether or not it exists (callers report a missing one in their own words)."""
    if explicit:
        return str(explicit)
    if cfg.distill.btm_router:
        return cfg.distill.btm_router
    default = Path(cfg.btm.output_dir) / BEST_ROUTER
    if not default.exists() and cfg.btm.router_type == "posterior":
        return None
    return str(default)


def configured_router(cfg: SopmoeConfig) -> str | None:
    """The router checkpoint the config itself names and that exists (for ``sopmoe check``): the default of
    :func:`router_checkpoint` without an explicit path, when it is on disk (``distill.btm_router`` always: a named
    router that is missing is an error to report)."""
    path = router_checkpoint(cfg)
    if path is None:
        return None
    return path if cfg.distill.btm_router or Path(path).exists() else None


def student_path(cfg: SopmoeConfig, explicit: str | Path | None = None) -> str:
    """The distilled student folder: explicit, else ``<distill.output_dir>/best_student``."""
    return str(explicit) if explicit else str(Path(cfg.distill.output_dir) / BEST_STUDENT)


def merged_path(cfg: SopmoeConfig, explicit: str | Path | None = None) -> str:
    """A merged model folder written by ``sopmoe merge``: explicit, else ``merge.output_dir``."""
    return str(explicit) if explicit else cfg.merge.output_dir


def with_device(cfg: SopmoeConfig, device: str | None) -> SopmoeConfig:
    """``cfg`` with ``device`` in place of each expert's ``auto`` device (the trainer's accelerator device)."""
    if device is None:
        return cfg
    m = cfg.models
    update = {role: getattr(m, role).model_copy(update={"device": str(device)})
              for role in ROLES if getattr(m, role).device == "auto"}
    return cfg.model_copy(update={"models": m.model_copy(update=update)}) if update else cfg


def recorded_experts_config(cfg: SopmoeConfig, experts: dict[str, Any], pinned: Iterable[str] | None = None
                            ) -> SopmoeConfig:
    """``cfg`` with the expert path a card records (``experts``: its ``{"foundation": {"path": ...}, "sft": ...}``)
    for each role not in ``pinned`` (default: the roles whose path the config sets) where the card records one."""
    m = cfg.models
    pinned = set(pinned) if pinned is not None else {r for r in ROLES if getattr(m, r).path}
    update = {}
    for role in ROLES:
        recorded = (experts.get(role) or {}).get("path")
        if role not in pinned and recorded:
            update[role] = getattr(m, role).model_copy(update={"path": recorded})
    return cfg.model_copy(update={"models": m.model_copy(update=update)}) if update else cfg


def router_experts_config(cfg: SopmoeConfig, checkpoint: str | Path | None,
                          pinned: Iterable[str] | None = None) -> SopmoeConfig:
    """``cfg`` with the expert paths recorded in the checkpoint's ``router.json`` (:func:`recorded_experts_config`).
    No checkpoint, or none on disk: ``cfg`` unchanged."""
    if checkpoint is None or not Path(checkpoint).expanduser().exists():
        return cfg
    from sopmoe_models.routers import read_card

    return recorded_experts_config(cfg, read_card(checkpoint).get("experts", {}), pinned)


def dispatch_experts_config(cfg: SopmoeConfig, classifier: str | Path,
                            pinned: Iterable[str] | None = None) -> SopmoeConfig:
    """``cfg`` with the expert paths recorded in the classifier's ``dispatch.json`` (:func:`recorded_experts_config`)."""
    from sopmoe_models.dispatch import read_card

    return recorded_experts_config(cfg, read_card(classifier).experts, pinned)


# --- builders -------------------------------------------------------------------------------------------------


def load_pair(cfg: SopmoeConfig, device: str | None = None) -> ExpertPair:
    """Foundation and sft of ``models.*`` (frozen, eval, one checked tokenizer); ``device`` replaces ``auto``."""
    from sopmoe_models.experts import load_experts_from_config

    return load_experts_from_config(with_device(cfg, device))


def build_expert(cfg: SopmoeConfig, role: str, pair: ExpertPair | None = None) -> EnsembleLM:
    """One expert as a fused model: the ensemble at (1, 0) or (0, 1), equal to the expert's own HF run."""
    from sopmoe_models.ensemble import EnsembleLM

    if role not in ROLES:
        raise ValueError(f"expert role must be foundation or sft, got {role!r}")
    pair = pair if pair is not None else load_pair(cfg)
    return EnsembleLM(pair, 1.0, 0.0) if role == "foundation" else EnsembleLM(pair, 0.0, 1.0)


def build_ensemble(cfg: SopmoeConfig, pair: ExpertPair | None = None) -> EnsembleLM:
    """The ensemble at ``ensemble.foundation_weight``/``sft_weight``/``mix``."""
    from sopmoe_models.ensemble import EnsembleLM

    pair = pair if pair is not None else load_pair(cfg)
    e = cfg.ensemble
    return EnsembleLM(pair, e.foundation_weight, e.sft_weight, mix=e.mix)


def build_router_model(cfg: SopmoeConfig, pair: ExpertPair | None = None, checkpoint: str | Path | None = None, *,
                       allow_missing_fingerprint: bool = False, posterior: bool | None = None) -> Router:
    """A ``btm`` model: the router of :func:`router_checkpoint` (``checkpoint``: the explicit one) over ``pair`` (else
    the config's experts, a role the config leaves unset taking router.json's path), or the posterior router.

    ``posterior=True`` builds the training-free posterior router whatever the config says (lm-eval's
    ``router_type=posterior``). ``router.checkpoint`` records the checkpoint loaded (None for the posterior)."""
    from sopmoe_models.routers import build_router, load_router

    path = None if posterior else router_checkpoint(cfg, checkpoint)
    if path is None:
        router = build_router("posterior", pair if pair is not None else load_pair(cfg))
    else:
        if pair is None:
            pair = load_pair(router_experts_config(cfg, path))
        router = load_router(path, pair, allow_missing_fingerprint=allow_missing_fingerprint)
    router.checkpoint = path
    return router


def build_merge(cfg: SopmoeConfig, pair: ExpertPair | None = None, *, inplace: bool = True):
    """(merged module, tokenizer, MergeParams): the ``merge.*`` merge of the pair, in memory. ``inplace`` writes it
    into the pair's foundation (peak memory two models, not three)."""
    from sopmoe_models.merges import MergeParams, merge_models

    g = cfg.merge
    params = MergeParams(g.method, g.weight, g.scale, g.density, g.seed)
    pair = pair if pair is not None else load_pair(cfg)
    return merge_models(pair, **params.__dict__, inplace=inplace), pair.tokenizer, params


def load_merged(cfg: SopmoeConfig, path: str | Path | None = None):
    """A merged folder written by ``sopmoe merge`` (default ``merge.output_dir``), placed like the foundation."""
    from sopmoe_models.experts import load_model

    f = cfg.models.foundation
    return load_model(merged_path(cfg, path), dtype=f.dtype, device=f.device, role="merged model")


def load_student(cfg: SopmoeConfig, path: str | Path | None = None):
    """The distilled student (default ``<distill.output_dir>/best_student``), placed like the foundation."""
    from sopmoe_models.experts import load_model

    f = cfg.models.foundation
    return load_model(student_path(cfg, path), dtype=f.dtype, device=f.device, role="student")


def build_drafter(cfg: SopmoeConfig, pair: ExpertPair, draft: str | None = None):
    """The drafter of ``generation.draft`` (or ``draft``): a model folder, ``auto`` = the distilled student
    (:func:`student_path`) when one exists, or ``lookup`` (:class:`~sopmoe_models.lookup.LookupDrafter` over the
    prompt and ``generation.draft_corpus``); None when speculation is off (or auto finds no student)."""
    from sopmoe_models.speculative import load_drafter, resolve_draft

    g = cfg.generation
    path = resolve_draft(draft if draft is not None else g.draft, student_path(cfg))
    if path is None:
        return None
    if path == "lookup":
        from sopmoe_models.lookup import load_lookup_drafter

        return load_lookup_drafter(pair, pair.width, corpus=g.draft_corpus, num_draft_tokens=g.num_draft_tokens)
    return load_drafter(path, pair, num_draft_tokens=g.num_draft_tokens, schedule=g.draft_schedule,
                        confidence=g.draft_confidence)


def build_dispatch(cfg: SopmoeConfig, classifier: str | Path, pair: ExpertPair | None = None, *,
                   pinned: Iterable[str] | None = None) -> tuple[Dispatcher, ExpertPair]:
    """(the dispatch classifier at ``classifier``, the experts it sends to): ``pair``, else the config's experts, a
    role not ``pinned`` taking the path ``dispatch.json`` records (:func:`dispatch_experts_config`). The classifier
    refuses experts other than the ones it was trained with."""
    from sopmoe_models.dispatch import load_dispatcher

    if pair is None:
        cfg = dispatch_experts_config(cfg, classifier, pinned)
        if not cfg.models.foundation.path or not cfg.models.sft.path:
            raise ValueError(f"{classifier}: no expert paths recorded; pass foundation=DIR,sft=DIR")
        pair = load_pair(cfg)
    return load_dispatcher(classifier, pair), pair


def build_teacher(cfg: SopmoeConfig, device: str | None = None, *, allow_missing_fingerprint: bool = False) -> FusedLM:
    """The distillation teacher of ``distill.teacher_type`` (``ensemble`` or ``btm`` at ``distill.btm_router``),
    frozen and in eval mode; ``device`` replaces the config's ``auto``."""
    m, d = cfg.models, cfg.distill
    if not m.foundation.path or not m.sft.path:
        raise ValueError("models.foundation.path and models.sft.path must be set (config or --foundation/--sft)")
    if d.teacher_type == "btm" and not d.btm_router:
        raise ValueError("--teacher_type btm needs --btm_router PATH (a router trained with `sopmoe train-router`)")
    pair = load_pair(cfg, device)
    if d.teacher_type == "ensemble":
        teacher: FusedLM = build_ensemble(cfg, pair)
    else:
        teacher = build_router_model(cfg, pair, d.btm_router, allow_missing_fingerprint=allow_missing_fingerprint)
        teacher.router_path = str(Path(d.btm_router).expanduser().resolve())
    return teacher.eval().requires_grad_(False)


# --- by name (the CLI's --model) ------------------------------------------------------------------------------

Builder = Callable[..., "FusedLM"]
BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register ``fn(cfg, pair, **options) -> FusedLM`` as the model ``name`` of :func:`build_fused_model`."""

    def deco(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    return list(BUILDERS)


def build_fused_model(name: str, cfg: SopmoeConfig, pair: ExpertPair | None = None, **options: Any) -> FusedLM:
    """The fused model ``name`` from the resolved config (``pair``: reuse already loaded experts)."""
    if name not in BUILDERS:
        raise ValueError(f"--model {name!r} is not one of {', '.join(BUILDERS)}")
    if pair is None:
        pair = load_pair(cfg)
    return BUILDERS[name](cfg, pair, **options)


@register("foundation")
def _foundation(cfg, pair, **_: Any) -> FusedLM:
    return build_expert(cfg, "foundation", pair)


@register("sft")
def _sft(cfg, pair, **_: Any) -> FusedLM:
    return build_expert(cfg, "sft", pair)


@register("ensemble")
def _ensemble(cfg, pair, **_: Any) -> FusedLM:
    return build_ensemble(cfg, pair)


@register("btm")
def _btm(cfg, pair, *, router_checkpoint: str | None = None, allow_missing_fingerprint: bool = False,
         **_: Any) -> FusedLM:
    return build_router_model(cfg, pair, router_checkpoint, allow_missing_fingerprint=allow_missing_fingerprint)
