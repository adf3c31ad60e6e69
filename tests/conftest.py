"""Shared fixtures: seeded tiny CLIP (offline), real-asset location, and a no-network guard."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must never reach a model hub: any socket connection beyond this machine fails loudly.

    Localhost stays open: the service tests talk to a `zsad serve` they started themselves.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connect = socket.socket.connect

    def guard(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
            return connect(self, address)
        raise RuntimeError(f"network access attempted in a test: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guard)


@pytest.fixture(scope="session")
def tiny_backbone():
    from zsad.backbone import ClipBackbone

    return ClipBackbone.from_pretrained("zsad-tiny", "none", seed=0)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    path = Path(os.environ.get("ZSAD_ASSETS", REPO.parent / "shared" / "assets"))
    if not path.is_dir():
        pytest.skip(f"ZSAD_ASSETS={path} not found: real-image tests need ../shared/assets")
    return path


@pytest.fixture
def images96() -> torch.Tensor:
    return torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL cluster for the session (Debian's postgresql: initdb + pg_ctl on a free port).

    Skipped, with the reason, only where the PostgreSQL binaries (or a user to run them as) are missing.
    """
    from zsad.store.throwaway import postgres_available, throwaway_postgres

    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with throwaway_postgres() as url:
        yield url
