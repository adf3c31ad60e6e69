"""Loading a CLIP: names, local files, open_clip model configs and hub weights, checked before anything loads.

Everything here fails in one line naming the user's file or value: a weights file is recognised by its first bytes,
named weights must be cached or downloadable (one TCP connection, no minutes of retries), and a model-config JSON is
registered under a name that includes its content hash, so two configs with the same file name never collide.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from zsad.errors import ZsadInputError
from zsad.fileio import sha256_file

_CONFIG_DIR = Path(__file__).parent / "configs"
_RANDOM_TAGS = {None, "", "none", "random"}


def _open_clip() -> Any:
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)  # registers zsad-tiny (idempotent)
    return open_clip


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> dict[str, Any]:
    """Size and sha256 of a weights file, recorded in every run manifest.

    Memoised by (path, size, mtime): the run key is checked before the model loads and again after, and hashing a
    1.7 GB file twice would cost seconds.
    """
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        _DIGESTS[memo] = sha256_file(path)
    return {"path": str(path), "size": st.st_size, "sha256": _DIGESTS[memo]}


def check_weights_file(path: str | os.PathLike[str]) -> Path:
    """Refuse, in one line and before any model is built, a ``--weights`` that cannot be a checkpoint.

    Recognised by their first bytes: zip archives (``torch.save`` since 1.6, TorchScript), legacy pickles,
    safetensors (an 8-byte header length then JSON) and numpy files (big_vision weights).
    """
    p = Path(path)
    if p.is_dir():
        raise ZsadInputError(f"{p}: is a folder; --weights takes a checkpoint file (.pt, .bin, .safetensors)")
    if not p.is_file():
        raise ZsadInputError(f"{p}: weights file not found")
    try:
        with p.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ZsadInputError(f"{p}: cannot read weights file: {e.strerror or type(e).__name__}") from None
    if not head:
        raise ZsadInputError(f"{p}: empty file (0 bytes), not a weights file")
    zipped = head[:4] == b"PK\x03\x04"
    pickled = head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5
    safetensors = len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0
    numpy = head[:6] == b"\x93NUMPY"
    if not (zipped or pickled or safetensors or numpy):
        raise ZsadInputError(
            f"{p}: not a weights file (neither a torch checkpoint nor safetensors); pass the model's .pt, .bin or "
            ".safetensors file"
        )
    return p


def _load_error(path: Path, model_name: str, e: BaseException) -> ZsadInputError:
    """One line for a checkpoint open_clip could not load; never torch's advice to disable ``weights_only``."""
    text = str(e)
    if "weights_only" in text or "Weights only load failed" in text:
        reason = (
            "it holds Python objects besides tensors, which zsad does not unpickle (weights_only=True); save the "
            "state dict (torch.save(model.state_dict(), FILE)) or convert it to .safetensors"
        )
    elif "Missing key" in text or "Unexpected key" in text or "size mismatch" in text:
        reason = f"its tensors do not fit the {model_name} architecture (pick the matching --backbone)"
    else:
        reason = " ".join(text.split())[:300] or type(e).__name__
    return ZsadInputError(f"{path}: cannot load weights for {model_name}: {reason}")


def _hub_host() -> str:
    try:
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return "huggingface.co"


def _cached_weights(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The local file open_clip would load for a pretrained config, if an earlier download left it."""
    if cfg.get("file"):
        return str(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename or "open_clip_pytorch_model.bin"]
        if names[0].endswith((".bin", ".pth")):
            names.insert(0, names[0][:-4] + ".safetensors")
        if names[0] == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


_REACHED: dict[str, tuple[float, str | None]] = {}


def _unreachable(host: str, timeout: float) -> str | None:
    """Why ``host`` cannot be reached (one TCP connect, no retries, remembered for a minute), or None."""
    now = time.monotonic()
    if host in _REACHED and now - _REACHED[host][0] < 60:
        return _REACHED[host][1]
    why = _probe(host, timeout)
    _REACHED[host] = (now, why)
    return why


def _probe(host: str, timeout: float) -> str | None:
    if host.endswith("huggingface.co") and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the download itself try
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except Exception as e:  # noqa: BLE001 - DNS, refusal, timeout or a sandbox: all mean "no download"
        return f"{host} is unreachable: {' '.join(str(e).split()) or type(e).__name__}"
    return None


@contextmanager
def _hub_offline(on: bool) -> Iterator[None]:
    """Let huggingface_hub use its cached file without first asking the (unreachable) hub for updates."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def check_pretrained(model_name: str, tag: str, cache_dir: str | None = None, timeout: float = 5.0) -> bool:
    """Fail fast, in one line, when named weights are neither cached nor downloadable; True when offline+cached.

    open_clip would otherwise spend about a minute in hub retries and end in a chained traceback.
    """
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ZsadInputError(
            f"--pretrained {tag}: open_clip has no such weights for {model_name} (known: {', '.join(tags) or 'none'});"
            " pass --weights FILE for a local checkpoint or --pretrained none for seeded random weights"
        )
    cached = _cached_weights(cfg, cache_dir)
    hub = bool(cfg.get("hf_hub"))
    host = _hub_host() if hub else (urlparse(cfg.get("url", "")).hostname or "")
    why = _unreachable(host, timeout) if host else "no download address"
    if why is None:
        return False
    if cached is not None:
        return hub
    raise ZsadInputError(
        f"cannot download the {model_name} '{tag}' weights ({why}); use a local copy with --weights FILE or "
        "ZSAD_WEIGHTS=FILE, or --pretrained none for seeded random weights (smoke tests only)"
    )


_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve_model(name: str) -> tuple[str, dict[str, Any] | None, Path | None]:
    """(open_clip model name, model-config record or None, weights file found beside the config or None).

    ``name`` is a registered open_clip name, an open_clip model-config JSON, or a folder holding one (Hugging Face
    ``open_clip_config.json`` layout or a bare config, with optional weights). A config is registered as
    ``<file stem>-<12 hex of its content hash>``.
    """
    path = Path(name)
    if not (name.endswith(".json") or path.is_dir()):
        return name, None, None
    weights = None
    if path.is_dir():
        configs = [path / "open_clip_config.json", *sorted(path.glob("*.json"))]
        config = next((c for c in configs if c.is_file()), None)
        if config is None:
            raise ZsadInputError(f"{path}: no open_clip model-config JSON in this folder")
        found = [path / n for n in _WEIGHT_NAMES] + sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt"))
        weights = next((w for w in found if w.is_file()), None)
    else:
        config = path
        if not config.is_file():
            raise ZsadInputError(f"{config}: model-config file not found")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZsadInputError(f"{config}: not a readable JSON model config ({type(e).__name__})") from None
    cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise ZsadInputError(f"{config}: not an open_clip model config (needs embed_dim, vision_cfg and text_cfg)")
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    registered = f"{config.stem}-{digest[:12]}"
    _register(registered, cfg)
    record = {"path": str(config.resolve()), "sha256": digest, "preprocess": data.get("preprocess_cfg")}
    return registered, record, weights


def _register(name: str, cfg: dict[str, Any]) -> None:
    """Add a model config to open_clip's registry under ``name``.

    The public ``add_model_config`` keys by file stem, which would let two configs called ``model.json`` overwrite
    each other.
    """
    from open_clip import factory

    factory._MODEL_CONFIGS[name] = cfg


@dataclass
class LoadedModel:
    """What ``load_model`` built: the open_clip model and tokenizer, and how to record where the weights came from."""

    model: Any
    tokenizer: Any
    name: str  # the open_clip name (a model-config JSON's registered name)
    tag: str | None  # the pretrained tag, the weights file, or "none"
    weights_info: dict[str, Any] | None  # size and sha256 of a weights file
    config: dict[str, Any] | None  # the model-config JSON record, when built from one


def load_model(
    model_name: str,
    pretrained: str | None,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: Any = "cpu",
    seed: int = 0,
    cache_dir: str | None = None,
) -> LoadedModel:
    """An open_clip model by name or model-config path: from a weights file, a pretrained tag, or seeded random.

    Every failure is one line naming the user's file or value (see ``ClipBackbone.from_pretrained``).
    """
    import torch

    open_clip = _open_clip()
    model_name, config, beside = resolve_model(str(model_name))
    if model_name not in open_clip.list_models():
        raise ZsadInputError(f"unknown backbone {model_name!r}: see open_clip.list_models()")
    if weights is None and beside is not None:
        weights = beside
    info = None
    if weights is not None:
        path = check_weights_file(weights)
        info = file_digest(path)
        try:
            model = open_clip.create_model(model_name, pretrained=str(path), device=device, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - open_clip raises many types for a bad file
            raise _load_error(path, model_name, e) from None
        tag: str | None = str(path)
    elif pretrained in _RANDOM_TAGS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        model = model.to(device)
        tag = "none"
    else:
        offline = check_pretrained(model_name, str(pretrained), cache_dir)
        try:
            with _hub_offline(offline):
                model = open_clip.create_model(model_name, pretrained=pretrained, device=device, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - download and load errors of many types
            first = " ".join(str(e).split())[:300] or type(e).__name__
            raise ZsadInputError(
                f"cannot load the {model_name} '{pretrained}' weights ({first}); use a local copy with --weights "
                "FILE or ZSAD_WEIGHTS=FILE, or --pretrained none for seeded random weights (smoke tests only)"
            ) from None
        tag = pretrained
    if config and isinstance(config.get("preprocess"), dict):
        model.visual.preprocess_cfg = {**getattr(model.visual, "preprocess_cfg", {}), **config["preprocess"]}
    return LoadedModel(model, open_clip.get_tokenizer(model_name), model_name, tag, info, config)


def wrapped_key(state: Mapping[str, Any], key: str) -> str:
    """``key``, or the same tensor's name under an adapter wrapper's ``.layer.`` when only that one is in ``state``.

    An AnomalyVFM release saves its wrapped projections that way (``attn.qkv.layer.weight``).
    """
    module, _, leaf = key.rpartition(".")
    wrapped = f"{module}.layer.{leaf}"
    return wrapped if key not in state and wrapped in state else key


def state_reader(state: dict[str, Any], prefix: str, name: str) -> Callable[[str], torch.Tensor]:
    """``take(key)``: ``state[prefix + key]`` (or its ``wrapped_key``); a missing tensor: one line naming the model."""

    def take(key: str) -> torch.Tensor:
        full = wrapped_key(state, prefix + key)
        if full not in state:
            raise ZsadInputError(f"{name}: tensor {prefix + key!r} is missing")
        t: torch.Tensor = state[full]
        return t

    return take
