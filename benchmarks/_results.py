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
