"""Progress and messages without a terminal library: one small reporter protocol for every front end.

Library code (runs, the training loop, methods) reports through ``reporter()``. The reporter is silent unless a
front end installs one with ``using(...)``: the CLI passes a rich implementation, a Python user may pass
``LoggingReporter()``, and the service or a Ray engine can pass their own. The current reporter lives in a context
variable, so concurrent runs in threads or async tasks each keep their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, Protocol

Level = Literal["info", "note", "warning", "alert"]
"""``info`` plain; ``note`` worth a look; ``warning`` results are qualified (TRANSDUCTIVE); ``alert`` random weights."""


class Task(Protocol):
    """One unit of progress (a bar in a terminal); a context manager that ends when the work ends."""

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done."""

    def update(self, *, completed: int | None = None, description: str | None = None) -> None:
        """Set the count of items done, or the text shown."""

    def __enter__(self) -> Task:
        """Start showing the task."""

    def __exit__(self, *exc: object) -> None:
        """Stop showing the task."""


class Reporter(Protocol):
    """What runs, the training loop and methods may say: tasks with progress, and one-line messages."""

    def task(self, description: str, total: int | None = None, *, transient: bool = False) -> Task:
        """A task of ``total`` items (None: unknown); ``transient`` tasks leave no trace when they end."""

    def message(self, text: str, level: Level = "info") -> None:
        """One line for the user."""


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, *, completed: int | None = None, description: str | None = None) -> None:
        pass

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class SilentReporter:
    """Says nothing: the default for library use."""

    def task(self, description: str, total: int | None = None, *, transient: bool = False) -> Task:
        """A task that shows nothing."""
        return _NullTask()

    def message(self, text: str, level: Level = "info") -> None:
        """Drop the message."""


class _LoggedTask:
    def __init__(self, log: logging.Logger, description: str, total: int | None, transient: bool) -> None:
        self.log, self.description, self.total, self.transient = log, description, total, transient
        self.completed = 0
        self.start = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.completed += n

    def update(self, *, completed: int | None = None, description: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if description is not None:
            self.description = description

    def __enter__(self) -> _LoggedTask:
        return self

    def __exit__(self, *exc: object) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        level = logging.DEBUG if self.transient else logging.INFO
        self.log.log(level, "%s: %d%s in %.1f s", self.description, self.completed, of, time.monotonic() - self.start)


class LoggingReporter:
    """Messages and finished tasks as records of the ``zsad`` logger (silent until logging is configured)."""

    _LEVELS = {"info": logging.INFO, "note": logging.INFO, "warning": logging.WARNING, "alert": logging.WARNING}

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("zsad")

    def task(self, description: str, total: int | None = None, *, transient: bool = False) -> Task:
        """A task logged once, when it ends."""
        return _LoggedTask(self.log, description, total, transient)

    def message(self, text: str, level: Level = "info") -> None:
        """Log the message at the level's logging level."""
        self.log.log(self._LEVELS[level], "%s", text)


_SILENT = SilentReporter()
_CURRENT: ContextVar[Reporter | None] = ContextVar("zsad_reporter", default=None)


def reporter() -> Reporter:
    """The reporter of the current run (silent when no front end installed one)."""
    return _CURRENT.get() or _SILENT


@contextmanager
def using(rep: Reporter | None) -> Iterator[Reporter]:
    """Install ``rep`` for the calls inside the block (None: keep the current one)."""
    if rep is None:
        yield reporter()
        return
    token = _CURRENT.set(rep)
    try:
        yield rep
    finally:
        _CURRENT.reset(token)
