"""Models of the service: checked specs, a bounded LRU of prepared methods, and reference sets.

A served model is a method prepared for one class (its text features) and, for few-shot methods, one reference
set: the key is (method, options, class name, reference id). Methods asking for the same backbone share one
loaded copy; a backbone no kept model uses is dropped with the last of them. Everything that touches weights
runs on the batcher's worker thread (``Batcher.call``).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsad.errors import ZsadInputError
from zsad.methods import get_method_class, list_methods
from zsad.methods.base import Method
from zsad.methods.options import BACKBONE_FIELDS
from zsad.runs import (
    BackboneSpec,
    MethodSpec,
    Normals,
    Policy,
    memorised,
    normals_of,
    prepare_method,
    reference_order,
    refuse_tiled_rescaling,
    setup_tiled,
    split_references,
    thresholds,
    tiled_normals,
)
from zsad.thresholds import Threshold
from zsad.tiling import TileSpec

# Options a client may not set: they choose files or weights on the server (set them when starting it).
SERVER_ONLY = frozenset({*BACKBONE_FIELDS, "checkpoint", "cache_dir"})


@dataclass(frozen=True)
class ModelKey:
    """What decides a served model's outputs besides the server's backbone."""

    method: str
    options: str  # canonical JSON of the client's options
    class_name: str
    reference_id: str | None = None
    backbone: str = ""  # canonical JSON of a profile's backbone when it is not the server's; "" = the server's
    tiles: TileSpec | None = None  # scored tile by tile (the server's --tiles, or a profile's own)


@dataclass
class Reference:
    """Normal images kept for a (method, options, class): few-shot references and the calibrated thresholds."""

    id: str
    method: str
    options: dict[str, Any]
    class_name: str
    num_images: int
    references: torch.Tensor | list[Image.Image] | None  # memorised by a few-shot method (PIL images when tiled)
    calibration: torch.Tensor | list[Image.Image] | None  # scored for the normal-quantile thresholds
    normals: Normals | None = None  # their scores and map maxima (``calibrate``)

    @property
    def thresholds(self) -> tuple[Threshold, Threshold]:
        """The image and pixel thresholds of these normals alone (a request re-scaled set-wide recalibrates)."""
        empty = np.array([])
        return thresholds(empty, empty, self.normals, Policy())

    def as_dict(self) -> dict[str, Any]:
        """The JSON answer of ``POST /v1/references``."""
        thr, pthr = self.thresholds
        return {
            "reference_id": self.id,
            "method": self.method,
            "class_name": self.class_name,
            "options": self.options,
            "num_images": self.num_images,
            "k_shot": 0 if self.references is None else len(self.references),
            "num_calibration": 0 if self.calibration is None else len(self.calibration),
            "threshold": _finite(thr.value),
            "threshold_source": thr.source,
            "pixel_threshold": _finite(pthr.value),
        }


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


@dataclass
class Served:
    """A built, prepared method and what the responses and the manifest say about it."""

    id: str
    key: ModelKey
    method: Method
    describe: dict[str, Any]


class ModelPool:
    """Specs checked once per (method, options), models kept in a bounded LRU, backbones shared."""

    def __init__(
        self,
        backbone: BackboneSpec,
        server_options: dict[str, dict[str, Any]],
        checkpoints: dict[str, Path],
        run_on_worker: Callable[[Callable[[], Any]], Future[Any]],
        max_models: int = 4,
        max_references: int = 16,
        max_batch: int = 1,
        max_map_size: int = 1024,
    ) -> None:
        self.backbone, self.server_options, self.checkpoints = backbone, server_options, checkpoints
        self._run = run_on_worker
        self.max_models, self.max_references = max(1, max_models), max(1, max_references)
        self.max_batch = max_batch  # images of one forward: a spec's memory check covers them
        self.max_map_size = max_map_size  # the stitched maps' cap, for tiled calibration
        self._specs: dict[tuple[str, str, str, bool], MethodSpec] = {}
        self._models: OrderedDict[ModelKey, Served] = OrderedDict()
        self._building: dict[ModelKey, Future[Served]] = {}
        self._backbones: dict[tuple[Any, ...], Any] = {}
        self.references: OrderedDict[str, Reference] = OrderedDict()
        self.described: dict[str, dict[str, Any]] = {}  # model id -> describe(), for the manifest
        self.built = 0  # models prepared since start (each new class name costs one)
        self.evicted = 0  # of them, dropped to stay within max_models
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ specs
    def method_name(self, name: str | None, default: str) -> str:
        """A registered method name (case as registered), or a one-line error listing them."""
        wanted = (name or default).strip()
        try:
            return get_method_class(wanted).name
        except (KeyError, ValueError, ZsadInputError):
            raise ZsadInputError(f"method {wanted!r}: unknown; available: {', '.join(list_methods())}") from None

    def backbone_key(self, backbone: BackboneSpec | None) -> str:
        """The empty string for the server's backbone, else the canonical JSON of ``backbone`` (a profile's own)."""
        if backbone is None or backbone == self.backbone:
            return ""
        return json.dumps(asdict(backbone), sort_keys=True, default=str)

    def spec(
        self, method: str, options: dict[str, Any], backbone: BackboneSpec | None = None, *, server: bool = True
    ) -> MethodSpec:
        """The checked spec of ``method`` with the server's options and the client's on top (cached).

        A profile brings its own backbone and its complete options (``server=False``: the server's ``-o`` options
        do not apply, so the profile scores the same on every server).
        """
        refused = sorted(set(options) & SERVER_ONLY)
        if refused:
            raise ZsadInputError(
                f"option(s) {', '.join(refused)}: set by the server (start it with --backbone/--weights/"
                "--checkpoint), not per request"
            )
        canon = _canonical(options)
        memo = (method, canon, self.backbone_key(backbone), server)
        with self._lock:
            cached = self._specs.get(memo)
        if cached is not None:
            return cached
        merged = {**(self.server_options.get(method, {}) if server else {}), **options}
        spec = MethodSpec(method, backbone or self.backbone, merged, self.checkpoints.get(method))
        spec.validate(batch_size=self.max_batch)
        with self._lock:
            self._specs[memo] = spec
        return spec

    def key(
        self,
        method: str,
        options: dict[str, Any],
        class_name: str | None,
        reference: str | None,
        backbone: BackboneSpec | None = None,
        *,
        server: bool = True,
        tiles: TileSpec | None = None,
    ) -> ModelKey:
        """The model identity; a method that ignores class names gets one model for every name."""
        cls = get_method_class(method)
        name = (class_name or "object").strip() or "object"
        used = cls.uses_class_name(self.spec(method, options, backbone, server=server).config)
        canon = _canonical(options) if server else "profile:" + _canonical(options)
        return ModelKey(method, canon, name if used else "object", reference, self.backbone_key(backbone), tiles)

    def availability(self, method: str) -> str | None:
        """Why ``method`` cannot run on this server, or None."""
        spec = MethodSpec(method, self.backbone, self.server_options.get(method, {}), self.checkpoints.get(method))
        if spec.untrained:
            return f"method {method} needs trained parts: start the server with --checkpoint DIR (from `zsad train`)"
        return None

    # ------------------------------------------------------------------------------------------ models
    def get(self, key: ModelKey, spec: MethodSpec) -> Future[Served]:
        """The prepared model for ``key``: kept, being built, or built now on the worker thread."""
        with self._lock:
            served = self._models.get(key)
            if served is not None:
                self._models.move_to_end(key)
                done: Future[Served] = Future()
                done.set_result(served)
                return done
            pending = self._building.get(key)
            if pending is not None:
                return pending
            fut = self._run(lambda: self._build(key, spec))
            self._building[key] = fut
        fut.add_done_callback(lambda _: self._built(key))
        return fut

    def _build(self, key: ModelKey, spec: MethodSpec) -> Served:
        method = spec.build(self._backbones)
        ref = self.references.get(key.reference_id) if key.reference_id else None
        if key.reference_id and ref is None:
            raise ZsadInputError(f"reference_id {key.reference_id}: unknown or expired; post the references again")
        refs = ref.references if ref is not None else None
        if key.tiles is None:
            assert not isinstance(refs, list)
            prepare_method(method, key.class_name, refs)
        else:
            refuse_tiled_rescaling(type(method), method.config, key.tiles)
            assert not isinstance(refs, torch.Tensor)
            setup_tiled(method, key.class_name, refs or [], key.tiles)
        served = Served(uuid.uuid4().hex[:12], key, method, method.describe())
        with self._lock:
            self._models[key] = served
            self.described[served.id] = {
                **served.describe,
                "class_name": key.class_name,
                "reference_id": key.reference_id,
            }
            self.built += 1
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
                self.evicted += 1
            used = {id(m.method.backbone) for m in self._models.values()}
            for k in [k for k, bb in self._backbones.items() if id(bb) not in used]:
                del self._backbones[k]  # queued jobs keep their own references until they finish
        return served

    def _built(self, key: ModelKey) -> None:
        with self._lock:
            self._building.pop(key, None)

    # ------------------------------------------------------------------------------------------ references
    def new_reference(
        self,
        method: str,
        options: dict[str, Any],
        class_name: str,
        images: torch.Tensor | list[Image.Image],
        k_shot: int | None,
        ref_id: str | None = None,
    ) -> Reference:
        """Split normal images into few-shot references and calibration images (scored later, on the worker)."""
        cls = get_method_class(method)
        if k_shot is not None and k_shot < 0:
            raise ZsadInputError(f"k_shot {k_shot}: must be >= 0 (0 = every image)")
        if k_shot and not cls.supports_few_shot:
            raise ZsadInputError(f"k_shot: method {method} takes no reference images (they only calibrate)")
        # the seeded order and split of every front end (decide.REFERENCE_SPLIT when k_shot is None)
        order = reference_order(len(images))
        if isinstance(images, list):  # full-resolution images, for tiled scoring
            ordered = [images[i] for i in order]
            k = memorised(len(ordered), k_shot, cls.supports_few_shot)
            refs_l, calib_l = (ordered[:k] if cls.supports_few_shot else None), ordered[k:]
            return Reference(ref_id or uuid.uuid4().hex, method, options, class_name, len(images), refs_l, calib_l)
        refs, calib = split_references(cls.supports_few_shot, images[order], k_shot)
        return Reference(ref_id or uuid.uuid4().hex, method, options, class_name, len(images), refs, calib)

    def calibrate(self, ref: Reference, served: Served) -> Reference:
        """Score the calibration images (worker thread) and keep the reference (bounded, oldest dropped)."""
        if isinstance(ref.calibration, list):
            tiles = served.key.tiles
            if ref.calibration and tiles is not None:
                got = tiled_normals(served.method, ref.calibration, tiles, self.max_batch, self.max_map_size)
                ref.normals = Normals(*got)
            return ref
        ref.normals = normals_of(served.method, ref.calibration)
        return ref

    def keep_reference(self, ref: Reference) -> None:
        """Make ``ref`` nameable by ``/v1/detect`` (the oldest is forgotten beyond ``max_references``)."""
        with self._lock:
            self.references[ref.id] = ref
            while len(self.references) > self.max_references:
                self.references.popitem(last=False)


def _canonical(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=str)
