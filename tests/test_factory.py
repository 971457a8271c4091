"""The model factory decides each default once: every caller resolves the same router checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sopmoe_models.config import load_config
from sopmoe_models.factory import configured_router, router_checkpoint, router_experts_config, student_path


def _fake_router(folder: Path, tag: str) -> Path:
    """A checkpoint the card readers accept (no tensors are read here): its router.json names experts /<tag>/f, /<tag>/s."""
    folder.mkdir(parents=True)
    (folder / "best_router.safetensors").write_bytes(b"not read")
    card = {"type": "token_level", "kwargs": {}, "experts": {"foundation": {"path": f"/{tag}/f", "fingerprint": None},
                                                             "sft": {"path": f"/{tag}/s", "fingerprint": None}}}
    (folder / "router.json").write_text(json.dumps(card), encoding="utf-8")
    return folder / "best_router.safetensors"


class _Loaded:
    """What a patched load_router / build_router returns: records what it was built from."""

    def __init__(self, source):
        self.source = source

    def eval(self):
        return self

    def requires_grad_(self, _):
        return self

    def force_gate(self, _):
        pass


def _resolved_by_every_caller(cfg, monkeypatch) -> dict[str, object]:
    """The router each caller would load for ``cfg`` (a path, or "posterior")."""
    import sopmoe_models.adapters.btm as btm_adapter
    import sopmoe_models.factory as factory
    import sopmoe_models.routers as routers
    from harness.commands.check import _checks
    from harness.model_specs import builtin_args
    from harness.models import build_fused_model
    from harness.router_view import btm_config

    monkeypatch.setattr(routers, "load_router", lambda path, pair, **_: _Loaded(str(path)))
    monkeypatch.setattr(routers, "build_router", lambda kind, pair, **_: _Loaded(kind))
    monkeypatch.setattr(factory, "load_pair", lambda cfg, device=None: object())
    monkeypatch.setattr(btm_adapter, "load_pair", lambda cfg: object())

    out: dict[str, object] = {}
    args = builtin_args("btm", cfg, btm_router=None, distill_model=None, device="cpu")
    out["evaluate"] = args.get("router") or args.get("router_type")
    view_cfg = btm_config(cfg, None)  # the experts the route viewer takes from the chosen card
    out["generate"] = build_fused_model("btm", view_cfg).source
    out["generate_experts"] = view_cfg.models.foundation.path
    out["lm_eval"] = btm_adapter.BTMLMEval.build_fused(cfg, {}, None).source
    checks = dict(_checks(cfg, load_weights=False))
    out["check"] = checks["router"].__defaults__[0] if "router" in checks else "posterior"
    return out


def test_every_caller_resolves_the_same_router(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = _fake_router(tmp_path / "btm", "default")
    named = _fake_router(tmp_path / "named", "named")
    base = {"btm": {"output_dir": str(tmp_path / "btm")}}

    # 1. the config names a router (distill.btm_router): it wins over <btm.output_dir>/best_router.safetensors
    cfg = load_config(None, {**{"btm.output_dir": str(tmp_path / "btm")}, "distill.btm_router": str(named)},
                      use_default=False)
    got = _resolved_by_every_caller(cfg, monkeypatch)
    assert {got[k] for k in ("evaluate", "generate", "lm_eval", "check")} == {str(named)}
    assert got["generate_experts"] == "/named/f"

    # 2. none named: the trained router in btm.output_dir
    cfg = load_config(None, {"btm.output_dir": base["btm"]["output_dir"]}, use_default=False)
    got = _resolved_by_every_caller(cfg, monkeypatch)
    assert {got[k] for k in ("evaluate", "generate", "lm_eval", "check")} == {str(default)}
    assert got["generate_experts"] == "/default/f"

    # 3. none on disk and btm.router_type posterior: the training-free posterior router everywhere
    cfg = load_config(None, {"btm.output_dir": str(tmp_path / "none"), "btm.router_type": "posterior"},
                      use_default=False)
    got = _resolved_by_every_caller(cfg, monkeypatch)
    assert {got[k] for k in ("evaluate", "generate", "lm_eval", "check")} == {"posterior"}


def test_the_rule(tmp_path):
    cfg = load_config(None, {"btm.output_dir": str(tmp_path / "btm")}, use_default=False)
    default = str(tmp_path / "btm" / "best_router.safetensors")
    assert router_checkpoint(cfg) == default  # missing, not posterior: still the path (callers report it missing)
    assert configured_router(cfg) is None  # sopmoe check only checks a router that is there or named
    assert router_checkpoint(cfg, "x.safetensors") == "x.safetensors"
    named = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"btm_router": "/r"})})
    assert router_checkpoint(named) == configured_router(named) == "/r"
    assert student_path(cfg) == str(Path(cfg.distill.output_dir) / "best_student")
    assert student_path(cfg, "s") == "s"


def test_router_experts_fill_only_unpinned_roles(tmp_path):
    ckpt = _fake_router(tmp_path / "r", "card")
    cfg = load_config(None, {"models.foundation.path": "/given/f"}, use_default=False)
    filled = router_experts_config(cfg, ckpt)
    assert (filled.models.foundation.path, filled.models.sft.path) == ("/given/f", "/card/s")
    assert router_experts_config(cfg, ckpt, pinned=set()).models.foundation.path == "/card/f"
    assert router_experts_config(cfg, tmp_path / "missing") is cfg


def test_factory_is_on_the_models_floor():
    from tests.test_layers import ROOT, imported_modules

    mods = {m.split(".")[0] for _, m in imported_modules(ROOT / "sopmoe_models" / "factory.py")}
    assert not mods & {"harness", "training", "tasks"}


@pytest.mark.parametrize("kind", ["foundation", "sft", "ensemble"])
def test_unknown_and_known_names(kind):
    from sopmoe_models.factory import BUILDERS, build_fused_model

    assert kind in BUILDERS
    with pytest.raises(ValueError, match="is not one of"):
        build_fused_model("nope", load_config(None, use_default=False), pair=object())


def test_builders_on_the_tiny_pair(tiny_pair_dirs, tmp_path):
    import torch

    from sopmoe_models.factory import (
        build_ensemble,
        build_expert,
        build_merge,
        build_router_model,
        build_teacher,
        load_merged,
        load_pair,
        load_student,
        with_device,
    )

    f, s = map(str, tiny_pair_dirs)
    cfg = load_config(None, {"models.foundation.path": f, "models.sft.path": s, "models.foundation.dtype": "float32",
                             "models.sft.dtype": "float32", "ensemble.foundation_weight": 0.7,
                             "ensemble.sft_weight": 0.3, "merge.weight": 0.0, "btm.output_dir": str(tmp_path / "none"),
                             "btm.router_type": "posterior"}, use_default=False)
    assert with_device(cfg, "cpu").models.sft.device == "cpu" and with_device(cfg, None) is cfg
    pair = load_pair(cfg, "cpu")
    assert pair.foundation_path == f and pair.sft_path == s
    assert build_ensemble(cfg, pair).weights == (0.7, 0.3)
    assert build_expert(cfg, "sft", pair).weights == (0.0, 1.0)
    router = build_router_model(cfg, pair)  # nothing trained, router_type posterior: the training-free router
    assert router.router_type == "posterior" and router.checkpoint is None
    teacher = build_teacher(cfg, "cpu")
    assert type(teacher).__name__ == "EnsembleLM" and not any(p.requires_grad for p in teacher.parameters())
    merged, tok, params = build_merge(cfg, load_pair(cfg, "cpu"))  # weight 0: the foundation itself
    assert params.method == "linear" and tok is not None
    f_state = pair.foundation.state_dict()
    assert all(torch.equal(t, f_state[n]) for n, t in merged.state_dict().items())
    assert type(load_merged(cfg, f)).__name__ == type(pair.foundation).__name__  # any merged HF folder
    assert type(load_student(cfg, s)).__name__ == type(pair.sft).__name__
