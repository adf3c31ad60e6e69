"""The Ray stages: CPU tasks decoding files (``decode_batch``) and model actors scoring them (``Scorer``).

An actor builds its model once, scores a batch (or a whole group for set-level methods), writes the batch as one
shard (``zsad.runs.shards``) and returns only small summary columns to the driver.

With tiles (``DetectJob.tiles``) the decoding tasks hand over each image at full resolution (the tiles are cut
from it), the actors score with ``zsad.runs.score_tiled`` / ``score_tiled_set``, and a shard stores each stitched
map as it is written (original size, capped), in float32: the driver copies it out unchanged as the ``.npy`` map.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from zsad.engines.ray_data.inputs import read_bytes
from zsad.errors import ZsadInputError
from zsad.runs import SHARD_SCHEMA, BackboneSpec, MethodSpec, encode_map, prepare_method, setup_tiled, write_shard
from zsad.tiling import TileSpec

SUMMARY = ("image_uri", "group", "error", "notes")  # the columns an actor returns to the driver
TILED_MAP_ENCODING = "float32"  # a stitched map is stored at its written size, so exactly as written

# one scored image: (score, map as the shard stores it, map at its written size, score parts JSON)
Result = tuple[float, np.ndarray, np.ndarray, str]


def decode_batch(batch: dict[str, np.ndarray], image_size: int, full: bool = False) -> dict[str, Any]:
    """CPU task: read and decode each file, squash it to the model's square as uint8 (normalised by the actor).

    ``full`` (tiled runs): each image is kept at full resolution, uint8 (H, W, 3), one array per row (sizes may
    differ), so the actor cuts its tiles from the very pixels ``zsad detect --tiles`` reads.
    """
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
            kept = img if full else img.resize((image_size, image_size), Image.Resampling.BICUBIC)
            images.append(np.asarray(kept, dtype=np.uint8))
            widths.append(img.size[0])
            heights.append(img.size[1])
            errors.append("")
        except ZsadInputError as e:
            images.append(np.zeros((1, 1, 3) if full else (image_size, image_size, 3), np.uint8))
            heights.append(0)
            widths.append(0)
            errors.append(one_line(e))
    if full:
        pixels = np.empty(len(images), dtype=object)  # ragged: one (H, W, 3) array per row
        for i, a in enumerate(images):
            pixels[i] = a
    else:
        pixels = np.stack(images)
    return {
        "image_uri": np.asarray([str(u) for u in batch["image_uri"]], dtype=object),
        "group": np.asarray([str(g) for g in batch["group"]], dtype=object),
        "pixels": pixels,
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


def set_up(method: Any, class_name: str | None, references: Any, tiles: TileSpec | None) -> None:
    """References into the method as every actor (and the driver's calibrating copy) takes them.

    Untiled: squashed uint8 (N, S, S, 3) or None. Tiled: full-resolution uint8 arrays, tiled by ``setup_tiled``.
    """
    if tiles is None:
        prepare_method(method, class_name, normalize(references, method) if references is not None else None)
        return
    from PIL import Image

    setup_tiled(method, class_name, [Image.fromarray(np.asarray(r, dtype=np.uint8)) for r in references or []], tiles)


def one_line(e: Exception) -> str:
    """An error row's text: the message on one line."""
    return " ".join(str(e).split())


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
        self.tiles: TileSpec | None = setup.get("tiles")
        set_up(self.method, setup["class_name"], setup["references"], self.tiles)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score the batch (one set when grouped), write its shard, return the small summary columns.

        The summary carries each row's group and the set's notes (a set too small for the method), so the driver
        can say them once; the shard keeps them too, for the manifest of a resumed run.
        """
        from zsad.outputs import detect_row

        errors = [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        results: dict[int, Result] = {}
        set_notes: list[str] = []
        if ok:
            score = self._untiled if self.tiles is None else self._tiled
            results, set_notes = score(batch, ok, errors)
        notes = json.dumps(set_notes)
        rows: list[dict[str, Any]] = []
        for i, uri in enumerate(batch["image_uri"]):
            row: dict[str, Any] = {k: None for k in SHARD_SCHEMA}
            row.update(image_uri=str(uri), group=str(batch["group"][i]), error=errors[i])
            row["model_id"] = self.setup["model_id"]
            if i in results:
                value, stored, full, parts = results[i]
                h, w = int(batch["height"][i]), int(batch["width"][i])
                encoding = self.setup["map_encoding"] if self.tiles is None else TILED_MAP_ENCODING
                if not np.isfinite(stored).all():  # levels of a range need finite values
                    encoding = "float32"
                blob, lo, hi = encode_map(stored, encoding)
                made = detect_row(str(uri), value, Path(""), full, (h, w), parts)  # map_size as written
                row.update(
                    {k: v for k, v in made.items() if k in SHARD_SCHEMA},
                    anomaly_map=blob,
                    map_encoding=encoding,
                    map_lo=lo,
                    map_hi=hi,
                    notes=notes,
                )
            rows.append(row)
        write_shard(Path(self.setup["out"]), rows)
        return {k: np.asarray([r[k] or "" for r in rows], dtype=object) for k in SUMMARY}

    def _untiled(
        self, batch: dict[str, np.ndarray], ok: list[int], errors: list[str]
    ) -> tuple[dict[int, Result], list[str]]:
        """The squashed batch scored whole (one set for set-level methods); maps stored at model size."""
        from zsad.outputs import map_size
        from zsad.runs import parts_json, resize_map, score_images

        scored = score_images(self.method, normalize(batch["pixels"][ok], self.method), self.setup["batch_size"])
        out: dict[int, Result] = {}
        for j, i in enumerate(ok):
            h, w = int(batch["height"][i]), int(batch["width"][i])
            amap = scored.maps[j]
            full = resize_map(amap, map_size(h, w, self.setup["max_map_size"]))
            out[i] = (float(scored.scores[j]), amap, full, parts_json(scored.parts, j) if scored.parts else "{}")
        return out, list(scored.notes)

    def _tiled(
        self, batch: dict[str, np.ndarray], ok: list[int], errors: list[str]
    ) -> tuple[dict[int, Result], list[str]]:
        """Each full-resolution image scored tile by tile; a set-level method's batch as one set, by tile position.

        An image, or a set, that the tiling refuses (a set of mixed sizes, a grid leaving gaps) becomes error rows
        with the one-line reason: the driver never sees the images' sizes, so it cannot refuse them up front.
        """
        from PIL import Image

        from zsad.methods.base import SetLevelMethod
        from zsad.runs import score_tiled, score_tiled_set

        assert self.tiles is not None
        bs, cap = int(self.setup["batch_size"]), int(self.setup["max_map_size"])
        images = {i: Image.fromarray(np.asarray(batch["pixels"][i], dtype=np.uint8)) for i in ok}
        out: dict[int, Result] = {}
        if isinstance(self.method, SetLevelMethod):
            try:
                got = score_tiled_set(self.method, list(images.values()), self.tiles, bs, cap)
            except ZsadInputError as e:
                for i in images:
                    errors[i] = f"{batch['image_uri'][i]}: {one_line(e)}"
                return out, []
            for i, t in zip(images, got, strict=True):
                out[i] = (t.score, t.anomaly_map, t.anomaly_map, "{}")
            return out, list(self.method.set_notes)
        for i, image in images.items():
            try:
                t = score_tiled(self.method, image, self.tiles, bs, cap)
            except ZsadInputError as e:
                errors[i] = f"{batch['image_uri'][i]}: {one_line(e)}"
                continue
            out[i] = (t.score, t.anomaly_map, t.anomaly_map, "{}")
        return out, []


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
                full=self.tiles is not None,
            )
            done = super().__call__(decoded)
            for k in SUMMARY:
                out[k] += list(done[k])
        return {k: np.asarray(v, dtype=object) for k, v in out.items()}
