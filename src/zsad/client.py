"""A few lines to call a running ``zsad serve`` from Python (httpx): detect, references, and result files.

    from zsad import client
    res = client.detect("http://127.0.0.1:8000", ["a.png", "b.png"], class_name="screw")
    for r in res["results"]:
        print(r["file_name"], r["pred_score"], r["pred_label"])
    amap = client.anomaly_map("http://127.0.0.1:8000", res["results"][0])  # float32 numpy array

Errors from the server (401, 413, 422, 503) raise ``ZsadServiceError`` with its status and one-line message.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ImageInput = str | os.PathLike[str] | tuple[str, bytes]


class ZsadServiceError(RuntimeError):
    """A non-2xx answer: ``status`` and the server's one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def _files(images: ImageInput | Sequence[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    items = [images] if isinstance(images, str | os.PathLike | tuple) else list(images)
    out = []
    for item in items:
        if isinstance(item, tuple):
            name, data = item
        else:
            path = Path(item)
            name, data = path.name, path.read_bytes()
        out.append(("images", (name, data, "application/octet-stream")))
    return out


def _headers(token: str | None) -> dict[str, str]:
    token = token if token is not None else os.environ.get("ZSAD_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _answer(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            detail = str(r.json().get("detail", r.text))
        except ValueError:
            detail = r.text
        raise ZsadServiceError(r.status_code, detail)
    return r.json()


def _form(**fields: Any) -> dict[str, str]:
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        out[k] = json.dumps(v) if isinstance(v, dict) else str(v)
    return out


def detect(
    url: str,
    images: ImageInput | Sequence[ImageInput],
    *,
    method: str | None = None,
    class_name: str | None = None,
    options: dict[str, Any] | None = None,
    threshold: float | None = None,
    reference_id: str | None = None,
    skip_bad: bool = False,
    threshold_rule: str | None = None,
    profile: str | None = None,
    token: str | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """POST ``/v1/detect``: paths, or ``(name, bytes)`` pairs. Returns the JSON answer (``results`` per image).

    ``skip_bad``: unreadable images are listed in the answer's ``errors`` instead of refusing the request.
    ``threshold_rule``: with no threshold and no references, ``robust_outlier`` (the server's default) or
    ``two_mode``, fitted to this request's images. ``profile``: a station profile decides method, options,
    references and threshold (leave those out); the answer then names its revision.
    """
    with httpx.Client(base_url=url, headers=_headers(token), timeout=timeout) as c:
        data = _form(
            method=method,
            class_name=class_name,
            options=options,
            threshold=threshold,
            reference_id=reference_id,
            skip_bad="true" if skip_bad else None,
            threshold_rule=threshold_rule,
            profile=profile,
        )
        return dict(_answer(c.post("/v1/detect", files=_files(images), data=data)))


def references(
    url: str,
    images: ImageInput | Sequence[ImageInput],
    *,
    method: str | None = None,
    class_name: str | None = None,
    options: dict[str, Any] | None = None,
    k_shot: int | None = None,
    token: str | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """POST ``/v1/references`` with NORMAL images; pass the returned ``reference_id`` to ``detect``."""
    with httpx.Client(base_url=url, headers=_headers(token), timeout=timeout) as c:
        data = _form(method=method, class_name=class_name, options=options, k_shot=k_shot)
        return dict(_answer(c.post("/v1/references", files=_files(images), data=data)))


def methods(url: str, *, token: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """GET ``/v1/methods``."""
    with httpx.Client(base_url=url, headers=_headers(token), timeout=timeout) as c:
        return dict(_answer(c.get("/v1/methods")))


def fetch(url: str, path: str, *, token: str | None = None, timeout: float = 60.0) -> bytes:
    """The bytes of a result URL of a ``detect`` answer (``overlay_url``, ``anomaly_map_url``...)."""
    with httpx.Client(base_url=url, headers=_headers(token), timeout=timeout) as c:
        r = c.get(path)
        if r.status_code >= 400:
            _answer(r)
        return r.content


def anomaly_map(url: str, result: dict[str, Any], *, token: str | None = None) -> np.ndarray:
    """One result's anomaly map at full resolution (float32), from its ``.npy``."""
    return np.load(io.BytesIO(fetch(url, result["anomaly_map_npy_url"], token=token)), allow_pickle=False)


def wait_until_ready(url: str, timeout: float = 120.0, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``/healthz`` until the server answers (a server just started), or raise ``TimeoutError``.

    ``alive``: e.g. ``lambda: proc.poll() is None`` for a server started as a process, to fail at once when it
    exits instead of waiting out the timeout.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"the server at {url} exited before answering")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from {url}/healthz in {timeout:g} s")
        time.sleep(0.2)
