"""The station side of the service: profiles (versioned setups), history, review and feedback over ``zsad.store``.

A profile request is scored like any other (``Service._detect``): the profile only decides the method, options,
backbone, class name, references and threshold, through ``zsad.runs``' profile functions, so ``zsad detect
--profile`` decides the same way. References are rebuilt from the database after a restart (their images are
stored there by hash), so nothing a station knows lives only in memory.

Revision rules (docs/station.md): every change is a new revision; decisions record the revision they used; a
change of what decides the scores (method, options, backbone, class name, references) gets a new scoring key, and
the threshold re-fit only ever uses reviews of inspections scored under the current key.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from zsad.errors import ZsadInputError
from zsad.feedback import decide, refit_threshold
from zsad.outputs import STATION_DB
from zsad.runs import (
    BackboneSpec,
    Policy,
    check_profile_name,
    make_setup,
    profile_backbone,
    profile_policy,
    profile_tiles,
    profile_uses_normals,
    revise_setup,
)
from zsad.store import Filters, Station, scoring_key
from zsad.tiling import TileSpec

if TYPE_CHECKING:
    from zsad.serve.models import Reference, Served
    from zsad.serve.service import ServeConfig, Service, Upload

RETENTION_EVERY_S = 3600.0
OUTBOX_KEEP_S = 7 * 86400.0  # delivered events stay a week (the page's delivery counts), then go
PATCHABLE = ("threshold", "threshold_rule", "class_name", "options", "sinks", "tiles", "reason")
ACTIONS = ("refit", "add_normals")
# The re-fit reads the newest inspections under the current scoring (their reviews, and the flags a threshold would
# make): 50,000 are read in about a tenth of a second at a million rows (benchmarks/RESULTS.md), and cover weeks.
REFIT_WINDOW = 50_000


class NoStation(Exception):
    """A station route on a server that keeps no history (HTTP 409)."""


def redact(url: str) -> str:
    """A database URL without its password, for logs, the manifest and ``/v1/station``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is refused by the store; never echo it whole
        return url.split("@")[-1]


def default_db(out: Path) -> str:
    """The embedded default: a SQLite file in the results folder."""
    return f"sqlite:///{(out / STATION_DB).resolve()}"


def open_station(config: ServeConfig, out: Path) -> Station:
    """The store, opened (schema checked or migrated); retention and the crash sweep run beside the server."""
    return Station(config.db or default_db(out), out, station_name=config.station_name or socket.gethostname())


def _tiles(value: Any) -> TileSpec | None:
    """A profile's tile setting from a client.

    A grid text (``auto``, ``3x4+global``, ``none``) with the default overlap and score, or an object as answers
    record it (``grid``, ``overlap``, ``tile_size``, ``score``).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dict):
        return TileSpec.from_record(value)
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            record = json.loads(value)
        except json.JSONDecodeError as e:
            raise ZsadInputError(f"tiles: not JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ZsadInputError("tiles: a grid (auto, RxC, +global, none) or an object of grid, overlap, ...")
        return TileSpec.from_record(record)
    if not isinstance(value, str):
        raise ZsadInputError("tiles: a grid (auto, RxC, +global, none) or an object of grid, overlap, ...")
    return TileSpec.parse(value)


def _sink_urls(sinks: Any) -> list[str]:
    """A profile's sink URLs, each checked (one line for a bad one, or a password that would be stored)."""
    from zsad.serve.sinks import parse_profile_sinks

    if sinks is None:
        return []
    if not isinstance(sinks, list):
        raise ZsadInputError("sinks: a list of sink URLs is needed (an empty list removes them)")
    if not all(isinstance(u, str) for u in sinks):
        raise ZsadInputError("sinks: each is a URL string")
    urls = [u.strip() for u in sinks if u.strip()]
    for sink in parse_profile_sinks(urls):
        sink.close()
    return urls


def _now() -> datetime:
    return datetime.now(UTC)


def _time(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ZsadInputError(f"{name} {text[:40]!r}: not an ISO date or time (e.g. 2026-12-07T10:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _number(text: str | None, name: str) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        v = float(text)
    except ValueError:
        raise ZsadInputError(f"{name} {str(text)[:40]!r}: not a number") from None
    if not math.isfinite(v):
        raise ZsadInputError(f"{name} {text}: must be finite")
    return v


class Profiles:
    """Profiles, history, review and feedback of one server (``NoStation`` for every call when it keeps none)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.recorded = 0  # inspections this session wrote
        self._building: dict[str, asyncio.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swept: int | None = None  # orphan files the start-up sweep deleted (None: still running)
        self._started = time.time()
        if service.station is not None:
            self._thread = threading.Thread(target=self._housekeeping, name="zsad-station", daemon=True)
            self._thread.start()

    @property
    def st(self) -> Station:
        """The store, or ``NoStation`` (409) with how to start a server that keeps history."""
        if self.service.station is None:
            raise _no_station()
        return self.service.station

    def _housekeeping(self) -> None:
        """Retention now and every hour; once, the sweep of files a crash left without rows.

        Both walk the whole history or folder (a minute at millions of files), so they run beside the server,
        never before it answers. The sweep only looks at files older than this server's start (on SQLite no other
        server writes there, so all of those are orphans) or, on PostgreSQL, older than ten minutes (other servers
        may be between writing a file and committing its row).
        """
        cfg = self.service.config
        first = True
        while first or not self._stop.wait(RETENTION_EVERY_S):
            try:
                if cfg.keep_days or cfg.keep_images:
                    self.st.prune(cfg.keep_days, cfg.keep_images)
                self.st.outbox_prune(OUTBOX_KEEP_S)  # delivered events only: the undelivered always wait
                if first:
                    grace = time.time() - self._started if self.st.dialect == "sqlite" else 600.0
                    self.swept = self.st.sweep(max(0.0, grace))
            except Exception as e:  # retried in an hour; scoring goes on
                if self._stop.is_set():
                    return  # the server closed the store under us
                from zsad.progress import reporter

                reporter().message(f"station housekeeping: {' '.join(str(e).split())}", "warning")
            first = False

    def stop(self) -> None:
        """End the housekeeping thread (the server is stopping; a sweep in progress gets a few seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def info(self) -> dict[str, Any]:
        """``GET /v1/station``."""
        cfg = self.service.config
        st = self.service.station
        if st is None:
            return {"enabled": False, "reason": str(_no_station()), "db": None, "url": None, "station": None}
        return {
            "enabled": True,
            "reason": None,
            "db": st.dialect,
            "url": st.url_safe,
            "station": st.station_name,
            "keep_days": cfg.keep_days,
            "keep_images": cfg.keep_images,
            "swept": self.swept,
            "watch": [w.spec.describe() for w in self.service.watchers.folders],
            "sinks": [k.describe() for k in self.service.sinks],
        }

    # ------------------------------------------------------------------------------------------ models
    async def prepare(self, name: str) -> tuple[Served, Policy, Reference | None, dict[str, Any]]:
        """What ``Service._detect`` needs for a profile's request: its model, policy, normals and revision."""
        from zsad.serve.service import _in_thread

        p = await _in_thread(self.st.profile, name)
        served, ref = await self._model(p["setup"], p["scoring_key"])
        setup = p["setup"]
        return served, profile_policy(setup), ref if profile_uses_normals(setup) else None, p

    async def _model(self, setup: dict[str, Any], key: str) -> tuple[Served, Reference | None]:
        """The setup's prepared model (its backbone, options and references, rebuilt from the store if needed)."""
        from zsad.serve.service import _in_thread

        svc = self.service
        bb = await _in_thread(profile_backbone, setup, svc.config.backbone.device)
        method, opts, cname = setup["method"], dict(setup["options"]), setup["class_name"]
        spec = await _in_thread(lambda: svc.pool.spec(method, opts, bb, server=False))
        if spec.untrained:
            raise ZsadInputError(f"method {method} needs trained parts: start the server with --checkpoint DIR")
        tiles = profile_tiles(setup)
        if not setup["references"]:
            return await svc._model(method, opts, cname, None, bb, server=False, tiles=tiles), None
        ref_id = "profile-" + key[:24]
        lock = self._building.setdefault(ref_id, asyncio.Lock())
        async with lock:  # one build per reference set, however many requests arrive at once
            ref = svc.pool.references.get(ref_id)
            if ref is None:
                ref = await self._build_reference(setup, bb, ref_id)
        served = await svc._model(method, opts, cname, ref_id, bb, server=False, tiles=tiles)
        return served, ref

    async def _build_reference(self, setup: dict[str, Any], bb: BackboneSpec, ref_id: str) -> Reference:
        from zsad.serve.service import Upload, _in_thread, _wait

        svc = self.service
        st = self.st
        method, opts, cname = setup["method"], dict(setup["options"]), setup["class_name"]
        uploads = await _in_thread(lambda: [Upload(st.blob_name(s), st.blob(s)) for s in setup["references"]])
        decoded, _ = await _in_thread(svc._decode, uploads)
        tiles = profile_tiles(setup)
        plain = await svc._model(method, opts, cname, None, bb, server=False, tiles=tiles)  # cut as it will score
        images = await _in_thread(svc._inputs, decoded, plain)
        key_name = svc.pool.key(method, opts, cname, None, bb, server=False).class_name
        ref = svc.pool.new_reference(method, opts, key_name, images, setup["k_shot"], ref_id=ref_id)
        svc.pool.keep_reference(ref)
        try:
            served = await svc._model(method, opts, cname, ref_id, bb, server=False, tiles=tiles)
            await _wait(svc.batcher.call(lambda: svc.pool.calibrate(ref, served)))
        except BaseException:
            svc.pool.references.pop(ref_id, None)
            raise
        return ref

    async def _with_value(self, setup: dict[str, Any]) -> dict[str, Any]:
        """A ``normal_quantile`` setup with the value its references give now, recorded in the revision."""
        if setup["threshold"]["rule"] != "normal_quantile":
            return setup
        _, ref = await self._model(setup, scoring_key(setup))
        assert ref is not None
        value = ref.thresholds[0].value
        return revise_setup(setup, threshold={"rule": "normal_quantile", "value": _finite(value)})

    # ------------------------------------------------------------------------------------------ profiles
    async def create(
        self,
        name: str,
        references: list[Upload],
        method: str | None = None,
        class_name: str | None = None,
        options: str | dict[str, Any] | None = None,
        threshold: float | None = None,
        threshold_rule: str | None = None,
        k_shot: int | None = None,
        sinks: list[str] | None = None,
        tiles: str | dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/profiles``: a new profile on this server's backbone, its references stored by hash."""
        from zsad.serve.service import _in_thread

        svc = self.service
        st = self.st
        name = check_profile_name(name)
        if any(p["name"] == name for p in await _in_thread(st.profiles)):
            raise ZsadInputError(f"profile {name!r}: exists; change it (PATCH) or pick another name")
        method_name, opts = svc._resolve(method, options)
        full = {**svc.config.options.get(method_name, {}), **opts}  # complete: the profile scores alike anywhere
        cname = svc.check_class_name(class_name)
        sink_urls = _sink_urls(sinks)
        cut = _tiles(tiles)
        shas = await self._store_references(references)
        setup = await _in_thread(
            lambda: make_setup(
                method_name,
                backbone=svc.config.backbone,
                options=full,
                class_name=cname,
                references=shas,
                k_shot=k_shot,
                threshold_rule=threshold_rule or None,
                threshold=threshold,
                sinks=sink_urls,
                tiles=cut,
            )
        )
        setup = await self._with_value(setup)
        p = await _in_thread(st.create_profile, name, setup, "created")
        return await _in_thread(self.full, p)

    async def _store_references(self, uploads: list[Upload]) -> list[str]:
        """Reference images checked readable, then stored in the database by content (each hash once)."""
        from zsad.serve.service import _in_thread, client_name

        if not uploads:
            return []
        if len(uploads) > self.service.config.max_images:
            raise ZsadInputError(f"{len(uploads)} reference images: at most {self.service.config.max_images}")
        await _in_thread(self.service._decode, uploads)  # an unreadable reference is refused, never stored
        shas: list[str] = []
        for u in uploads:
            sha = await _in_thread(self.st.put_blob, u.data, client_name(u.name))
            if sha not in shas:
                shas.append(sha)
        return shas

    async def add_references(self, name: str, uploads: list[Upload], reason: str | None = None) -> dict[str, Any]:
        """New normal images for a profile (a new revision).

        A few-shot method memorises them, so its scores change: its threshold becomes the references' normal
        quantile again (a value fitted to the old scores would mean nothing). A method that only calibrates on them
        keeps a fixed or re-fitted threshold, and a ``normal_quantile`` one is recomputed.
        """
        from zsad.methods import get_method_class
        from zsad.serve.service import _in_thread

        st = self.st
        if not uploads:
            raise ZsadInputError("no images: send one or more normal images in the 'images' field")
        p = await _in_thread(st.profile, name)
        setup = p["setup"]
        shas = await self._store_references(uploads)
        new = [s for s in shas if s not in setup["references"]]
        if not new:
            raise ZsadInputError(f"profile {name}: every image sent is already among its references")
        refs = [*setup["references"], *new]
        rule = setup["threshold"]
        if get_method_class(setup["method"]).supports_few_shot or rule["rule"] == "normal_quantile":
            rule = {"rule": "normal_quantile", "value": None}
        candidate = await self._with_value(revise_setup(setup, references=refs, threshold=rule))
        why = reason or f"added {len(new)} reference image(s)"
        return await _in_thread(self.full, await _in_thread(st.revise, name, candidate, why))

    async def patch(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """``PATCH /v1/profiles/{name}``: threshold, rule, class name, options, sinks or tiles (a new revision).

        New tiles mean new scores: the revision gets a new scoring key (and a profile's references are cut anew).
        """
        from zsad.serve.service import _in_thread

        st = self.st
        unknown = sorted(set(changes) - set(PATCHABLE))
        if unknown:
            raise ZsadInputError(f"profile change: unknown field(s) {', '.join(unknown)}; use {', '.join(PATCHABLE)}")
        p = await _in_thread(st.profile, name)
        setup = p["setup"]
        method_name, opts = self.service._resolve(setup["method"], changes.get("options", setup["options"]))
        value = _number(changes["threshold"], "threshold") if changes.get("threshold") is not None else None
        rule = changes.get("threshold_rule") or ("manual" if value is not None else setup["threshold"]["rule"])
        if value is None and rule == setup["threshold"]["rule"]:
            value = setup["threshold"]["value"]
        cname = self.service.check_class_name(changes["class_name"]) if "class_name" in changes else None
        sink_urls = _sink_urls(changes["sinks"]) if "sinks" in changes else list(setup.get("sinks") or [])
        cut = _tiles(changes["tiles"]) if "tiles" in changes else profile_tiles(setup)
        candidate = await _in_thread(
            lambda: make_setup(
                method_name,
                backbone=profile_backbone(setup, self.service.config.backbone.device),
                options=opts,
                class_name=cname if "class_name" in changes else setup["class_name"],
                references=setup["references"],
                k_shot=setup["k_shot"],
                threshold_rule=rule,
                threshold=None if rule == "normal_quantile" else value,
                sinks=sink_urls,
                tiles=cut,
            )
        )
        candidate = await self._with_value(candidate)
        if "sinks" not in setup and not sink_urls:
            candidate.pop("sinks")  # a setup from before sinks existed: unchanged unless sinks are given
        if candidate == setup:
            raise ZsadInputError(f"profile {name}: nothing changed")
        what = ", ".join(k for k in PATCHABLE if k in changes and k != "reason")
        reason = str(changes.get("reason") or f"changed {what}")[:200]
        return await _in_thread(self.full, await _in_thread(st.revise, name, candidate, reason))

    async def rollback(self, name: str, revision: int) -> dict[str, Any]:
        """A new revision equal to ``revision`` (history keeps the revisions in between)."""
        from zsad.serve.service import _in_thread

        return await _in_thread(self.full, await _in_thread(self.st.rollback, name, int(revision)))

    def full(self, p: dict[str, Any]) -> dict[str, Any]:
        """A profile as the API answers it: the revision, its threshold and every revision's summary."""
        t = p["setup"]["threshold"]
        revisions = [
            {
                "revision": r["revision"],
                "created_at": r["created_at"],
                "reason": r["reason"],
                "threshold": r["setup"]["threshold"],
                "num_references": len(r["setup"]["references"]),
                "scoring_key": r["scoring_key"],
            }
            for r in self.st.revisions(p["name"])
        ]
        return {**p, "threshold": {"value": t["value"], "source": t["rule"]}, "revisions": revisions}

    def summaries(self) -> dict[str, Any]:
        """``GET /v1/profiles``."""
        out = []
        for p in self.st.profiles():
            s = p["setup"]
            out.append(
                {
                    "name": p["name"],
                    "revision": p["revision"],
                    "created_at": p["created_at"],
                    "reason": p["reason"],
                    "method": s["method"],
                    "class_name": s["class_name"],
                    "num_references": len(s["references"]),
                    "threshold": s["threshold"],
                }
            )
        return {"profiles": out}

    def profile(self, name: str) -> dict[str, Any]:
        """``GET /v1/profiles/{name}``."""
        return self.full(self.st.profile(name))

    # ------------------------------------------------------------------------------------------ history
    def history(self, q: dict[str, str | None]) -> dict[str, Any]:
        """``GET /v1/inspections``: one page, newest first by default, with the files' URLs."""
        label_text = (q.get("label") or "").strip().lower()
        label: int | Literal["none"] | None = None
        if label_text in ("0", "1"):
            label = int(label_text)
        elif label_text == "none":
            label = "none"
        elif label_text:
            raise ZsadInputError(f"label {label_text[:20]!r}: use 0, 1 or none")
        reviewed_text = (q.get("reviewed") or "").strip().lower()
        if reviewed_text not in ("", "true", "false"):
            raise ZsadInputError(f"reviewed {reviewed_text[:20]!r}: use true or false")
        sort, order = q.get("sort") or "time", q.get("order") or "desc"
        if sort not in ("time", "score") or order not in ("desc", "asc"):
            raise ZsadInputError(f"sort {sort!r} order {order!r}: use sort time|score and order desc|asc")
        limit = int(_number(q.get("limit"), "limit") or 50)
        f = Filters(
            profile=q.get("profile") or None,
            label=label,
            reviewed=None if not reviewed_text else reviewed_text == "true",
            review_label=q.get("review_label") or None,
            since=_time(q.get("since"), "since"),
            until=_time(q.get("until"), "until"),
            score_min=_number(q.get("score_min"), "score_min"),
            score_max=_number(q.get("score_max"), "score_max"),
            source=q.get("source") or None,
        )
        page = self.st.inspections(f, sort=sort, order=order, cursor=q.get("cursor") or None, limit=limit)  # type: ignore[arg-type]
        return {"inspections": [self.row(r) for r in page.rows], "next_cursor": page.next_cursor}

    @staticmethod
    def row(r: dict[str, Any]) -> dict[str, Any]:
        """An inspection as JSON with the URLs of its files (None when retention removed them)."""
        uid = r["uid"]
        return {
            **r,
            "image_url": f"/v1/inspections/{uid}/image" if r.get("image_path") else None,
            "overlay_url": f"/v1/results/{uid}/overlay.png" if r.get("overlay_path") else None,
            "map_url": f"/v1/results/{uid}/map.png" if r.get("map_path") else None,
        }

    def inspection(self, uid: str) -> dict[str, Any]:
        """``GET /v1/inspections/{uid}``."""
        r = self.st.inspection(uid)
        if r is None:
            raise KeyError(uid)
        return self.row(r)

    def image(self, uid: str) -> Path | None:
        """The stored upload of an inspection, when this server has it."""
        r = self.st.inspection(uid)
        if r is None or not r.get("image_path"):
            return None
        path = self.st.files / r["image_path"]
        return path if path.is_file() else None

    def review(self, uid: str, label: str, note: str | None) -> dict[str, Any]:
        """``POST /v1/inspections/{uid}/review``."""
        if self.st.inspection(uid) is None:
            raise KeyError(uid)
        return self.row(self.st.review(uid, label, (note or "").strip()[:1000] or None))

    def dashboard(self, name: str, days: int, bucket: str) -> dict[str, Any]:
        """``GET /v1/profiles/{name}/dashboard``: the store's counts and the current threshold."""
        if not 1 <= days <= 366:
            raise ZsadInputError(f"days {days}: use 1 to 366")
        if bucket not in ("hour", "day"):
            raise ZsadInputError(f"bucket {bucket!r}: use hour or day")
        p = self.st.profile(name)
        return {
            **self.st.dashboard(name, days=days, bucket=cast(Literal["hour", "day"], bucket)),
            "threshold": p["setup"]["threshold"]["value"],
        }

    # ------------------------------------------------------------------------------------------ feedback
    def proposal(self, name: str) -> dict[str, Any]:
        """``GET /v1/profiles/{name}/feedback``: what each feedback action would do, before it is applied."""
        p = self.st.profile(name)
        setup = p["setup"]
        _, scores, labels, review = self.st.scores_for_refit(name, p["scoring_key"], REFIT_WINDOW)
        current = setup["threshold"]["value"]
        flags = int(decide(scores, current).sum()) if current is not None else int((labels == 1).sum())
        refit = None
        if (review >= 0).any():
            refit = refit_threshold(scores, review, current).as_dict()
        normals = self._confirmed_normals(name, setup)
        return {
            "current": {"threshold": current, "source": setup["threshold"]["rule"], "flags": flags},
            "refit": refit,
            "scored": len(scores),
            "confirmed_normals": {"count": normals[0], "new": len(normals[1])},
        }

    def _confirmed_normals(self, name: str, setup: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        """Reviewed-normal inspections of the profile, and those whose image is not yet a reference (one per hash)."""
        seen = set(setup["references"])
        count, new, cursor = 0, [], None
        while True:
            page = self.st.inspections(Filters(profile=name, review_label="normal"), cursor=cursor, limit=500)
            for r in page.rows:
                count += 1
                if r["file_sha256"] not in seen and r.get("image_path") and (self.st.files / r["image_path"]).is_file():
                    seen.add(r["file_sha256"])
                    new.append(r)
            cursor = page.next_cursor
            if cursor is None:
                return count, new

    async def apply(self, name: str, action: str) -> dict[str, Any]:
        """``POST /v1/profiles/{name}/feedback``: re-fit the threshold, or add confirmed normals to the references."""
        from zsad.serve.service import Upload, _in_thread

        if action not in ACTIONS:
            raise ZsadInputError(f"action {action!r}: use {' or '.join(ACTIONS)}")
        st = self.st
        p = await _in_thread(st.profile, name)
        setup = p["setup"]
        if action == "refit":
            _, scores, _, review = await _in_thread(st.scores_for_refit, name, p["scoring_key"], REFIT_WINDOW)
            if not (review >= 0).any():
                raise ZsadInputError(f"profile {name}: no reviewed inspection under its current scoring to fit on")
            fit = refit_threshold(scores, review, setup["threshold"]["value"])
            new = revise_setup(setup, threshold={"rule": "refit", "value": float(fit.threshold)})
            reason = f"threshold re-fit from {fit.n_reviewed} reviews (F1 {fit.f1_reviewed:.2f} on them)"
            revised = await _in_thread(st.revise, name, new, reason)
            return {"profile": await _in_thread(self.full, revised), "changed": reason}
        _, rows = await _in_thread(self._confirmed_normals, name, setup)
        if not rows:
            raise ZsadInputError(f"profile {name}: no confirmed normal image that is not already a reference")
        uploads = [Upload(r["file_name"], (st.files / r["image_path"]).read_bytes()) for r in rows]
        full = await self.add_references(name, uploads, f"added {len(rows)} confirmed normal(s) to the references")
        return {"profile": full, "changed": full["reason"]}


def _no_station() -> NoStation:
    return NoStation(
        "this server keeps no history: start it with --out DIR --station (or --db URL) for profiles, history and review"
    )


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None
