"""One checkpoint format for every trainable method: a folder with ``model.safetensors`` + ``manifest.json``.

Image-trained checkpoints also list their training images (``list_training_images``) for the leakage guard.

Only the trained tensors are stored (CLIP stays frozen and is rebuilt from its name), so the manifest must say
which CLIP they were trained on; loading refuses a checkpoint whose backbone, method or bytes do not match,
because such tensors load without error yet give meaningless maps.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zsad.errors import ZsadInputError
from zsad.fileio import default_mode, read_json_object, sha256_file, write_bytes, write_text

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
IMAGES_LIST = "training_images.txt"
# sha256, byte size and path of each training image: the leakage guard compares content, so a copy is still seen
IMAGES_HASHES = "training_images.sha256.tsv"


def _sha256(path: Path) -> str:
    from zsad.backbone.loading import file_digest

    return str(file_digest(path)["sha256"])


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def save_checkpoint(out_dir: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``manifest`` (plus format, sha256, size, time, environment) into ``out_dir``.

    Both files are replaced atomically, so a crash leaves the previous checkpoint or the new one, never half.
    The manifest is written last: a reader that sees it can trust the sha256 it records.
    """
    from zsad.outputs import mark_folder
    from zsad.sysinfo import environment  # lazy: engine imports the methods, which import this package

    out_dir = Path(out_dir)
    mark_folder(out_dir, "checkpoint", "checkpoint")  # a foreign folder is refused, never overwritten
    model = out_dir / MODEL_FILE
    tmp = model.with_name(model.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.chmod(tmp, default_mode())  # safetensors creates 0o600; every file of a checkpoint gets the same mode
    os.replace(tmp, model)
    full = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "model_file": MODEL_FILE,
        "sha256": _sha256(model),
        "size": model.stat().st_size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
    }
    write_bytes(out_dir / MANIFEST_FILE, (json.dumps(full, indent=2, default=str) + "\n").encode())
    return out_dir


def describe_backbone(b: dict[str, Any]) -> tuple[str, str]:
    """(human description, CLI options that rebuild it) of a ``ClipBackbone.manifest()`` dict."""
    name = b.get("model_name")
    weights = b.get("weights")
    if weights:
        sha = str(weights.get("sha256", ""))[:12]
        return f"{name} (weights file {weights.get('path')}, sha256 {sha}...)", f"--backbone {name} --weights FILE"
    if b.get("random_init"):
        seed = b.get("seed")
        return f"{name} (seeded random weights, seed {seed})", f"--backbone {name} --pretrained none --seed {seed}"
    tag = b.get("pretrained")
    return f"{name} (pretrained {tag})", f"--backbone {name} --pretrained {tag}"


def _identity(b: dict[str, Any]) -> tuple[Any, ...]:
    """What decides the weights: local files by content (not path), random ones by seed, else the tag."""
    if b.get("weights"):
        return (b.get("model_name"), "file", b["weights"].get("sha256"))
    if b.get("random_init"):
        return (b.get("model_name"), "random", b.get("seed"))
    return (b.get("model_name"), "pretrained", b.get("pretrained"))


def backbone_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """None when ``current`` has the weights ``saved`` was trained on, else a sentence saying how they differ.

    ``image_size`` and ``pos_interpolation`` are deliberately ignored: methods may run at other resolutions.
    """
    if _identity(saved) == _identity(current):
        return None
    was, how = describe_backbone(saved)
    now, _ = describe_backbone(current)
    if saved.get("weights"):
        how = f"{how} (FILE with sha256 {saved['weights'].get('sha256')})"
    return f"checkpoint was trained for backbone {was} but the current backbone is {now}; pass {how} or retrain"


def _resolve(path: Path) -> tuple[Path, Path]:
    """(folder, model file) from either the folder or the ``.safetensors`` file inside it."""
    if path.is_file() and path.suffix == ".safetensors":
        return path.parent, path
    folder = path.parent if path.is_file() else path  # e.g. the manifest.json was passed
    if not folder.is_dir():
        raise ZsadInputError(f"{path}: checkpoint not found; pass the folder written by `zsad train`")
    model = folder / MODEL_FILE
    if not model.is_file():
        raise ZsadInputError(f"{path}: no {MODEL_FILE} in {folder}; pass the folder written by `zsad train`")
    return folder, model


def read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """(model file, manifest) of a checkpoint folder, without reading the tensors: which method is it for?"""
    folder, model = _resolve(Path(path))
    mpath = folder / MANIFEST_FILE
    fix = "; re-run `zsad train`"
    manifest = read_json_object(mpath, ", the checkpoint is incomplete", "a zsad checkpoint manifest", fix)
    if "sha256" not in manifest:
        raise ZsadInputError(f"{mpath}: not a zsad checkpoint manifest (no sha256 recorded){fix}")
    return model, manifest


def check_compatible(path: Path, manifest: dict[str, Any], *, method: str, backbone: dict[str, Any]) -> None:
    """A manifest (``read_manifest``) this zsad reads, made for ``method`` on the weights ``backbone`` describes.

    Needs no tensors, so runs check it before building any model; ``load_checkpoint`` checks it again with the bytes.
    """
    mpath = (path if path.is_dir() else path.parent) / MANIFEST_FILE
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ZsadInputError(
            f"{mpath}: checkpoint format {version!r} is newer than this zsad reads ({FORMAT_VERSION}); upgrade zsad"
        )
    if manifest.get("method") != method:
        raise ZsadInputError(
            f"{path}: checkpoint was trained for method {manifest.get('method')!r}, not {method!r}; "
            f"pass --method {manifest.get('method')} or a checkpoint trained for {method}"
        )
    saved = manifest.get("backbone")
    if not isinstance(saved, dict):
        raise ZsadInputError(f"{mpath}: records no backbone; re-run `zsad train`")
    problem = backbone_mismatch(saved, backbone)
    if problem:
        raise ZsadInputError(f"{path}: {problem}")


def load_checkpoint(
    path: Path, *, method: str, backbone: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on CPU) and manifest of a checkpoint, after checking its bytes, method and backbone.

    ``backbone`` is the current ``ClipBackbone.manifest()``. A different ``image_size`` is allowed: compare
    ``manifest["backbone"]["image_size"]`` yourself to warn.
    """
    path = Path(path)
    model, manifest = read_manifest(path)
    check_compatible(path, manifest, method=method, backbone=backbone)
    if manifest.get("size") not in (None, model.stat().st_size) or _sha256(model) != manifest["sha256"]:
        raise ZsadInputError(
            f"{model}: sha256 differs from the one in {MANIFEST_FILE} (file corrupt or edited); re-run `zsad train`"
        )
    try:
        tensors = load_file(str(model), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad header
        raise ZsadInputError(f"{model}: cannot read tensors ({_first_line(e)}); re-run `zsad train`") from e
    return tensors, manifest


def list_training_images(out: Path, items: Sequence[tuple[str, Any, int]]) -> Path:
    """Create the checkpoint folder and list the exact training images, by path and by content (the leakage guard).

    ``training_images.txt`` keeps its one-path-a-line format (older zsad versions read it);
    ``training_images.sha256.tsv`` adds each file's sha256 and byte size, so a copy of the training data at
    another path is still recognised, and an evaluation hashes only files of a size some training file has.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(ds.samples[i].image_path).resolve() for _, ds, i in items]
    write_text(out / IMAGES_LIST, "".join(f"{p}\n" for p in paths))
    rows = "".join(f"{sha256_file(p)}\t{p.stat().st_size}\t{p}\n" for p in dict.fromkeys(paths))
    write_text(out / IMAGES_HASHES, "sha256\tbytes\tpath\n" + rows)
    return out


def training_record(
    data_info: dict[str, Any], items: Sequence[tuple[str, Any, int]], train_cfg: Any, history: list[dict[str, float]]
) -> dict[str, Any]:
    """The manifest's ``training`` section: data, recipe and loss history."""
    return {
        **data_info,
        "num_images": len(items),
        "categories": sorted({c for c, _, _ in items}),
        "train_config": dataclasses.asdict(train_cfg),
        "history": history,
        "images_list": IMAGES_LIST,
        "images_hashes": IMAGES_HASHES,
    }
