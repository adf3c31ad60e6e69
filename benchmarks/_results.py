"""The two things every benchmark script ends with: its --append-results options, and printing/recording its text."""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def add_results_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--append-results", action="store_true", help="append the section to benchmarks/RESULTS.md")
    ap.add_argument("--results-file", type=Path, default=RESULTS)


def emit(text: str, args: argparse.Namespace) -> None:
    """Print the section; with --append-results also append it to the results file."""
    print(text)
    if args.append_results:
        with args.results_file.open("a") as f:
            f.write("\n" + text)


def assets_dir() -> Path:
    """The real assets (``ZSAD_ASSETS``, default ``../shared/assets`` beside the repository)."""
    import os

    return Path(os.environ.get("ZSAD_ASSETS", RESULTS.parents[2] / "shared" / "assets"))


def machine() -> str:
    """The CPU, cores, torch and Python of this run, for a section's text."""
    import os
    import platform

    import torch

    py = platform.python_version()
    return f"CPU: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {py}"
