"""The ``zsad`` entry point: ``zsad detect --model DIR`` runs an exported model without importing torch.

Everything else goes to the full typer application (``zsad.cli.main``), which needs torch. Dispatching here, before
any heavy import, is what lets an edge box with only ``zsad[runtime]`` installed use the same command.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Route ``detect --model`` to the torch-free runner, the rest to the full CLI."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["detect"] and any(a == "--model" or a.startswith("--model=") for a in args[1:]):
        from zsad.cli.runtime_detect import run

        sys.exit(run(args[1:]))
    from zsad.cli.main import app

    app(args=args)
