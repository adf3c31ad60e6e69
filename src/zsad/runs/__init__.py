"""Runs: building methods from checked specs, and output folders that never lose, mix or overwrite results."""
