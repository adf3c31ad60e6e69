"""``zsad watch``: score every image that appears in folders, by a station's profile, until stopped (or ``--once``).

The same intake as ``zsad serve --watch DIR=PROFILE`` (``zsad.serve.watch``), without HTTP: the profile decides
method, backbone, options, references and threshold; the station's database remembers what was scored, so a
restart scores only what was not finished; ``--sink`` sends each decision's event on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from zsad.cli.options import Complete, Recursive, Rescan, RouteOpt, Settle, SinkOpt
from zsad.cli.profile import Db, _url
from zsad.errors import ZsadInputError
from zsad.runs import profile_backbone

if TYPE_CHECKING:
    from zsad.serve.service import Service


def watch_cmd(
    folders: Annotated[list[Path], typer.Argument(help="Folders to watch.", show_default=False)],
    profile: Annotated[str, typer.Option(help="The station's profile that scores and decides.")],
    db: Db,
    out: Annotated[
        Path | None,
        typer.Option(help="The station's files (images, maps, overlays). Default: the SQLite database's folder."),
    ] = None,
    sink: SinkOpt = None,
    recursive: Recursive = False,
    complete: Complete = "stable",
    settle: Settle = 1.0,
    route: RouteOpt = "none",
    rescan: Rescan = 10.0,
    once: Annotated[
        bool, typer.Option(help="Score what is there now (waiting for files still written), then exit.")
    ] = (False),
    drain_timeout: Annotated[
        float, typer.Option(help="--once: seconds to wait for the sinks to acknowledge before exiting.")
    ] = 30.0,
    max_batch: Annotated[int, typer.Option(help="Images per forward (1 to 1024).")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")] = None,
    keep_days: Annotated[int, typer.Option(help="Delete inspections older than this (0 = keep all).")] = 0,
    keep_images: Annotated[int, typer.Option(help="Only the newest N inspections keep their files (0 = all).")] = 0,
    station_name: Annotated[str | None, typer.Option(help="How this watcher's rows name it (default: host name).")] = (
        None
    ),
    log_level: Annotated[str, typer.Option(help="debug, info (a line per file), warning.")] = "info",
) -> None:
    """Score every image written into FOLDERS with a station profile; route files and send events to sinks."""
    from zsad.cli.main import _one_line_errors, console
    from zsad.cli.reporting import RichReporter
    from zsad.progress import using

    with _one_line_errors():
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("zsad").setLevel(log_level.upper())
        url = _url(db)
        service = _service(folders, profile, url, out, sink or [], recursive, complete, settle, route, rescan,
                           max_batch, device, keep_days, keep_images, station_name)  # fmt: skip
        try:
            with using(RichReporter(console)):
                totals = asyncio.run(_run(service, once, drain_timeout))
        finally:
            service.close()
    line = ", ".join(f"{v} {k}" for k, v in totals.items())
    console.print(f"stopped: {line}", highlight=False)
    if once and (totals.get("errors") or totals.get("left")):
        raise typer.Exit(1)  # cron sees that files were refused or left (each said why in the log and the store)


def _service(
    folders: list[Path], profile: str, url: str, out: Path | None, sinks: list[str], recursive: bool, complete: str,
    settle: float, route: str, rescan: float, max_batch: int, device: str | None, keep_days: int, keep_images: int,
    station_name: str | None,
) -> Service:  # fmt: skip
    """The service a watcher scores through, with the profile's backbone (so its checks are the profile's)."""
    from zsad.serve.service import ServeConfig, Service
    from zsad.serve.watch import WatchSpec
    from zsad.store import Station

    if out is None:
        if not url.startswith("sqlite:///"):
            raise ZsadInputError("--out DIR: needed with a PostgreSQL --db (where images, maps and overlays go)")
        out = Path(url[len("sqlite:///") :]).parent
    with tempfile.TemporaryDirectory(prefix="zsad-watch-") as tmp, Station(url, Path(tmp), lock=False) as st:
        setup = st.profile(profile)["setup"]
    specs = [WatchSpec(f, profile, recursive, complete, settle, route) for f in folders]
    config = ServeConfig(
        method=setup["method"],
        backbone=profile_backbone(setup, device),
        out=out,
        db=url,
        station=True,
        station_name=station_name,
        keep_days=keep_days,
        keep_images=keep_images,
        max_batch=max_batch,
        max_images=max_batch,
        watch=specs,
        rescan_s=rescan,
        sinks=sinks,
    )
    return Service(config)


async def _run(service: Service, once: bool, drain_timeout: float) -> dict[str, Any]:
    """Watch until SIGINT/SIGTERM (or, ``once``, until what was there is finished); then the sinks get a moment."""
    log = logging.getLogger("zsad.watch")
    if once:
        totals = await service.watchers.once()
    else:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service.watchers.start()
        for w in service.watchers.folders:
            log.info("watching %s with profile %s", w.spec.folder, w.spec.profile)
        await stop.wait()
        log.info("stopping: chunks being scored finish first")
        await service.watchers.stop()
        totals = service.watchers.totals()
    if service.delivery is not None:
        started = time.monotonic()
        drained = await asyncio.to_thread(service.delivery.drain, drain_timeout if once else 5.0)
        if drained:
            log.info("events delivered (%.1f s)", time.monotonic() - started)
        else:
            pending = sum(s.get("pending", 0) for s in service.sink_state().values())
            log.warning("%d event(s) not yet acknowledged: kept in the outbox, delivered by the next run", pending)
    return dict(totals)
