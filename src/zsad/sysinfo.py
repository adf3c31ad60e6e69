"""What a result was computed with: library versions and the processor, recorded beside every number."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from zsad._version import __version__


def hardware(device: str = "cpu") -> str:
    """One line naming the processor a timing ran on (benchmarks record it beside every number)."""
    import torch

    if str(device).startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def environment() -> dict[str, Any]:
    """Versions of zsad and the libraries that decide its numbers, Python, the OS and the GPU (None without).

    Torch-free where torch is not installed (the runtime's manifests): its entries are then None.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    try:
        open_clip: str | None = version("open_clip_torch")
    except PackageNotFoundError:
        open_clip = None
    return {
        "zsad": __version__,
        "torch": torch.__version__ if torch is not None else None,
        "open_clip": open_clip,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None,
    }
