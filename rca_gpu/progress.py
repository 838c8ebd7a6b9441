"""Progress bars and log lines (rich), switched off in tests and when output is not wanted."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

log = logging.getLogger("rca_gpu")

#: Below this many columns the terminal tables (clusters, causes, comparison) show fewer columns (one metadata
#: or name column; sizes with their shares), so the text that is left wraps readably.
WIDE_TERMINAL = 140


class Reporter:
    """Shows one progress bar per long task on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield lambda n=1: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
            from rich.markup import escape

            task_id = progress.add_task(escape(description), total=total)  # a spec's text is not markup
            yield lambda n=1: progress.advance(task_id, n)


def reporter_for(quiet: bool = False, verbose: bool = False) -> Reporter:
    """What ``-q/--quiet`` and ``-v/--verbose`` mean on every command: log lines on stderr (debug lines too with
    ``verbose``; with ``quiet`` only warnings and errors), and a Reporter whose progress bars are off with
    ``quiet``. The commands themselves leave out their tables with ``quiet`` and keep their result lines."""
    setup_logging(verbose)
    if quiet:
        log.setLevel(logging.WARNING)
    return Reporter(enabled=not quiet)


def setup_logging(verbose: bool = False) -> None:
    """One readable log line per event on stderr (rich when it is a terminal)."""
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
