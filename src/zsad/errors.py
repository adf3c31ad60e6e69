"""One exception type for bad user input, so the CLI can print a single line and exit non-zero."""


class ZsadInputError(ValueError):
    """Bad input from the user: an unreadable file, a missing folder, an unknown name.

    The message must be one line and name the offending file or value.
    """
