"""Terminal output that stays readable in a log file: the one place sopmoe makes rich consoles and progress bars.

A rich ``Console`` sizes itself to the terminal, and to 80 columns when no terminal is attached, so the demo piped
into a file (``make demo > log``) had its tables cut at 80 columns ("merg…"); and a progress bar, redrawn in place
on a terminal, leaves a file nothing until it ends. Here each is decided by its own stream (``make demo > log``
keeps stderr on the terminal):

- :func:`new_console`: on a terminal, rich's console as ever; writing to a file or a pipe, :data:`FILE_WIDTH`
  columns wide, so tables keep their natural width and log lines are not wrapped.
- :func:`log_handler`: the console log handler: rich's on a terminal; writing to a file or a pipe, one plain line
  per record (``time level logger: message``), neither padded to the width nor wrapped.
- :func:`new_progress`: on a terminal, rich's live bar; elsewhere ``LineProgress``, which prints a task's
  columns (the bar left out) as one line when the task starts, when it finishes, and at most every
  :data:`LINE_INTERVAL_S` seconds in between (not at every change: training loops put the loss in the description).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

FILE_WIDTH = 200  # columns of a console writing to a file or pipe: wider than any table sopmoe prints
LINE_INTERVAL_S = 30.0  # a running task's line at most this often in a file


def new_console(stderr: bool = False, **kwargs: Any) -> Console:
    """A rich console on stdout (stderr), :data:`FILE_WIDTH` wide when that stream is not a terminal."""
    from rich.console import Console

    console = Console(stderr=stderr, **kwargs)
    if "width" not in kwargs and not console.is_terminal and not console.is_jupyter:
        console.width = FILE_WIDTH
    return console


def log_handler() -> logging.Handler:
    """The handler for sopmoe's log records on stdout, decided by whether stdout is a terminal (see the module
    docstring); ``handler.formatter`` is set."""
    console = new_console()
    if console.is_terminal or console.is_jupyter:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, console=console)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


class _StdoutHandler(logging.StreamHandler):
    """A ``StreamHandler`` on whatever ``sys.stdout`` is when a record is written (as a rich console writes), not the
    one it was made with: a caller that swaps stdout (a test capturing output, a redirect) gets the lines."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def new_progress(*columns: Any, console: Console | None = None, **kwargs: Any) -> Progress:
    """rich's ``Progress(*columns, **kwargs)`` on ``console`` (default: :func:`new_console`, stdout, as rich's own
    default), or a ``LineProgress`` (:func:`line_progress_class`) when that console is not a terminal."""
    from rich.progress import Progress

    console = console or new_console()
    if console.is_terminal or console.is_jupyter:
        return Progress(*columns, console=console, **kwargs)
    return line_progress_class()(*columns, console=console, **kwargs)


@functools.cache
def line_progress_class() -> type:
    """``LineProgress``, defined on first use (this module imports rich only when a console is made: every
    command module imports it, and ``sopmoe --help`` should not pay for rich)."""
    from rich.progress import BarColumn, Progress, TaskID

    class LineProgress(Progress):
        """A rich ``Progress`` for a file or a pipe: lines instead of a bar redrawn in place (see the module docstring).
        The same calls (``add_task``, ``update``, ``advance``) and the same columns render the text."""

        def __init__(self, *columns: Any, interval: float = LINE_INTERVAL_S, **kwargs: Any) -> None:
            kwargs["auto_refresh"] = False
            super().__init__(*columns, **kwargs)
            self.columns = tuple(c for c in self.columns if not isinstance(c, BarColumn))  # a bar is no text
            self.interval = interval
            self._printed: dict[TaskID, tuple[float, bool, Any]] = {}  # task -> (time, finished, what it showed)

        def start(self) -> None:  # no live display: lines are printed as tasks move
            pass

        def stop(self) -> None:  # the last state of each task not printed yet (one that stopped early)
            for task_id in list(self._printed):
                self._line(task_id, force=True)

        def refresh(self) -> None:
            pass

        def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
            task_id = super().add_task(description, *args, **kwargs)
            self._line(task_id)
            return task_id

        def update(self, task_id: TaskID, **kwargs: Any) -> None:
            super().update(task_id, **kwargs)
            self._line(task_id)

        def advance(self, task_id: TaskID, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self._line(task_id)

        def _line(self, task_id: TaskID, force: bool = False) -> None:
            if self.disable:
                return
            with self._lock:
                task = self._tasks.get(task_id)
                if task is None or not task.visible:
                    return
                now, state = time.monotonic(), (task.description, task.completed, task.total, dict(task.fields))
                last = self._printed.get(task_id)
                due = last is None or (task.finished and not last[1]) or now - last[0] >= self.interval or force
                if not due or (last is not None and state == last[2]):
                    return
                self._printed[task_id] = (now, task.finished, state)
                table = self.make_tasks_table([task])
            self.console.print(table)

    return LineProgress
