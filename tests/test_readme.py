"""The README's quick start is exactly two commands, and both resolve to real Makefile recipes.

The recipes themselves are exercised elsewhere: `make test` is this suite, and `sopmoe demo` (what `make demo` runs
after set-up) is run end to end by tests/test_pipeline.py.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

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


def test_results_section_and_leaderboard_are_generated_from_the_committed_json():
    """The README's numbers come from results/leaderboard.json (written by `sopmoe demo --update-baseline`), never
    typed: re-rendering the JSON gives the committed LEADERBOARD.md and the README's results section exactly."""
    import json

    from harness.leaderboard import Leaderboard, readme_block, to_markdown

    results = ROOT / "results"
    lb = Leaderboard.from_json(json.loads((results / "leaderboard.json").read_text(encoding="utf-8")))
    assert to_markdown(lb) == (results / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert readme_block(lb) in (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {r[0].replace(" (fusion)", "") for r in lb.summary.rows}
    assert {"foundation", "sft", "ensemble", "posterior", "token_level", "layer_level", "dispatch", "replay_sft",
            "distill", "merge_linear", "merge_task_arithmetic", "merge_ties", "merge_dare"} <= rows
    assert len(lb.sources) == 3 and all(r[-1] != "–" for r in lb.summary.rows)  # 3 seeds; every row's data stated


def test_ceiling_section_is_generated_from_the_committed_json_and_matches_the_leaderboard():
    """The ceiling of per-token routing (issue 11's "where they lose") comes from results/ceiling.json; its experts'
    own accuracies are the leaderboard's (the same test splits, scored the same way), and its comparison columns
    were taken from the committed leaderboard."""
    import json

    from harness.ceiling import readme_block, to_markdown

    results = ROOT / "results"
    data = json.loads((results / "ceiling.json").read_text(encoding="utf-8"))
    assert to_markdown(data) == (results / "CEILING.md").read_text(encoding="utf-8")
    assert readme_block(data) in (ROOT / "README.md").read_text(encoding="utf-8")
    lb = json.loads((results / "leaderboard.json").read_text(encoding="utf-8"))
    assert data["compare"]["acc"] == {f: lb["chart"][f] for f in ("sop_strict", "reasoning", "mixed")}
    assert len(data["beds"]) == len(lb["sources"]) == 3
    for fam in ("sop_strict", "reasoning", "mixed"):
        for expert in ("foundation", "sft"):
            ours = sum(b["families"][fam][expert] / b["families"][fam]["n"] for b in data["beds"]) / 3
            assert abs(ours - lb["chart"][fam][expert][0]) < 1e-9, (fam, expert)
        assert all(b["families"][fam]["mixture"] >= b["families"][fam]["either"] for b in data["beds"])
        # the bound holds against every per-token mixture the leaderboard measured
        ceiling = sum(b["families"][fam]["mixture"] / b["families"][fam]["n"] for b in data["beds"]) / 3
        assert all(lb["chart"][fam][m][0] <= ceiling + 1e-9 for m in ("ensemble", "posterior", "token_level"))
    real = json.loads((results / "real" / "ceiling.json").read_text(encoding="utf-8"))
    assert to_markdown(real) == (results / "real" / "CEILING.md").read_text(encoding="utf-8")
    assert readme_block(real, "real-ceiling") in (ROOT / "README.md").read_text(encoding="utf-8")


def test_real_bed_results_are_generated_from_the_committed_json():
    """Issue 12: the real bed's leaderboard and README section come from results/real/leaderboard.json too, and its
    regression baseline sits beside it."""
    import json

    from harness.leaderboard import Leaderboard, readme_block, to_markdown

    results = ROOT / "results" / "real"
    lb = Leaderboard.from_json(json.loads((results / "leaderboard.json").read_text(encoding="utf-8")))
    assert to_markdown(lb) == (results / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert readme_block(lb, "real-results") in (ROOT / "README.md").read_text(encoding="utf-8")
    assert (results / "baseline.json").is_file()
    rows = {r[0].replace(" (fusion)", "") for r in lb.summary.rows}
    assert {"foundation", "sft", "ensemble", "token_level", "dispatch", "replay_sft", "distill"} <= rows



def table_gives_board(csv: Path, board: Path) -> None:
    """The tidy table ``csv``, aggregated again, gives the accuracies (mean, spread) of the leaderboard JSON ``board``."""
    import json

    from harness.leaderboard import cells, read_table

    lb = json.loads(board.read_text(encoding="utf-8"))
    data = read_table(csv)
    assert list(data["run"].unique()) == lb["sources"]
    c = cells(data, list(data["model"].unique()))
    for fam, per in lb["chart"].items():
        for model, (value, spread) in per.items():
            m = c.metric[model, fam, "acc"]
            assert m.value == pytest.approx(value, rel=1e-9), (fam, model)
            assert (m.stderr is None and spread is None) or m.stderr == pytest.approx(spread, rel=1e-9), (fam, model)
    assert {(f, m) for f, per in lb["chart"].items() for m in per} == {
        (f, m) for (m, f, metric) in c.metric if metric == "acc" and f in lb["chart"]}


@pytest.mark.parametrize("folder", ["results", "results/real"])
def test_committed_table_aggregates_to_the_committed_board(folder):
    """Each committed board's tidy table (leaderboard.csv, written beside it by `sopmoe leaderboard`) holds the runs
    the board was made from: aggregated again, it gives the board's accuracies."""
    csv = ROOT / folder / "leaderboard.csv"
    if not csv.is_file():
        pytest.skip(f"{folder}/leaderboard.csv not committed yet: the board predates it and its runs are not in the "
                    "repository (regenerating the board from its runs writes it)")
    table_gives_board(csv, ROOT / folder / "leaderboard.json")
