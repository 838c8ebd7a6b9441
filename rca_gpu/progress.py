"""Progress bars and log lines (rich), switched off in tests and when output is not wanted."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

log = logging.getLogger("rca_gpu")

#: Below this many columns the terminal tables (clusters, causes, comparison) show fewer columns (one metadata
#: or name column; sizes with their shares), so the text that is left wraps readably.
WIDE_TERMINAL = 140


class Advance:
    """What a progress task hands to the work it follows: ``advance(n=1)`` after each step, and
    ``advance.total(n)`` once the work knows how many steps it has (a bar started with ``total=None`` then
    shows its share done and an ETA). Work that receives a plain ``callable(n)`` instead is asked
    :func:`set_total` only if it has that method."""

    def __init__(self, step: Callable[[int], None] | None = None,
                 total: Callable[[int], None] | None = None) -> None:
        self._step, self._total = step, total

    def __call__(self, n: int = 1) -> None:
        if self._step is not None:
            self._step(n)

    def total(self, n: int) -> None:
        if self._total is not None:
            self._total(n)


def set_total(progress: Callable[[int], None] | None, total: int) -> None:
    """Tell ``progress`` (an :class:`Advance`, a plain callable or None) how many steps the work has."""
    announce = getattr(progress, "total", None)
    if callable(announce):
        announce(int(total))


class Reporter:
    """Shows one progress bar per long task on stderr, with steps done, elapsed time and an ETA once the
    number of steps is known; a no-op when disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        """A progress bar of ``total`` steps (None: unknown until the work calls ``advance.total(n)``)."""
        if not self.enabled:
            yield Advance()
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
            def advance(n: int = 1) -> None:
                progress.advance(task_id, n)

            yield Advance(advance,
                          lambda n: progress.update(task_id, total=n))


def no_progress(n: int = 1) -> None:
    """The ``advance`` callback of work that shows no progress."""


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
