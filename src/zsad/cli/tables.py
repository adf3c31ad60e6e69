"""Console tables that never cut a value: as is when they fit, else transposed, else one record per row.

Rich squeezes a wide table into the terminal by truncating cells with an ellipsis; at 80 columns that hid method
names and metric headers. Whatever the width, every header and value is printed whole here.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table


def _cells(table: Table) -> tuple[list[str], list[list[str]]]:
    headers = [str(c.header) for c in table.columns]
    columns = [[str(v) for v in c.cells] for c in table.columns]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    return headers, rows


def _fits(console: Console, table: Table) -> bool:
    """Whether every column can be as wide as its longest word (rich then wraps between words, never cuts)."""
    headers, rows = _cells(table)
    words = [
        max((cell_len(w) for v in (h, *(r[i] for r in rows)) for w in v.split()), default=0)
        for i, h in enumerate(headers)
    ]
    return 1 + sum(w + 3 for w in words) <= console.width


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` with every value whole: as is, else transposed, else as one ``header: value`` block per row."""
    console = console or Console()
    if _fits(console, table):
        console.print(table)
        return
    headers, rows = _cells(table)
    flipped = Table(headers[0], *(r[0] for r in rows), title=table.title)
    for i, h in enumerate(headers[1:], start=1):
        flipped.add_row(h, *(r[i] for r in rows))
    if rows and _fits(console, flipped):
        console.print(flipped)
        return
    if table.title:
        console.print(str(table.title), soft_wrap=True, highlight=False)
    for r in rows:
        console.print(f"{headers[0]}: {r[0]}", soft_wrap=True, highlight=False)
        for h, v in zip(headers[1:], r[1:], strict=True):
            console.print(f"  {h}: {v}", soft_wrap=True, highlight=False)
