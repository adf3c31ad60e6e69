"""The zsad command-line interface."""
