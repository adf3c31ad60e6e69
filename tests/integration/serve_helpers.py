"""Starting ``zsad serve`` as a real process on a free localhost port, for the CLI, browser and load tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zsad import client

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(*args: str, log: Path, env: dict[str, str] | None = None, wait: float = 120.0) -> Iterator[str]:
    """``zsad serve ARGS`` on a free port until the block ends (SIGINT, like Ctrl-C); yields the base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "zsad", "serve", "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            client.wait_until_ready(url, wait, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}: {log.read_text()[-2000:]}") from None
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    serving.returncode = proc.returncode  # type: ignore[attr-defined]
