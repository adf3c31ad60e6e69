"""``python -m zsad``: the same command line as ``zsad``."""

from zsad.cli.main import app

app()
