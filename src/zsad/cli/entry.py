"""The ``zsad`` entry point: ``zsad detect --model DIR`` runs an exported model without importing torch.

Everything else goes to the full typer application (``zsad.cli.main``), which needs torch. Dispatching here, before
any heavy import, is what lets an edge box with only ``zsad[runtime]`` installed use the same command. On such a
box the full application cannot be imported: ``zsad --help`` then says what works there, and any other command
says in one line what to install, instead of an import traceback.
"""

from __future__ import annotations

import sys

# What the full command line needs beyond the torch-free runtime (``zsad[full]`` brings them all).
FULL_INSTALL = "pip install 'zsad[full]'"
FULL_CLI_MODULES = ("torch", "torchvision", "open_clip", "timm", "typer", "rich", "scipy", "sklearn", "safetensors")

RUNTIME_HELP = """\
Usage: zsad detect [PATHS]... --model DIR [OPTIONS]

Zero-/few-shot visual anomaly detection with CLIP: torch-free runtime.

This environment has the runtime only ({missing} is not installed), which runs models made by `zsad export`:

  zsad detect PATHS... --model DIR --out RESULTS   score images with an exported model (ONNX or OpenVINO IR)
  zsad detect --model DIR --help                   its options

Every other command (eval, train, export, serve, benchmark, detect --method ...) needs the full install, with
torch: {full}
"""


def main(argv: list[str] | None = None) -> None:
    """Route ``detect --model`` to the torch-free runner, the rest to the full CLI (or say what it needs)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["detect"] and any(a == "--model" or a.startswith("--model=") for a in args[1:]):
        from zsad.runtime.detect import run

        sys.exit(run(args[1:]))
    try:
        from zsad.cli.main import app
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in FULL_CLI_MODULES:
            raise  # a broken install of something else: the traceback is the report
        sys.exit(runtime_only(args, "torch" if not _importable("torch") else top))
    app(args=args)


def _importable(name: str) -> bool:
    """Whether ``name`` could be imported, without importing it.

    The runtime-only install lacks torch first of all, though the full CLI's first import to fail there is typer:
    the messages then name torch, which is what the user misses.
    """
    from importlib.util import find_spec

    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def runtime_only(args: list[str], missing: str) -> int:
    """Help or a one-line refusal where the full CLI's ``missing`` module is not installed; returns the exit code."""
    if not args or args[0] in ("--help", "-h", "help"):
        print(RUNTIME_HELP.format(missing=missing, full=FULL_INSTALL))
        return 0
    command = args[0] if not args[0].startswith("-") else " ".join(args)
    print(
        f"error: zsad {command} needs the full install ({missing} is not installed here): {FULL_INSTALL}; this "
        "torch-free runtime runs only `zsad detect PATHS... --model DIR` (models made by zsad export)"
    )
    return 2
