"""Make the plain ``lm_eval`` CLI find sopmoe's models and tasks (lm-eval 0.4.x has no plugin discovery).

We declare entry points ``lm_eval.models`` and ``lm_eval.tasks`` (the groups upstream lm-eval adds in later
versions) and ship ``sopmoe_lm_eval.pth``, which calls :func:`install` at interpreter start. ``install`` is cheap:
it only adds an import hook. When lm-eval's ``lm_eval.models`` module finishes importing, every ``lm_eval.models``
entry point is registered as a lazy ``"module:Class"`` placeholder; when ``lm_eval.tasks.manager`` finishes, the
``TaskManager`` constructor is wrapped to add every ``lm_eval.tasks`` entry point's folder to ``include_path``.
Nothing of ours is imported until lm-eval asks for one of our models.

Opt out with ``SOPMOE_NO_LM_EVAL_HOOK=1``; ``sopmoe-lm-eval`` (same arguments as ``lm_eval``) registers
explicitly and works even where ``.pth`` files are not processed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from importlib import metadata
from pathlib import Path

_TARGETS = ("lm_eval.models", "lm_eval.tasks.manager")
_done: set[str] = set()


def tasks_dir() -> str:
    """Folder of sopmoe's lm-eval task YAMLs: the installed copy, or ``tasks/`` of a source checkout."""
    root = Path(__file__).resolve().parent.parent
    for cand in (root / "tasks", root / "sopmoe_tasks"):
        if (cand / "sopmoe.yaml").is_file():
            return str(cand)
    return str(root / "sopmoe_tasks")


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=group))


def register_models() -> None:
    """Register every ``lm_eval.models`` entry point (lazily) in lm-eval's model registry."""
    import lm_eval.models  # noqa: F401  (its mapping first, or registering ours would hide 'hf')
    from lm_eval.api.registry import model_registry

    for ep in _entry_points("lm_eval.models"):
        if ep.name not in model_registry:
            model_registry.register(ep.name, target=ep.value.replace(" ", ""))


def plugin_task_paths() -> list[str]:
    paths = []
    for ep in _entry_points("lm_eval.tasks"):
        try:
            obj = ep.load()
            paths.append(str(obj() if callable(obj) else obj))
        except Exception:  # a broken third-party plugin must not break lm-eval
            continue
    return paths


def patch_task_manager() -> None:
    """Wrap ``TaskManager.__init__`` so every plugin's task folder is on ``include_path``."""
    from lm_eval.tasks import manager

    cls = manager.TaskManager
    if getattr(cls.__init__, "_sopmoe_patched", False):
        return
    original = cls.__init__

    def __init__(self, *args, include_path=None, **kwargs):
        extra = plugin_task_paths()
        if include_path is None:
            include_path = extra or None
        else:
            given = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
            include_path = extra + [p for p in given if str(p) not in extra]  # user paths last: they override
        original(self, *args, include_path=include_path, **kwargs)

    __init__._sopmoe_patched = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


_ACTIONS = {"lm_eval.models": register_models, "lm_eval.tasks.manager": patch_task_manager}


class _Loader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader, name: str):
        self.wrapped, self.name = wrapped, name

    def create_module(self, spec):
        return self.wrapped.create_module(spec)

    def exec_module(self, module):
        self.wrapped.exec_module(module)
        if self.name not in _done:
            _done.add(self.name)
            _ACTIONS[self.name]()


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the two lm-eval modules we hook; every other import passes straight through."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _TARGETS or fullname in _done:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Install the import hook (idempotent); run the actions now for modules already imported."""
    if os.environ.get("SOPMOE_NO_LM_EVAL_HOOK", "") not in ("", "0"):
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    for name in _TARGETS:
        if name in sys.modules and name not in _done:
            _done.add(name)
            _ACTIONS[name]()


def register_all() -> None:
    """Explicit registration, for code that imports lm-eval itself (tests, ``sopmoe evaluate``)."""
    for name in _TARGETS:
        if name not in _done:
            _done.add(name)
            _ACTIONS[name]()


def cli() -> None:
    """``sopmoe-lm-eval``: lm-eval's own CLI with sopmoe's models and tasks registered explicitly."""
    register_all()
    from lm_eval.__main__ import cli_evaluate

    sys.exit(cli_evaluate())
