"""The service's work, independent of HTTP: decode uploads, get the model, batch, threshold, store, answer.

``zsad.serve.app`` maps routes and errors onto this; tests and other front ends can drive it directly. Request
handling is async (it waits on the worker's futures); CPU work that is not the model (decoding, resizing maps,
drawing overlays, writing files) runs in worker threads of the event loop, never on the model's thread.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from anyio import to_thread
from PIL import Image

from zsad.errors import ZsadInputError
from zsad.methods import get_method_class, list_methods
from zsad.methods.base import Method, SetLevelMethod
from zsad.outputs import abs_path, detect_row, map_size
from zsad.progress import reporter
from zsad.runs import (
    RANDOM_WEIGHTS_WARNING,
    BackboneSpec,
    Decision,
    MethodSpec,
    Normals,
    Policy,
    ScoredBatch,
    TiledScore,
    decide,
    normals_of,
    overlay_panel,
    parts_json,
    profile_source,
    resize_map,
    route_checkpoints,
    score_images,
    score_tiled,
    score_tiled_set,
    tile_key,
)
from zsad.serve.batching import Batcher
from zsad.serve.metrics import Metrics
from zsad.serve.models import ModelPool, Reference, Served
from zsad.serve.station import Profiles, Station, open_station, redact
from zsad.serve.store import ResultStore
from zsad.serve.watch import Watchers, WatchSpec
from zsad.tiling import TileSpec

if TYPE_CHECKING:
    from zsad.serve.sinks import Delivery, Sink

T = TypeVar("T")
# A class name goes into every prompt, and CLIP reads 77 tokens per prompt (template words included): 200
# characters are some 40 to 60 tokens, longer than any part name, and a much longer name would be cut off anyway.
# Each new name also builds a model, so a client must not be able to send arbitrarily long ones.
MAX_CLASS_NAME = 200
SOURCES = ("api", "upload", "folder")  # where a station's inspection came from: a client, the page, a watched folder
DEFAULT = "(each method's default)"  # a backbone setting left to the method, in the run key


@dataclass
class ServeConfig:
    """How ``zsad serve`` runs: models, limits, batching and where results go."""

    method: str = "winclip"
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method, set at start (-o)
    checkpoints: list[Path] = field(default_factory=list)
    token: str | None = None
    out: Path | None = None
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_images: int = 32
    max_upload_bytes: int = 64 * 2**20
    max_models: int = 4
    max_map_size: int = 1024
    keep_results: int = 2000
    overlays: bool = True
    station: bool = False  # keep profiles, history and reviews in a database (``--station``; implied by ``db``)
    db: str | None = None  # the station's database URL; default sqlite:///OUT/station.db
    keep_days: int = 0  # the station's retention: rows older than this deleted (0 = kept)
    keep_images: int = 0  # the station's retention: only the newest N inspections keep their files (0 = all)
    station_name: str | None = None  # how this server's rows name it (default: the host name)
    watch: list[WatchSpec] = field(default_factory=list)  # folders scored by a profile (``--watch DIR=PROFILE``)
    rescan_s: float = 10.0  # the watchers' full rescan, the safety net under OS file events
    sinks: list[str] = field(default_factory=list)  # where each decision's event goes (``--sink URL``)
    public_url: str | None = None  # how clients reach this server: events then carry absolute links
    tiles: TileSpec | None = None  # every model scores large images tile by tile (``--tiles``); None: squashed

    def record(self) -> dict[str, Any]:
        """The settings for the manifest and ``/v1/methods`` (never the token)."""
        d = asdict(self)
        d.pop("token")
        d["auth"] = self.token is not None
        d["db"] = redact(self.db) if self.db else None
        d["sinks"] = [_sink_name(u) for u in self.sinks]
        d["watch"] = [w.describe() for w in self.watch]
        d["tiles"] = tile_key(self.tiles).get("tiles")
        return json.loads(json.dumps(d, default=str))

    def validate(self) -> None:
        """One line per bad setting, before anything loads: each limit within ``zsad.limits``' documented range.

        A forward of ``max_batch`` images must also fit the memory of the default method's backbone
        (``BackboneSpec.check_memory``); ``--allow-large`` lifts the upper bounds.
        """
        from zsad import limits

        limits.SERVE_BATCH.check(self.max_batch)
        limits.SERVE_QUEUE.check(self.max_queue)
        limits.SERVE_IMAGES.check(self.max_images)
        limits.SERVE_UPLOAD.check(self.max_upload_bytes)
        limits.SERVE_MODELS.check(self.max_models)
        limits.SERVE_KEEP.check(self.keep_results)
        limits.MAP_SIZE.check(self.max_map_size)
        if self.tiles is not None:
            self.tiles.check()
        if self.max_wait_ms < 0 or not math.isfinite(self.max_wait_ms):
            raise ZsadInputError(f"--max-wait-ms {self.max_wait_ms}: must be a finite number >= 0")
        if self.token is not None and not self.token.strip():
            raise ZsadInputError("--token: empty; give a secret, or leave the option out to serve without one")
        if self.db is not None:
            self.station = True
        if self.station and self.out is None:
            raise ZsadInputError("--station/--db: the station keeps images and maps as files; give --out DIR too")
        if (self.watch or self.sinks) and not self.station:
            what = "--watch" if self.watch else "--sink"
            raise ZsadInputError(f"{what}: needs the station (--station or --db, with --out): it remembers what was "
                                 "scored and queues the events")  # fmt: skip
        for spec in self.watch:
            spec.check()
        if not (0.5 <= self.rescan_s <= 3600):
            raise ZsadInputError(f"--rescan {self.rescan_s}: seconds from 0.5 to 3600")
        if self.sinks:
            from zsad.serve.sinks import parse_sinks

            for sink in parse_sinks(self.sinks):  # every URL checked now, in one line each
                sink.close()
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ZsadInputError(f"--public-url {self.public_url!r}: an http(s):// URL is needed")
        for flag, value in (("--keep-days", self.keep_days), ("--keep-images", self.keep_images)):
            if value < 0:
                raise ZsadInputError(f"{flag} {value}: must be >= 0 (0 = keep everything)")
        self.backbone = BackboneSpec.of(self.backbone)
        bb = self.backbone.resolve(get_method_class(self.method).config_cls())
        assert bb.image_size is not None
        limits.IMAGE_SIZE.check(bb.image_size)
        bb.check_memory(self.max_batch, "--max-batch")


@dataclass
class Upload:
    """One uploaded file: the client's name (a label for messages and tables only) and its bytes."""

    name: str
    data: bytes


@dataclass
class _Decoded:
    upload: Upload
    image: Image.Image
    fmt: str
    index: int  # in the request


def client_name(name: str | None) -> str:
    """A client's file name made safe to show (never to open): printable, at most 100 characters."""
    text = "".join(ch if ch.isprintable() else "?" for ch in (name or "upload")).strip() or "upload"
    return text if len(text) <= 100 else text[:97] + "..."


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].replace("``", "") if lines else ""


async def _wait(fut: Any) -> Any:
    return await asyncio.wrap_future(fut)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await to_thread.run_sync(fn, *args)


class Service:
    """One model worker (batcher), the model pool, the result store, and the request logic."""

    def __init__(self, config: ServeConfig) -> None:
        config.validate()
        self.config = config
        self.default_method = get_method_class(config.method).name
        trainable = [m for m in list_methods() if get_method_class(m).trainable]
        checkpoints = route_checkpoints(trainable, list(config.checkpoints)) if config.checkpoints else {}
        typed: dict[str, dict[str, Any]] = {}
        for name, opts in config.options.items():  # typed and range-checked now, not at the first request
            spec = MethodSpec(name, config.backbone, dict(opts), checkpoints.get(name))
            spec.validate(batch_size=config.max_batch)
            typed[spec.name] = {k: getattr(spec.config, k, v) for k, v in opts.items()}
        self.batcher = Batcher(config.max_batch, config.max_wait_ms, config.max_queue)
        self.pool = ModelPool(
            config.backbone,
            config.options,
            checkpoints,
            self.batcher.call,
            config.max_models,
            max_batch=config.max_batch,
            max_map_size=config.max_map_size,
        )
        self.started = time.time()
        self.requests = 0
        self.images_scored = 0
        self.images_failed = 0
        self._manifested: set[str] = set()  # model ids already in manifest.json
        self._closed = False
        try:
            default = self.pool.spec(self.default_method, {})  # the default method's backbone and weights checked
            key = run_key(config.backbone, default.backbone, typed, checkpoints) if config.out is not None else None
            if key is not None:
                key |= tile_key(config.tiles)  # an ad hoc request's scores depend on it (a profile's on its own)
            if key is not None and config.station:
                key["station"] = True  # a station's folder holds no predictions.csv: never mixed with one that does
            self.store = ResultStore(config.out, config.keep_results, config.record(), key, station=config.station)
        except BaseException:
            self.batcher.stop()
            raise
        self.station: Station | None = None
        try:
            if config.station:
                assert config.out is not None
                self.station = open_station(config, config.out)
        except BaseException:
            self.batcher.stop()
            self.store.close()
            raise
        self.profiles = Profiles(self)
        self.http = False  # set by create_app: events then link to this server's routes
        self.watchers = Watchers(self, config.watch, rescan_s=config.rescan_s)
        self.sinks: list[Sink] = []  # the server's own (--sink): every decision it records
        self.delivery: Delivery | None = None
        self._by_url: dict[str, Sink] = {}  # profiles' sinks, by URL
        self._refused: set[str] = set()
        try:
            for watched in config.watch:  # a watched profile must exist before anything is watched
                assert self.station is not None
                self.station.profile(watched.profile)
            if self.station is not None:
                from zsad.serve.sinks import Delivery, parse_sinks

                self.sinks = parse_sinks(config.sinks)
                self.delivery = Delivery(
                    self.station, self.sinks, on_delivered=self._delivered, on_failed=self._delivery_failed
                )
                for p in self.station.profiles():  # what their sinks still hold is delivered from the start
                    self.profile_sinks(p["setup"])
        except BaseException:
            self.close()
            raise
        self.metrics = Metrics(self.stats, self.sink_state)
        if self.delivery is not None:
            self.delivery.start()
        self.random_weights = default.backbone.random_init
        if self.random_weights:  # every check passed: said once, on the console, before the server listens
            reporter().message(RANDOM_WEIGHTS_WARNING, "alert")
        self.store.write_manifest({}, self.stats())

    # ------------------------------------------------------------------------------------------ info
    def methods(self) -> dict[str, Any]:
        """Every registered method with what a client needs to call it (``GET /v1/methods``)."""
        rows = []
        for name in list_methods():
            cls = get_method_class(name)
            cfg = cls.config_cls()
            bb = self.config.backbone
            reason = self.pool.availability(name)
            pretrained = bb.pretrained if bb.pretrained is not None else cfg.pretrained
            random = BackboneSpec(pretrained=pretrained, weights=bb.weights).random_init  # the backbone's own rule
            rows.append(
                {
                    "name": name,
                    "needs_class_name": cls.uses_class_name(self._default_config(name)),
                    "few_shot": cls.supports_few_shot,
                    "transductive": cls.transductive_for(self._default_config(name)),
                    "set_level": cls.set_level,
                    "trained": cls.trainable,
                    "available": reason is None,
                    "unavailable_reason": reason,
                    "backbone": bb.model_name or cfg.backbone,
                    "pretrained": "weights file" if bb.weights is not None else pretrained,
                    "image_size": bb.image_size or cfg.image_size,
                    "random_weights": random,
                    "precision": "fp32" if bb.precision in cls.full_precision else bb.precision,
                    "doc": _first_line(sys.modules[cls.__module__].__doc__ or cls.__doc__),
                }
            )
        limits = {
            k: getattr(self.config, k)
            for k in ("max_images", "max_upload_bytes", "max_batch", "max_wait_ms", "max_queue", "max_map_size")
        }
        limits["max_class_name"] = MAX_CLASS_NAME
        tiles = tile_key(self.config.tiles).get("tiles")  # every request is scored tiled, or none is
        return {"methods": rows, "default_method": self.default_method, "limits": limits, "tiles": tiles}

    def _default_config(self, name: str) -> Any:
        """The config a request without options gets (the server's options applied)."""
        from zsad.methods.options import make_config

        cls = get_method_class(name)
        return make_config(cls.config_cls, dict(self.config.options.get(name, {})), name)

    def stats(self) -> dict[str, Any]:
        """Counters and the batch sizes the worker formed (``GET /v1/stats``)."""
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": self.requests,
            "images_scored": self.images_scored,
            "images_failed": self.images_failed,
            "queue_depth": self.batcher.depth,
            "worker_busy": self.batcher.busy,
            "models_kept": len(self.pool._models),
            "models_built": self.pool.built,
            "models_evicted": self.pool.evicted,
            "references_kept": len(self.pool.references),
            "rows_written": self.store.rows_written if self.station is None else self.profiles.recorded,
            "batching": self.batcher.stats.as_dict(),
            "watch": self.watchers.state(),
            "sinks": self.sink_state(),
        }

    def profile_sinks(self, setup: dict[str, Any]) -> list[Sink]:
        """The sinks a profile's setup names, each delivered to from its first use (one per name, kept)."""
        urls = setup.get("sinks") or []
        if not urls or self.delivery is None:
            return []
        from zsad.serve.sinks import parse_sink

        out = []
        for url in urls:
            sink = self._by_url.get(url)
            if sink is None:
                try:
                    sink = self.delivery.add(parse_sink(url))
                except ZsadInputError as e:  # e.g. its secret's variable is not set on this machine
                    if url not in self._refused:
                        self._refused.add(url)
                        reporter().message(f"profile sink not used here: {' '.join(str(e).split())}", "warning")
                    continue
                self._by_url[url] = sink
            out.append(sink)
        return out

    def sink_state(self) -> dict[str, dict[str, Any]]:
        """Per sink: kind, filter, connection, delivered and pending events, the oldest pending one's age, errors."""
        if self.delivery is None:
            return {}
        try:
            return self.delivery.state()
        except Exception as e:  # the database unreachable: /v1/stats still answers, /readyz says why
            why = " ".join(str(e).split())[:200]
            return {k.name: {**k.describe(), "error": why} for k in self.delivery.sinks}

    def _delivered(self, sink: str, latencies: list[float]) -> None:
        for s in latencies:
            self.metrics.delivery.labels(sink).observe(s)
        self.metrics.deliveries.labels(sink).inc(len(latencies))

    def _delivery_failed(self, sink: str, reason: str) -> None:
        self.metrics.delivery_failures.labels(sink).inc()

    def readiness(self) -> list[str]:
        """Why this server should not get traffic now (``/readyz``): a model loading, the database unreachable."""
        reasons = [f"loading the model of {k.method} for class {k.class_name!r}" for k in list(self.pool._building)]
        reasons += self.watchers.readiness()
        if self.station is not None:
            try:
                self.station.ping()
            except Exception as e:
                reasons.append(f"the station's database is unreachable: {' '.join(str(e).split())[:200]}")
        return reasons

    def close(self) -> None:
        """Finish queued work, write the manifest, release the output folder (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        self.batcher.stop()
        if self.delivery is not None:  # it holds every sink, the server's and the profiles'
            self.delivery.stop()
            for sink in self.delivery.sinks:
                sink.close()
        self.profiles.stop()
        self.store.write_manifest(dict(self.pool.described), self.stats(), stopped=True)
        if self.station is not None:
            self.station.close()
        self.store.close()

    # ------------------------------------------------------------------------------------------ requests
    def check_count(self, uploads: list[Upload]) -> None:
        """At least one image and at most ``max_images``."""
        if not uploads:
            raise ZsadInputError("no images: send one or more files in the 'images' field")
        if len(uploads) > self.config.max_images:
            raise ZsadInputError(f"{len(uploads)} images: at most {self.config.max_images} per request")

    def _resolve(self, method: str | None, options: str | dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        name = self.pool.method_name(method, self.default_method)
        reason = self.pool.availability(name)
        if reason:
            raise ZsadInputError(reason)
        if isinstance(options, str):
            try:
                options = json.loads(options) if options.strip() else {}
            except json.JSONDecodeError as e:
                raise ZsadInputError(f'options: not JSON ({e.msg}); send an object such as {{"k": 1}}') from None
        if options is not None and not isinstance(options, dict):
            raise ZsadInputError("options: send a JSON object of option names and values")
        return name, dict(options or {})

    @staticmethod
    def _decode(
        uploads: list[Upload], skip_bad: bool = False, all_bad_ok: bool = False
    ) -> tuple[list[_Decoded], list[dict[str, str]]]:
        """The readable uploads; the first unreadable one is a 422, or with ``skip_bad`` one entry of the errors.

        With ``skip_bad`` a request of only unreadable images is a 422 too, unless ``all_bad_ok`` (a watched
        folder's chunk: each refusal is recorded, none is the client's mistake).
        """
        from zsad.data import decode_image

        out, errors = [], []
        for i, u in enumerate(uploads):
            try:
                img, fmt = decode_image(u.data, client_name(u.name))
            except ZsadInputError as e:
                if not skip_bad:
                    raise
                errors.append({"file_name": client_name(u.name), "error": " ".join(str(e).split())})
                continue
            out.append(_Decoded(u, img, fmt, i))
        if errors and not out and not all_bad_ok:
            listed = "; ".join(e["error"] for e in errors)
            raise ZsadInputError(f"no readable image among the {len(errors)} sent: {listed}")
        return out, errors

    @staticmethod
    def check_class_name(name: str | None) -> str | None:
        """A client's class name, stripped; None when empty; longer than ``MAX_CLASS_NAME`` refused."""
        text = (name or "").strip()
        if len(text) > MAX_CLASS_NAME:
            raise ZsadInputError(
                f"class_name: {len(text)} characters; at most {MAX_CLASS_NAME} (CLIP reads 77 tokens per prompt, "
                "so a much longer name would be cut off anyway)"
            )
        return text or None

    def _inputs(self, decoded: list[_Decoded], served: Served) -> torch.Tensor | list[Image.Image]:
        """The model's input: the images squashed to its size, or themselves when the server scores tiled."""
        from zsad.data import squash_image

        if served.key.tiles is not None:
            return [d.image for d in decoded]
        pre = served.method.backbone.preprocess
        return torch.stack([squash_image(d.image, pre.image_size, pre.mean, pre.std) for d in decoded])

    async def _model(
        self,
        name: str,
        options: dict[str, Any],
        class_name: str | None,
        ref: str | None,
        backbone: BackboneSpec | None = None,
        *,
        server: bool = True,
        tiles: TileSpec | None = None,
    ) -> Served:
        """The prepared model for a key.

        ``server`` (an ad hoc request) scores with the server's ``--tiles``, a profile with its own ``tiles``.
        """
        spec: MethodSpec = await _in_thread(partial(self.pool.spec, name, options, backbone, server=server))
        cut = self.config.tiles if server else tiles
        key = self.pool.key(name, options, class_name, ref, backbone, server=server, tiles=cut)
        served: Served = await _wait(self.pool.get(key, spec))
        return served

    async def detect(
        self,
        uploads: list[Upload],
        method: str | None = None,
        class_name: str | None = None,
        options: str | dict[str, Any] | None = None,
        threshold: float | None = None,
        reference_id: str | None = None,
        skip_bad: bool = False,
        threshold_rule: str = "robust_outlier",
        profile: str | None = None,
        source: str = "api",
        finished: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Score one request's images; set-level methods score them as one set. Returns the JSON answer.

        Decisions are ``zsad.runs.decide``'s, as in every front end: ``threshold``, else the references' normal
        quantile, else ``threshold_rule`` over this request's images (at least ``MIN_IMAGES`` of them), else none.

        ``skip_bad``: unreadable images are listed in the answer's ``errors`` and the others scored (all unreadable
        is still a 422); without it the first unreadable image refuses the whole request.

        ``finished``: a watched folder's files, one intake key per upload (``zsad.serve.watch``), committed with
        the inspections (refusals too, with their reasons); the answer then lists each upload's outcome in
        ``finished`` (state, uid, label, error), in upload order.
        """
        started = time.perf_counter()
        if finished is not None and (len(finished) != len(uploads) or not profile or self.station is None):
            raise ValueError("finished: one intake key per upload, with a profile, on a station")
        try:
            return await self._answer(
                uploads,
                method,
                class_name,
                options,
                threshold,
                reference_id,
                skip_bad,
                threshold_rule,
                profile,
                source,
                finished,
            )
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)

    async def _answer(
        self,
        uploads: list[Upload],
        method: str | None,
        class_name: str | None,
        options: str | dict[str, Any] | None,
        threshold: float | None,
        reference_id: str | None,
        skip_bad: bool,
        threshold_rule: str,
        profile: str | None,
        source: str,
        finished: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        self.check_count(uploads)
        if source not in SOURCES:
            raise ZsadInputError(f"source {source!r}: use one of {', '.join(SOURCES)}")
        if profile:
            named = [k for k, v in (("method", method), ("class_name", class_name), ("options", options),
                     ("threshold", threshold), ("reference_id", reference_id)) if v not in (None, "")]  # fmt: skip
            if named:
                raise ZsadInputError(
                    f"profile {profile}: the profile decides method, class name, options, references and threshold; "
                    f"leave out {', '.join(named)}"
                )
            # bad input before any model work
            decoded, errors = await _in_thread(self._decode, uploads, skip_bad, finished is not None)
            if not decoded:  # a watched chunk of unreadable files only: their refusals are its whole result
                return await _in_thread(self._refuse, errors, profile, finished)
            return await self._detect(decoded, errors, *await self.profiles.prepare(profile), source, finished)
        policy = Policy(threshold, threshold_rule)  # checked before any work
        class_name = self.check_class_name(class_name)
        ref: Reference | None = None
        cname: str | None
        if reference_id:
            ref = self.pool.references.get(reference_id)
            if ref is None:
                raise ZsadInputError(f"reference_id {reference_id!r}: unknown or expired; post the references again")
            given = self.pool.method_name(method, ref.method) if method else ref.method
            asked = self.pool.key(ref.method, {}, class_name, None).class_name if class_name else ref.class_name
            if given != ref.method or asked != ref.class_name:
                raise ZsadInputError(
                    f"reference_id {reference_id}: made for method {ref.method}, class {ref.class_name!r}; "
                    "omit method and class_name or use the same"
                )
            name, opts, cname = ref.method, ref.options, ref.class_name
        else:
            name, opts = self._resolve(method, options)
            cname = class_name
        decoded, errors = await _in_thread(self._decode, uploads, skip_bad)
        served = await self._model(name, opts, cname, reference_id or None)
        return await self._detect(decoded, errors, served, policy, ref, None, source)

    async def _detect(
        self,
        decoded: list[_Decoded],
        errors: list[dict[str, str]],
        served: Served,
        policy: Policy,
        ref: Reference | None,
        profile: dict[str, Any] | None,
        source: str,
        finished: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Score, decide, store and answer: the same for a profile's request and an ad hoc one."""
        images = await _in_thread(self._inputs, decoded, served)
        m = served.method
        if isinstance(images, list):  # tiled: the model's thread scores each image's tiles in batches
            tiled = await _wait(self.batcher.call(lambda: self._score_tiled(m, images, served.key.tiles)))
            maps, rows = await _in_thread(self._tiled_rows, decoded, tiled)
            notes = list(m.set_notes) if m.set_level else []
        else:
            if m.set_level:
                scored = await _wait(self.batcher.call(lambda: score_images(m, images, self.config.max_batch)))
            else:
                scored = await _wait(self.batcher.score(m, images))
            maps, rows = await _in_thread(self._rows, decoded, scored)
            notes = scored.notes
        if m.is_transductive and ref is not None and ref.calibration is not None:
            # normal images re-scaled with this request's set statistics: the model's thread scores them
            decision = await _wait(self.batcher.call(lambda: self._decide(served, rows, policy, ref)))
        else:
            decision = self._decide(served, rows, policy, ref)
        context = {"profile": profile, "source": source, "finished": finished, "uploads": len(decoded) + len(errors)}
        answer = await _in_thread(self._finish, served, decoded, maps, rows, decision, notes, errors, context)
        self.requests += 1
        self.images_scored += len(decoded)
        self.images_failed += len(errors)
        return answer

    def _rows(self, decoded: list[_Decoded], scored: ScoredBatch) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        """Each image's map at its written size and its row before decisions (``detect_row``, as every front end)."""
        maps, rows = [], []
        for i, d in enumerate(decoded):
            w, h = d.image.size
            amap = resize_map(scored.maps[i], map_size(h, w, self.config.max_map_size))
            parts = parts_json(scored.parts, i) if scored.parts else "{}"
            maps.append(amap)
            rows.append({**detect_row("", scored.scores[i], Path(""), amap, (h, w), parts), "input_missing": "0"})
        return maps, rows

    def _score_tiled(self, m: Method, images: list[Image.Image], tiles: TileSpec | None) -> list[TiledScore]:
        """Each image tiled (a set-level method: the request's images as one set, tile position by position)."""
        batch, cap = self.config.max_batch, self.config.max_map_size
        assert tiles is not None
        if isinstance(m, SetLevelMethod):
            return score_tiled_set(m, images, tiles, batch, cap)
        return [score_tiled(m, im, tiles, batch, cap) for im in images]

    @staticmethod
    def _tiled_rows(decoded: list[_Decoded], tiled: list[TiledScore]) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        """``_rows`` for tiled results: each stitched map is already at its written size."""
        rows = []
        for d, t in zip(decoded, tiled, strict=True):
            w, h = d.image.size
            rows.append({**detect_row("", t.score, Path(""), t.anomaly_map, (h, w), "{}"), "input_missing": "0"})
        return [t.anomaly_map for t in tiled], rows

    @staticmethod
    def _decide(served: Served, rows: list[dict[str, Any]], policy: Policy, ref: Reference | None) -> Decision:
        """The request's decisions by ``zsad.runs.decide``: its images are the set, the references its normals."""
        m = served.method

        def normals(parts: dict[str, np.ndarray] | None) -> Normals | None:
            if ref is None:
                return None
            if parts and not isinstance(ref.calibration, list):  # re-scaled set-wide: scored with this set's parts
                return normals_of(m, ref.calibration, parts)
            return ref.normals

        return decide(rows, policy, finalize=m.finalize_scores if m.is_transductive else None, normals=normals)

    def _finish(
        self,
        served: Served,
        decoded: list[_Decoded],
        maps: list[np.ndarray],
        rows: list[dict[str, Any]],
        decision: Decision,
        notes: list[str],
        errors: list[dict[str, str]],
        context: dict[str, Any],
    ) -> dict[str, Any]:
        m = served.method
        thr, pthr = decision.threshold, decision.pixel_threshold
        known = math.isfinite(thr.value)
        profile = context["profile"]
        thr_source = profile_source(profile["setup"], thr.source) if profile else thr.source
        recorded: list[dict[str, Any]] = []
        lo = float(min(a.min() for a in maps))
        hi = float(max(a.max() for a in maps))
        request_id = ResultStore.new_id()
        results = []
        events: list[dict[str, Any]] = []
        mine = self.profile_sinks(profile["setup"]) if profile else []
        targets = list({k.name: k for k in (*self.sinks, *mine)}.values())  # a name once
        for i, (d, amap, row) in enumerate(zip(decoded, maps, rows, strict=True)):
            image_id = ResultStore.new_id()
            score = float(decision.scores[i])
            label = None if decision.labels is None else int(decision.labels[i])
            panel = None
            if self.config.overlays:
                decided = None if label is None else bool(label)  # None: the panel says "no label"
                panel = overlay_panel(
                    d.image, amap, (lo, hi), pthr, score, decided, "request", random_weights=m.backbone.random_init
                )
            stored = self.store.save_result(image_id, amap, panel)
            upload, sha = self.store.save_image(image_id, d.upload.data, d.fmt)
            name = client_name(d.upload.name)
            w, h = d.image.size
            if self.station is not None:
                recorded.append(
                    {
                        "uid": image_id,
                        "source": context["source"],
                        "request_id": request_id,
                        "profile": profile["name"] if profile else None,
                        "revision": profile["revision"] if profile else None,
                        "scoring_key": profile["scoring_key"] if profile else None,
                        "file_sha256": sha,
                        "file_name": name,
                        "width": w,
                        "height": h,
                        "score": score,
                        "label": label,
                        "threshold": thr.value if known else None,
                        "threshold_source": thr_source,
                        "pixel_threshold": pthr.value if math.isfinite(pthr.value) else None,
                        "method": served.key.method,
                        "class_name": served.key.class_name,
                        "model_id": served.id,
                        "image_path": self.store.relative(upload),
                        "map_path": stored["anomaly_map_path"],
                        "overlay_path": stored.get("overlay_path"),
                    }
                )
            row.update(
                image_path=abs_path(upload) if upload is not None else "",
                request_id=request_id,
                image_id=image_id,
                file_name=name,
                method=served.key.method,
                class_name=served.key.class_name,
                reference_id=served.key.reference_id or "",
                model_id=served.id,
                **stored,
            )
            base = f"/v1/results/{image_id}"
            results.append(
                {
                    "image_id": image_id,
                    "uid": image_id,
                    "file_name": name,
                    "pred_score": score,
                    "pred_label": label,
                    "threshold": thr.value if known else None,
                    "threshold_source": thr_source,
                    "map_min": row["map_min"],
                    "map_max": row["map_max"],
                    "image_size": [w, h],
                    "map_size": [int(amap.shape[1]), int(amap.shape[0])],
                    "anomaly_map_url": f"{base}/map.png",
                    "anomaly_map_npy_url": f"{base}/map.npy",
                    "overlay_url": f"{base}/overlay.png" if panel is not None else None,
                }
            )
            if self.station is not None and targets:
                fin = context["finished"]
                payload = self._event(
                    results[-1], recorded[-1], fin[d.index]["path"] if fin is not None else None, panel is not None
                )
                events += [{"sink": k.name, "uid": image_id, "payload": payload} for k in targets if k.wants(payload)]
        if self.store.persistent and served.id not in self._manifested:  # described before any row names it
            self._manifested.add(served.id)
            self.store.write_manifest(dict(self.pool.described), self.stats())
        finished: list[dict[str, Any]] = []
        labels: list[tuple[int | None, float | None]] = []
        if self.station is not None:
            if context["finished"] is not None:
                finished, labels = self._finished(
                    context["finished"], profile, decoded, results, errors, context["uploads"]
                )
            now = datetime.now(UTC)  # the decision's time: its commit, after the files (events measure from it)
            for r in recorded:
                r["created_at"] = now
            for e in events:
                e["payload"]["created_at"] = now.isoformat()
            # one transaction (files finished and events too), committed before the client hears of the results
            self.station.record(recorded, finished=finished, events=events)
            self.profiles.recorded += len(recorded)
            self.metrics.recorded.inc(len(recorded))
            if events and self.delivery is not None:
                self.delivery.wake()
        else:
            self.store.append_rows(rows)  # fsync'd before the client hears of the results
        self.store.append_errors([{"request_id": request_id, **e} for e in errors])
        self.metrics.decided(profile["name"] if profile else None, [r["pred_label"] for r in results])
        return {
            "request_id": request_id,
            "profile": profile["name"] if profile else None,
            "revision": profile["revision"] if profile else None,
            "method": served.key.method,
            "class_name": served.key.class_name,
            "reference_id": served.key.reference_id,
            "model_id": served.id,
            "transductive": bool(m.is_transductive),
            "transductive_note": m.transductive_note if m.is_transductive else None,
            "set_level": m.set_level,
            "random_weights": bool(m.backbone.random_init),
            "precision": m.backbone.precision,
            "tiles": tile_key(served.key.tiles).get("tiles"),  # how the images were cut (None: whole, squashed)
            "threshold": {"value": thr.value if known else None, "source": thr_source, "note": thr.note or None},
            "pixel_threshold": pthr.value if math.isfinite(pthr.value) else None,
            "pixel_threshold_source": pthr.source,
            "colour_range": [lo, hi],
            "notes": list(notes),  # a set-level method's fallback for a set too small (musc, dual-image)
            "results": results,
            "errors": errors,
            **({"finished": _outcomes(finished, labels)} if context["finished"] is not None else {}),
        }

    @staticmethod
    def _finished(
        keys: list[dict[str, Any]],
        profile: dict[str, Any] | None,
        decoded: list[_Decoded],
        results: list[dict[str, Any]],
        errors: list[dict[str, str]],
        n: int,
    ) -> tuple[list[dict[str, Any]], list[tuple[int | None, float | None]]]:
        """A watched chunk's intake rows in upload order, and each one's label and score.

        Scored files carry their inspection's uid, refusals their one-line reason.
        """
        name = profile["name"] if profile else None
        rows: list[dict[str, Any]] = [{}] * n
        scores: list[float | None] = [None] * n
        labels: list[int | None] = [None] * n
        for d, r in zip(decoded, results, strict=True):
            rows[d.index] = {**keys[d.index], "profile": name, "state": "done", "uid": r["uid"]}
            labels[d.index] = r["pred_label"]
            scores[d.index] = r["pred_score"]
        bad = [i for i in range(n) if not rows[i]]
        for i, e in zip(bad, errors, strict=True):
            rows[i] = {**keys[i], "profile": name, "state": "error", "error": e["error"]}
        return rows, list(zip(labels, scores, strict=True))

    def _refuse(self, errors: list[dict[str, str]], profile: str, keys: list[dict[str, Any]] | None) -> dict[str, Any]:
        """A watched chunk with no readable file: each refusal recorded with its reason, nothing scored."""
        assert self.station is not None and keys is not None
        rows = [
            {**k, "profile": profile, "state": "error", "error": e["error"]} for k, e in zip(keys, errors, strict=True)
        ]
        self.station.record([], finished=rows)
        self.images_failed += len(errors)
        outcomes = _outcomes(rows, [(None, None)] * len(rows))
        return {"request_id": None, "profile": profile, "results": [], "errors": errors, "finished": outcomes}

    def _event(self, result: dict[str, Any], row: dict[str, Any], path: str | None, overlay: bool) -> dict[str, Any]:
        """One decision as the sinks' JSON event (docs/station.md lists its fields)."""
        uid = result["uid"]
        label = result["pred_label"]
        links: dict[str, str] = {}
        base = self.config.public_url.rstrip("/") if self.config.public_url else "" if self.http else None
        if base is not None:
            links = {
                "inspection": f"{base}/v1/inspections/{uid}",
                "image": f"{base}/v1/inspections/{uid}/image",
                "map": f"{base}/v1/results/{uid}/map.png",
                **({"overlay": f"{base}/v1/results/{uid}/overlay.png"} if overlay else {}),
            }
        return {
            "event": "decision",
            "event_id": uid,
            "uid": uid,
            "created_at": None,  # the commit's time, set just before it
            "station": self.station.station_name if self.station is not None else None,
            "source": row["source"],
            "profile": row["profile"],
            "revision": row["revision"],
            "file": result["file_name"],
            "path": path,
            "score": result["pred_score"],
            "label": None if label is None else "anomalous" if label else "normal",
            "threshold": result["threshold"],
            "threshold_source": result["threshold_source"],
            "method": row["method"],
            "class_name": row["class_name"],
            "links": links,
        }

    async def add_references(
        self,
        uploads: list[Upload],
        method: str | None = None,
        class_name: str | None = None,
        options: str | dict[str, Any] | None = None,
        k_shot: int | None = None,
    ) -> dict[str, Any]:
        """Keep normal images for (method, options, class): few-shot references and a normal-quantile threshold."""
        self.check_count(uploads)
        cname = self.check_class_name(class_name)
        name, opts = self._resolve(method, options)
        decoded, _ = await _in_thread(self._decode, uploads)
        plain = await self._model(name, opts, cname, None)  # its backbone gives the preprocessing
        images = await _in_thread(self._inputs, decoded, plain)
        key_name = self.pool.key(name, opts, cname, None).class_name
        ref = self.pool.new_reference(name, opts, key_name, images, k_shot)
        self.pool.keep_reference(ref)
        try:
            served = await self._model(name, opts, cname, ref.id)
            await _wait(self.batcher.call(lambda: self.pool.calibrate(ref, served)))
        except BaseException:
            self.pool.references.pop(ref.id, None)
            raise
        return ref.as_dict()


def _outcomes(rows: list[dict[str, Any]], decided: list[tuple[int | None, float | None]]) -> list[dict[str, Any]]:
    """Each watched file's outcome, for the watcher."""
    return [
        {"state": r["state"], "uid": r.get("uid"), "label": label, "score": score, "error": r.get("error")}
        for r, (label, score) in zip(rows, decided, strict=True)
    ]


def _sink_name(url: str) -> str:
    from zsad.serve.sinks import parse_sink

    try:
        sink = parse_sink(url)
    except ZsadInputError:
        return redact(url)
    sink.close()
    return sink.name


def run_key(
    given: BackboneSpec,
    resolved: BackboneSpec,
    options: dict[str, dict[str, Any]],
    checkpoints: dict[str, Path],
) -> dict[str, Any]:
    """What decides the scores of a server's rows: its backbone, weights, options and checkpoints (not its limits).

    ``given`` is the backbone as started (a setting left out is each method's default); ``resolved`` is the default
    method's, which says which weights file (``--weights``, ``ZSAD_WEIGHTS``) is read. Files by content only, so a
    moved weights file or checkpoint still resumes.
    """
    from zsad.backbone.loading import file_digest
    from zsad.train import read_manifest

    weights = resolved.weights
    random = given.pretrained is not None and BackboneSpec(pretrained=given.pretrained, weights=weights).random_init
    digest = file_digest(Path(weights)) if weights is not None else None
    backbone = {
        "model_name": given.model_name or DEFAULT,
        "pretrained": "weights file" if weights is not None else ("none" if random else given.pretrained or DEFAULT),
        "weights": {"sha256": digest["sha256"], "size": digest["size"]} if digest else None,
        "image_size": given.image_size or DEFAULT,
        "seed": given.seed if random else None,
        "precision": given.precision,
    }
    return {
        "command": "serve",
        "format": 2,
        "backbone": backbone,
        "options": {m: dict(sorted(o.items())) for m, o in sorted(options.items()) if o},
        "checkpoints": {m: read_manifest(p)[1]["sha256"] for m, p in sorted(checkpoints.items())},
    }
