"""Helpers shared by the side-by-side fidelity harnesses (compare_clipad_sdp.py, compare_adaclip.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

Row = tuple[str, float | str | None, str]


def as_tensor(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).detach().double().cpu()


def maxdiff(a: Any, b: Any) -> float:
    ta, tb = as_tensor(a), as_tensor(b)
    if ta.shape != tb.shape:
        raise ValueError(f"shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return float((ta - tb).abs().max()) if ta.numel() else 0.0


def safe(rows: list[Row], quantity: str, fn: Callable[[], float | str], note: str | Callable[[], str] = "") -> None:
    """Append one row; an exception becomes an 'n/a' row with its message (the table never dies half-way)."""
    try:
        value = fn()
        rows.append((quantity, value, note() if callable(note) else note))
    except Exception as e:  # noqa: BLE001 - report anything
        msg = str(e).splitlines()[0] if str(e) else ""
        extra = f"; {note}" if isinstance(note, str) and note else ""
        rows.append((quantity, None, f"n/a: {type(e).__name__}: {msg[:160]}{extra}"))


def fmt(v: float | str | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.2e}"


def table(title: str, rows: Sequence[Row]) -> list[str]:
    out = [f"### {title}", "", "| quantity | max abs diff | note |", "|---|---:|---|"]
    out += [f"| {q} | {fmt(v)} | {n} |" for q, v, n in rows]
    return [*out, ""]


def dist_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def file_hashes(root: Path, files: Sequence[str]) -> str:
    """sha256 prefixes of the official files a run used (records what was compared without copying it)."""
    parts = []
    for rel in files:
        p = root / rel
        if p.is_file():
            parts.append(f"{rel} {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}")
    return "; ".join(parts)
