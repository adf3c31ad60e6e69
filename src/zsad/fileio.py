"""Files written whole or not at all: a crash leaves the old version or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights, exported models: recorded in manifests, checked on load)."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def named_os_error(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path`` and saying why, whatever raised it.

    numpy reports a full disk as a bare ``OSError("10800 requested and 4064 written")``: a short write on a file
    system with (almost) no space left is named "No space left on device", so the user knows what to free.
    """
    import errno

    code = e.errno
    why = e.strerror
    text = " ".join(str(e).split())
    short = "written" in text.lower() or "space" in text.lower() or "disk full" in text.lower()
    if code is None and short and _nearly_full(path):
        code, why = errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({text})"
    if code is not None and not why:
        why = os.strerror(code)
    return OSError(code, why or text or type(e).__name__, str(path))


def _nearly_full(path: Path, slack: int = 1 << 20) -> bool:
    """Whether the file system holding ``path`` has less than ``slack`` bytes left for this user."""
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < slack


def default_mode() -> int:
    """0o666 minus the umask: what ``open`` gives a new file (``mkstemp`` and safetensors make 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder, fsync, then rename: readers see old or new, never half.

    The temporary file is named ``.<name>.<random>.tmp``, so an interrupted writer's leftovers can be recognised.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise named_os_error(e, path) from None
    try:
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, default_mode())
            os.replace(tmp, path)
        except OSError as e:  # name the file the user will look for, not the temporary one, and the reason
            raise named_os_error(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_object(path: Path, missing: str, what: str, fix: str = "") -> dict[str, Any]:
    """A JSON object file zsad wrote (a manifest), each failure one line naming the file and, with ``fix``, the cure.

    ``missing`` says what an absent file means; ``what`` names the object a non-object file is not.
    """
    from zsad.errors import ZsadInputError

    if not path.is_file():
        raise ZsadInputError(f"{path}: missing{missing}{fix}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZsadInputError(f"{path}: not valid JSON ({str(e).splitlines()[0]}){fix}") from None
    if not isinstance(data, dict):
        raise ZsadInputError(f"{path}: not {what} (a JSON object){fix}")
    return data


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON; values JSON cannot hold (paths, dates) are written as strings."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda f: f.write(data))


def save_npy(path: Path, array: np.ndarray) -> None:
    """Atomically write ``array`` in ``.npy`` format, so a reader never loads a truncated array."""
    atomic_write(path, lambda f: np.save(f, array))
