"""The README's quick start is exactly two commands, and both resolve to real Makefile recipes.

The recipes themselves are exercised elsewhere: `make test` is this suite, and `sopmoe demo` (what `make demo` runs
after set-up) is run end to end by tests/test_pipeline.py.
"""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_quick_start_is_two_make_commands():
    assert quick_start_commands() == ["make demo", "make test"]


def test_make_targets_run_setup_then_the_job():
    for target, job in (("demo", "sopmoe demo"), ("test", "pytest")):
        # under `make test` the parent make's MAKEFLAGS/MAKELEVEL make this one print "Entering/Leaving directory"
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
        out = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout
        lines = out.splitlines()
        assert any("pip install" in line and "torch==2.13.0" in line for line in lines), out
        assert job in lines[-1], out


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
