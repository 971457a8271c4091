"""Routers over two frozen experts (DESIGN §4): ``posterior``, ``token_level``, ``layer_level``.

A router is a :class:`~sopmoe_models.fused.FusedLM` that also returns per-position gates over (foundation, sft).
Add a router type by writing one class in one file decorated with ``@register_router("name")`` and importing the
module here (or anywhere before :func:`build_router` is called)::

    router = build_router("token_level", pair, hidden_size=64)
    router.save_router("models/checkpoints/btm")            # best_router.safetensors + router.json
    router = load_router("models/checkpoints/btm/best_router.safetensors")   # experts from router.json
"""

from sopmoe_models.routers import layer_level, posterior, token_level  # noqa: F401  (register the built-ins)
from sopmoe_models.routers.base import (
    BEST,
    CARD,
    ROUTERS,
    Router,
    build_router,
    check_fingerprints,
    load_router,
    read_card,
    register_router,
    router_class,
    router_kwargs,
)

__all__ = [
    "BEST",
    "CARD",
    "ROUTERS",
    "Router",
    "build_router",
    "check_fingerprints",
    "load_router",
    "read_card",
    "register_router",
    "router_class",
    "router_kwargs",
]
