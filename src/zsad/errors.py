"""One exception type for bad user input, so the CLI can print a single line and exit non-zero."""


class ZsadInputError(ValueError):
    """Bad input from the user: an unreadable file, a missing folder, an unknown name.

    The message must be one line and name the offending file or value.
    """


def one_line(e: BaseException) -> str:
    """The line a user reads for ``e``: an ``OSError`` names its file and why, anything else its message, unwrapped.

    One wording for every front end (the CLI, the torch-free runtime, a run stopped mid-way).
    """
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or ' '.join(str(e).split()) or type(e).__name__}"
    return " ".join(str(e).split()) or type(e).__name__
