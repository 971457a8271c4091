"""Print pip constraints that pin each dependency of ``pyproject.toml`` (and of the extras named) to its declared
floor: ``name>=X`` becomes ``name==X``. ``make test-floor`` installs sopmoe with them on the oldest Python the package
declares, so every floor ``pyproject.toml`` claims is one the fast suite has passed on (issue 23: "support the range
you declare, or declare the range you support").

    python .ci/floors.py [EXTRA ...] > floors.txt    # e.g. python .ci/floors.py test quant
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([^,;\s]+)")


def floors(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    pins = {}
    for spec in specs:
        m = FLOOR.match(spec)
        if m:
            name = re.sub(r"\[.*\]", "", m.group(1)).lower().replace("_", "-")
            pins[name] = m.group(2)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


if __name__ == "__main__":
    print("\n".join(floors(Path(__file__).resolve().parents[1] / "pyproject.toml", sys.argv[1:])))
