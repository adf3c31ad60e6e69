"""The Ray stages: CPU tasks decoding files (``decode_batch``) and model actors scoring them (``Scorer``).

An actor builds its model once, scores a batch (or a whole group for set-level methods), writes the batch as one
shard (``zsad.runs.shards``) and returns only small summary columns to the driver.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from zsad.engines.ray_data.inputs import read_bytes
from zsad.errors import ZsadInputError
from zsad.runs import SHARD_SCHEMA, BackboneSpec, MethodSpec, encode_map, prepare_method, write_shard

SUMMARY = ("image_uri", "group", "error", "notes")  # the columns an actor returns to the driver


def decode_batch(batch: dict[str, np.ndarray], image_size: int) -> dict[str, Any]:
    """CPU task: read and decode each file, squash it to the model's square as uint8 (normalised by the actor)."""
    from PIL import Image

    from zsad.data import decode_image

    images, heights, widths, errors = [], [], [], []
    for uri in batch["image_uri"]:
        uri = str(uri)
        try:
            try:
                data = read_bytes(uri)
            except OSError as e:
                raise ZsadInputError(f"{uri}: cannot read image: {e.strerror or type(e).__name__}") from None
            img, _ = decode_image(data, uri)
            resized = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
            images.append(np.asarray(resized, dtype=np.uint8))
            widths.append(img.size[0])
            heights.append(img.size[1])
            errors.append("")
        except ZsadInputError as e:
            images.append(np.zeros((image_size, image_size, 3), np.uint8))
            heights.append(0)
            widths.append(0)
            errors.append(" ".join(str(e).split()))
    return {
        "image_uri": np.asarray([str(u) for u in batch["image_uri"]], dtype=object),
        "group": np.asarray([str(g) for g in batch["group"]], dtype=object),
        "pixels": np.stack(images),
        "height": np.asarray(heights, dtype=np.int64),
        "width": np.asarray(widths, dtype=np.int64),
        "error": np.asarray(errors, dtype=object),
    }


def normalize(pixels: np.ndarray | Any, method: Any) -> Any:
    """Squashed uint8 (N, S, S, 3) -> the model's normalised float input (N, 3, S, S), as ``squash_image`` makes it."""
    import torch

    pre = method.backbone.preprocess
    x = torch.as_tensor(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)


class Scorer:
    """Actor: one model built once, scoring batches (or whole groups) and writing each as one Parquet shard."""

    def __init__(self, setup: dict[str, Any]) -> None:
        from zsad.limits import allowing_large

        with allowing_large(bool(setup.get("allow_large"))):
            spec = MethodSpec(
                setup["method"], BackboneSpec(**setup["backbone"]), setup["options"],
                Path(setup["checkpoint"]) if setup["checkpoint"] else None,
            ).validate()  # fmt: skip
        import torch

        if setup.get("torch_threads"):  # Ray sets OMP threads to the reserved CPUs (1 here); use the node's share
            torch.set_num_threads(int(setup["torch_threads"]))
        self.method = spec.build()
        self.setup = setup
        refs = setup["references"]
        prepare_method(self.method, setup["class_name"], normalize(refs, self.method) if refs is not None else None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score the batch (one set when grouped), write its shard, return the small summary columns.

        The summary carries each row's group and the set's notes (a set too small for the method), so the driver
        can say them once; the shard keeps them too, for the manifest of a resumed run.
        """
        from zsad.outputs import detect_row, map_size
        from zsad.runs import parts_json, resize_map, score_images

        ok = np.asarray([not e for e in batch["error"]], dtype=bool)
        rows: list[dict[str, Any]] = []
        scored = None
        if ok.any():
            scored = score_images(self.method, normalize(batch["pixels"][ok], self.method), self.setup["batch_size"])
        notes = json.dumps(scored.notes if scored is not None else [])
        j = 0
        for i, uri in enumerate(batch["image_uri"]):
            row: dict[str, Any] = {k: None for k in SHARD_SCHEMA}
            row.update(image_uri=str(uri), group=str(batch["group"][i]), error=str(batch["error"][i]))
            row["model_id"] = self.setup["model_id"]
            if ok[i] and scored is not None:
                h, w = int(batch["height"][i]), int(batch["width"][i])
                amap = scored.maps[j]
                full = resize_map(amap, map_size(h, w, self.setup["max_map_size"]))
                encoding = self.setup["map_encoding"] if np.isfinite(amap).all() else "float32"
                blob, lo, hi = encode_map(amap, encoding)
                parts = parts_json(scored.parts, j) if scored.parts else "{}"
                made = detect_row(str(uri), scored.scores[j], Path(""), full, (h, w), parts)  # map_size as written
                row.update(
                    {k: v for k, v in made.items() if k in SHARD_SCHEMA},  # the map itself is stored at model size
                    anomaly_map=blob,
                    map_encoding=encoding,
                    map_lo=lo,
                    map_hi=hi,
                    notes=notes,
                )
                j += 1
            rows.append(row)
        write_shard(Path(self.setup["out"]), rows)
        return {k: np.asarray([r[k] or "" for r in rows], dtype=object) for k in SUMMARY}


class GroupScorer(Scorer):
    """Actor for set-level methods: each call is one group (its URIs), read here and scored as one set."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode the group's files, then score them together (one shard per group)."""
        out: dict[str, list[Any]] = {k: [] for k in SUMMARY}
        for group, uris in zip(batch["group"], batch["uris"], strict=True):
            names = [str(u) for u in uris]
            decoded = decode_batch(
                {"image_uri": np.asarray(names, dtype=object), "group": np.asarray([group] * len(names), dtype=object)},
                self.method.image_size,
            )
            done = super().__call__(decoded)
            for k in SUMMARY:
                out[k] += list(done[k])
        return {k: np.asarray(v, dtype=object) for k, v in out.items()}
