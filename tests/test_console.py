"""Issue 23 item 6: output written to a file stays readable (sopmoe_models/console.py).

Piped into a file, rich tables were cut at 80 columns ("merg…") and progress bars left nothing until they ended.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from sopmoe_models.console import FILE_WIDTH, line_progress_class, new_console, new_progress


def test_a_table_piped_into_a_file_is_not_cut(tmp_path):
    """``sopmoe make-data`` as a user runs it with stdout into a file: every row of its table, a path wider than 80
    columns, is whole on its line (before: ``.../a_folder_name_long_enough_that_every_path_in_the_tab…``)."""
    out = tmp_path / "a_folder_name_long_enough_that_every_path_in_the_table_is_wider_than_eighty_columns"
    log = tmp_path / "log"
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "make-data", "--out", str(out)], stdout=f,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if ".jsonl" in line]
    assert len(rows) >= 10 and "…" not in text
    for row in rows:
        assert f"{out}/" in row and row.split(f"{out}/")[1].split()[0].endswith(".jsonl")


def test_consoles_are_wide_in_files_and_rich_on_terminals():
    assert new_console(file=io.StringIO()).width == FILE_WIDTH
    assert new_console(file=io.StringIO(), width=90).width == 90  # asked for
    assert new_console(file=io.StringIO(), force_terminal=True, width=70).width == 70
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert type(new_progress(console=terminal)) is Progress  # rich's live bar, as ever


def test_progress_in_a_file_is_lines_when_a_task_starts_and_ends_and_now_and_then():
    buf = io.StringIO()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    with new_progress(*columns, console=Console(file=buf, width=FILE_WIDTH)) as progress:
        assert isinstance(progress, line_progress_class())
        task = progress.add_task("train", total=4, info="")
        for step in range(4):
            progress.update(task, advance=1, info=f"loss {1 / (step + 1):.2f}")
        stopped = progress.add_task("eval", total=3, info="")
        progress.advance(stopped)  # left unfinished: its last state is printed when the progress stops
    lines = buf.getvalue().splitlines()
    assert [line.split() for line in lines] == [["train", "0/4"], ["train", "4/4", "loss", "0.25"], ["eval", "0/3"],
                                                ["eval", "1/3"]]
    assert "━" not in buf.getvalue() and "\x1b" not in buf.getvalue()  # no bar, no terminal control codes

    buf = io.StringIO()
    with line_progress_class()(TextColumn("{task.description}"), MofNCompleteColumn(), interval=0.0,
                               console=Console(file=buf)) as progress:
        task = progress.add_task("step", total=3)
        for _ in range(3):
            progress.advance(task)
    assert [line.split()[-1] for line in buf.getvalue().splitlines()] == ["0/3", "1/3", "2/3", "3/3"]


def test_log_records_in_a_file_are_plain_lines(capsys):
    """Not a terminal (here: pytest's capture): one ``time level logger: message`` line per record, unpadded and
    unwrapped, on whatever stdout is when the record is written."""
    import logging

    from sopmoe_models.console import log_handler

    handler = log_handler()
    log = logging.getLogger("sopmoe.test_console")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("a message longer than any terminal: %s", "x" * 300)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    (line,) = capsys.readouterr().out.splitlines()
    assert line.endswith(" WARNING sopmoe.test_console: a message longer than any terminal: " + "x" * 300)
