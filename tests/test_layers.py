"""The floors of the house (docs/architecture.md): no import runs upward.

harness (CLI) over training (trainers) over sopmoe_models + tasks (models, lm-eval), with the config at the bottom
(``sopmoe_models.config``). Read from the source with ``ast``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package folder -> top-level packages it must never import
FORBIDDEN = {
    "sopmoe_models": ("harness", "training"),
    "tasks": ("harness", "training"),
    "training": ("harness",),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``path``: statements at any depth, ``importlib.import_module("x")``
    and ``__import__("x")`` with a literal name. Relative imports are inside the package and skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def upward_imports(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_import(package):
    assert upward_imports(package) == []


OURS = ("harness", "training", "tasks", "sopmoe_models")


def private_imports(package: str) -> list[str]:
    """``from <our module> import _name``: a private helper used from another module (it belongs public, in the
    lowest floor that both need, as harness.beds.print_bed_summary for the two bed commands)."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in OURS:
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return bad


@pytest.mark.parametrize("package", OURS)
def test_no_private_name_crosses_a_module(package):
    assert private_imports(package) == []


def test_the_walker_sees_lazy_and_dynamic_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import importlib\n"
        "def f():\n"
        "    from harness.config import load_config\n"
        "    import harness.cli as cli\n"
        "    importlib.import_module('harness.models')\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    assert [m for _, m in imported_modules(src)] == ["importlib", "harness.config", "harness.cli", "harness.models"]


def test_config_is_the_ground_floor():
    """The config imports nothing of the project but the error type and the atomic writes (so every floor may import
    it), and those import nothing of the project but the error type."""
    ours = {"harness", "training", "tasks", "sopmoe_models"}

    def project_imports(name: str) -> set[str]:
        modules = {m for _, m in imported_modules(ROOT / "sopmoe_models" / f"{name}.py")}
        return {m for m in modules if m.split(".")[0] in ours}

    assert project_imports("config") == {"sopmoe_models.errors", "sopmoe_models.outputs"}
    assert project_imports("outputs") == {"sopmoe_models.errors"}
    assert project_imports("errors") == set()


# the ground floor (docs/architecture.md) and the typed cards: every floor imports them, lm-eval's hook imports
# sopmoe_models in every process, and the CLI reads cards of runs without building a model
GROUND = ("config", "errors", "outputs", "data", "prompt", "cards")
HEAVY = ("torch", "transformers", "lm_eval", "safetensors", "peft")


def test_the_ground_floor_is_import_light_and_stands_on_itself():
    """At module level the ground floor imports no torch/transformers/lm-eval (a function may, lazily) and nothing
    of the project above the ground floor."""
    for name in GROUND:
        tree = ast.parse((ROOT / "sopmoe_models" / f"{name}.py").read_text(encoding="utf-8"))
        top = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
        top += [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module]
        assert [m for m in top if m.split(".")[0] in HEAVY] == [], name
        ours = {m for m in top if m.split(".")[0] in ("harness", "training", "tasks", "sopmoe_models")}
        assert ours <= {f"sopmoe_models.{g}" for g in GROUND}, (name, ours)
    import subprocess
    import sys

    code = ("import sys\n" + "".join(f"import sopmoe_models.{g}\n" for g in GROUND)
            + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"  # nothing heavy comes in through a third-party import either


def test_harness_config_re_exports_the_ground_floor():
    import harness.config
    import sopmoe_models.config

    for name in harness.config.__all__:
        assert getattr(harness.config, name) is getattr(sopmoe_models.config, name)


# distribution name -> the module (or dotted prefix) whose import uses it
IMPORT_NAME = {"pyyaml": "yaml", "lm-eval": "lm_eval", "tensorboard": "torch.utils.tensorboard"}


def test_every_declared_dependency_is_imported():
    """A dependency in pyproject.toml that no module imports is weight the user installs for nothing."""
    import re

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    declared = [re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in re.findall(r'"([^"]+)"', block)]
    imported = {m for pkg in ("harness", "sopmoe_models", "training", "tasks")
                for path in (ROOT / pkg).rglob("*.py") for _, m in imported_modules(path)}
    unused = [d for d in declared
              if not any(m == (name := IMPORT_NAME.get(d, d)) or m.startswith(name + ".") for m in imported)]
    assert unused == []
