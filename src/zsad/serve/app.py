"""The HTTP face of the service (FastAPI): routes, limits, token, and errors as one-line ``detail`` messages.

Status codes: 401 missing or wrong token; 404 unknown result id; 413 upload over ``max_upload_bytes``; 422 bad
input (unreadable image unless ``skip_bad``, unknown method or option, too many images, a class name over the
limit), with the same one-line message the CLI prints; 503 queue full (with ``Retry-After``). The page at ``/``
and its files are static, in the package.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from zsad._version import __version__
from zsad.errors import ZsadInputError
from zsad.serve.batching import QueueFull
from zsad.serve.metrics import CONTENT_TYPE
from zsad.serve.service import Service, Upload
from zsad.serve.station import NoStation

STATIC = Path(__file__).parent / "static"
MEDIA = {"map.png": "image/png", "overlay.png": "image/png", "map.npy": "application/octet-stream"}
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a request body over ``limit`` bytes: by its Content-Length, or counted as it streams in."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: reject by header, else count the body as the app reads it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._reject(send)
            return
        seen, over, started = 0, False, False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:  # whatever the app made of the cut body, the answer is 413
                started = True
                await self._reject(send)
                return
            if not over:
                started = True
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = f'{{"detail": "request body over the upload limit of {self.limit} bytes"}}'.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def create_app(service: Service) -> FastAPI:
    """The ASGI app over ``service`` (which the app closes on shutdown)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.watchers.start()  # watched folders are scored on the server's loop, like requests
        try:
            yield
        finally:
            await service.watchers.stop()
            service.close()

    app = FastAPI(
        title="zsad",
        version=__version__,
        summary="Zero-/few-shot visual anomaly detection with CLIP: scores and anomaly maps over HTTP.",
        lifespan=lifespan,
    )
    token = service.config.token
    service.http = True

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(
                401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )

    @app.exception_handler(ZsadInputError)
    async def bad_input(_: Request, e: ZsadInputError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(str(e))}, status_code=422)

    @app.exception_handler(NoStation)
    async def no_station(_: Request, e: NoStation) -> JSONResponse:
        return JSONResponse({"detail": _one_line(str(e))}, status_code=409)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, e: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": _one_line(str(e))}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def bad_form(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "header"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return JSONResponse({"detail": _one_line("; ".join(parts) or "invalid request")}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness: answers while a batch runs (inference is on its own thread). Never needs a token."""
        return {
            "status": "ok",
            "version": __version__,
            "auth": token is not None,
            "queue_depth": service.batcher.depth,
            "worker_busy": service.batcher.busy,
        }

    @app.get("/readyz", tags=["service"])
    def readyz() -> JSONResponse:
        """Readiness: 503 with the reasons while a model loads or the station's database is unreachable."""
        reasons = service.readiness()
        return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)

    @app.get("/metrics", tags=["service"], dependencies=[Depends(require_token)])
    def metrics() -> Response:
        """Prometheus metrics (text format; docs/serve.md lists them). Needs the token when the server has one."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @v1.get("/methods", tags=["service"])
    def methods() -> dict[str, Any]:
        """Registered methods: class names, few-shot, transductive, trained, availability, weights."""
        return service.methods()

    @v1.get("/stats", tags=["service"])
    def stats() -> dict[str, Any]:
        """Requests, images, queue depth and the batch sizes the worker formed."""
        return service.stats()

    @v1.post("/detect", tags=["scoring"])
    async def detect(
        images: Annotated[list[UploadFile], File(description="One or more images (field repeated).")],
        method: Annotated[str | None, Form(description="Method name; default: the server's --method.")] = None,
        class_name: Annotated[str | None, Form(description="What the part is, e.g. 'screw'.")] = None,
        options: Annotated[str | None, Form(description='Method options as a JSON object, e.g. {"k": 1}.')] = None,
        threshold: Annotated[float | None, Form(description="Manual image threshold.")] = None,
        reference_id: Annotated[str | None, Form(description="Id from POST /v1/references.")] = None,
        profile: Annotated[
            str | None, Form(description="A station profile: it decides method, options, references, threshold.")
        ] = None,
        source: Annotated[str, Form(description="Where the images come from: api, upload (the page), folder.")] = (
            "api"
        ),
        skip_bad: Annotated[
            bool, Form(description="Score the readable images and list the unreadable ones in 'errors' (no 422).")
        ] = False,
        threshold_rule: Annotated[
            str, Form(description="With no threshold and no references: robust_outlier or two_mode (3+ images).")
        ] = "robust_outlier",
    ) -> dict[str, Any]:
        """Score images: per image pred_score, pred_label, threshold and source, map range, map and overlay URLs.

        A set-level method (dual-image) scores the images of one request as one set (``transductive: true``).
        """
        uploads = [Upload(f.filename or "upload", await f.read()) for f in images]
        return await service.detect(
            uploads, method, class_name, options, threshold, reference_id, skip_bad, threshold_rule, profile, source
        )

    @v1.post("/references", tags=["scoring"])
    async def references(
        images: Annotated[list[UploadFile], File(description="NORMAL images of the part (field repeated).")],
        method: Annotated[str | None, Form()] = None,
        class_name: Annotated[str | None, Form()] = None,
        options: Annotated[str | None, Form(description="Method options as a JSON object.")] = None,
        k_shot: Annotated[int | None, Form(description="Images a few-shot method memorises (default: half).")] = None,
    ) -> dict[str, Any]:
        """Keep normal images: few-shot references and a normal-quantile threshold, under a returned id."""
        uploads = [Upload(f.filename or "upload", await f.read()) for f in images]
        return await service.add_references(uploads, method, class_name, options, k_shot)

    @v1.get("/results/{image_id}/{kind}", tags=["results"])
    def result_file(image_id: str, kind: str) -> FileResponse:
        """A stored result: ``map.png`` (16-bit over [map_min, map_max]), ``map.npy`` (float32) or ``overlay.png``."""
        path = service.store.path(image_id, kind)
        if path is None:
            raise HTTPException(404, f"no {kind} for result {image_id[:40]!r}")
        return FileResponse(path, media_type=MEDIA[kind], filename=f"{image_id}_{kind}")

    _station_routes(v1, service)
    app.include_router(v1)
    app.add_middleware(BodyLimit, limit=service.config.max_upload_bytes)
    return app


def _station_routes(v1: APIRouter, service: Service) -> None:
    """Profiles, history, review and feedback (409 on a server started without ``--station``/``--db``)."""
    profiles = service.profiles

    def missing(uid: str) -> HTTPException:
        return HTTPException(404, f"no inspection {uid[:40]!r}")

    @v1.get("/station", tags=["station"])
    def station() -> dict[str, Any]:
        """Whether this server keeps history, in which database (password hidden), and its retention."""
        return profiles.info()

    @v1.get("/profiles", tags=["station"])
    def list_profiles() -> dict[str, Any]:
        """Every profile at its current revision."""
        return profiles.summaries()

    @v1.post("/profiles", tags=["station"])
    async def create_profile(
        name: Annotated[str, Form(description="1-64 letters, digits, '_.-' (a url-safe word).")],
        references: Annotated[
            list[UploadFile] | None, Form(description="NORMAL images of the part (field repeated).")
        ] = None,
        method: Annotated[str | None, Form()] = None,
        class_name: Annotated[str | None, Form()] = None,
        options: Annotated[str | None, Form(description="Method options as a JSON object.")] = None,
        threshold: Annotated[float | None, Form(description="A fixed image threshold (rule manual).")] = None,
        threshold_rule: Annotated[
            str | None, Form(description="normal_quantile (default with references), robust_outlier, two_mode, manual.")
        ] = None,
        k_shot: Annotated[int | None, Form(description="References a few-shot method memorises (default: half).")] = (
            None
        ),
        sinks: Annotated[
            list[str] | None, Form(description="Where the profile's decisions go: sink URLs (field repeated).")
        ] = None,
        tiles: Annotated[
            str | None,
            Form(
                description="Score tile by tile: auto, RxC, +global; or a JSON object of grid, overlap, tile_size, "
                "score (docs/high-resolution.md)."
            ),
        ] = None,
    ) -> dict[str, Any]:
        """A new profile on this server's backbone; its reference images are stored in the database by hash."""
        uploads = [Upload(f.filename or "reference", await f.read()) for f in references or []]
        return await profiles.create(
            name, uploads, method, class_name, options, threshold, threshold_rule, k_shot, sinks, tiles
        )

    @v1.get("/profiles/{name}", tags=["station"])
    def get_profile(name: str) -> dict[str, Any]:
        """The current revision with every revision's summary."""
        return profiles.profile(name)

    @v1.patch("/profiles/{name}", tags=["station"])
    async def patch_profile(name: str, changes: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Change threshold, rule, class name, options, sinks or tiles: a new revision."""
        return await profiles.patch(name, changes)

    @v1.post("/profiles/{name}/references", tags=["station"])
    async def profile_references(
        name: str, images: Annotated[list[UploadFile], File(description="NORMAL images (field repeated).")]
    ) -> dict[str, Any]:
        """Add normal images to the profile's references: a new revision."""
        uploads = [Upload(f.filename or "reference", await f.read()) for f in images]
        return await profiles.add_references(name, uploads)

    @v1.post("/profiles/{name}/rollback", tags=["station"])
    async def rollback(name: str, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """A new revision equal to an earlier one."""
        if not isinstance(body.get("revision"), int):
            raise ZsadInputError('rollback: send {"revision": N}')
        return await profiles.rollback(name, body["revision"])

    @v1.get("/profiles/{name}/dashboard", tags=["station"])
    def dashboard(name: str, days: int = 7, bucket: str = "hour") -> dict[str, Any]:
        """Inspections and flags per hour or day, the score histogram, review-measured error rates."""
        return profiles.dashboard(name, days, bucket)

    @v1.get("/profiles/{name}/feedback", tags=["station"])
    def feedback(name: str) -> dict[str, Any]:
        """What the re-fit and adding confirmed normals would do, before either is applied."""
        return profiles.proposal(name)

    @v1.post("/profiles/{name}/feedback", tags=["station"])
    async def apply_feedback(name: str, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Apply one feedback action (refit or add_normals): a new revision."""
        return await profiles.apply(name, str(body.get("action", "")))

    @v1.get("/inspections", tags=["station"])
    def inspections(request: Request) -> dict[str, Any]:
        """History, one page (filters, sort time|score, order, cursor, limit up to 500: see docs/station.md)."""
        return profiles.history(dict(request.query_params))

    @v1.get("/inspections/{uid}", tags=["station"])
    def inspection(uid: str) -> dict[str, Any]:
        """One inspection with its review."""
        try:
            return profiles.inspection(uid)
        except KeyError:
            raise missing(uid) from None

    @v1.get("/inspections/{uid}/image", tags=["station"])
    def inspection_image(uid: str) -> FileResponse:
        """The uploaded image of an inspection (404 when retention removed it or another station holds it)."""
        path = profiles.image(uid)
        if path is None:
            raise HTTPException(404, f"no image for inspection {uid[:40]!r} on this server")
        return FileResponse(path)

    @v1.post("/inspections/{uid}/review", tags=["station"])
    def review(uid: str, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """A reviewer's verdict: normal, defect or skip, with an optional note."""
        try:
            return profiles.review(uid, str(body.get("label", "")), body.get("note"))
        except KeyError:
            raise missing(uid) from None
