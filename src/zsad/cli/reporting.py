"""The CLI's reporter: rich progress bars on stderr and coloured one-line messages.

Tasks that overlap (a set-level method encodes the set inside the scoring task) share one live display; when the
last of them ends, the display stops, so without a terminal each bar is printed once, when its work is done.
Transient tasks (training epochs, prompt encoding) are removed when they end and leave no line.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from zsad.progress import Level

STYLES: dict[str, str] = {"info": "", "note": "yellow", "warning": "bold yellow", "alert": "bold red"}


class _RichTask:
    def __init__(self, owner: RichReporter, description: str, total: int | None, transient: bool) -> None:
        self.owner, self.description, self.total, self.transient = owner, description, total, transient
        self.id: TaskID | None = None

    def __enter__(self) -> _RichTask:
        self.id = self.owner._start(self.description, self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.id is not None:
            self.owner._end(self.id, self.transient)
            self.id = None

    def advance(self, n: int = 1) -> None:
        if self.id is not None and self.owner.progress is not None:
            self.owner.progress.advance(self.id, n)

    def update(self, *, completed: int | None = None, description: str | None = None) -> None:
        if self.id is not None and self.owner.progress is not None:
            self.owner.progress.update(self.id, completed=completed, description=description)


class RichReporter:
    """Bars and messages on ``console`` (stderr in the CLI)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self._active = 0

    def task(self, description: str, total: int | None = None, *, transient: bool = False) -> _RichTask:
        """A bar: description, bar, n/N, elapsed and remaining time."""
        return _RichTask(self, description, total, transient)

    def message(self, text: str, level: Level = "info") -> None:
        """One line, coloured by level; the text is printed literally (file names may hold brackets)."""
        self.console.print(text, style=STYLES[level] or None, markup=False, highlight=False, soft_wrap=True)

    def _start(self, description: str, total: int | None) -> TaskID:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
        self._active += 1
        return self.progress.add_task(description, total=total)

    def _end(self, task: TaskID, transient: bool) -> None:
        assert self.progress is not None
        if transient:
            self.progress.remove_task(task)
        self._active -= 1
        if self._active == 0:
            self.progress.stop()
            self.progress = None
