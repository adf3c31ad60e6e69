"""``python -m zsad``: the same command line as ``zsad``."""

from zsad.cli.entry import main

main()
