"""``python -m zsad`` = the ``zsad`` command."""

from zsad.cli.main import app

app()
