"""``zsad profile``: create, list, show and export a station's profiles from the command line.

The same store as ``zsad serve --station`` (``--db URL``, or env ``ZSAD_DB``); a profile made here is scored by a
server, ``zsad detect --profile`` and ``zsad export --profile`` alike. Opening the database here never takes the
server's lock, so these commands work while a server runs on it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from zsad.cli.options import (
    MethodOpt,
    TileOverlap,
    Tiles,
    TileScore,
    TileSize,
    parse_options,
    tile_spec,
    with_backbone_options,
)
from zsad.errors import ZsadInputError
from zsad.runs import BackboneSpec

if TYPE_CHECKING:
    from zsad.store import Station

app = typer.Typer(no_args_is_help=True, help="Profiles of a station: named, versioned inspection setups.")

Db = Annotated[
    str,
    typer.Option(
        envvar="ZSAD_DB",
        help="The station's database: sqlite:///path/station.db (zsad serve --out DIR --station keeps DIR/station.db) "
        "or postgresql://user@host/db.",
    ),
]
Revision = Annotated[int | None, typer.Option(help="A revision number (default: the current one).")]


def _url(db: str) -> str:
    """A bare path is taken as a SQLite file, the way ``zsad serve --out DIR --station`` writes one."""
    if "://" in db:
        return db
    path = Path(db)
    if path.is_dir():
        path = path / "station.db"
    if not path.is_file():
        raise ZsadInputError(f"--db {db}: no such database file (give a URL such as sqlite:///station.db)")
    return f"sqlite:///{path.resolve()}"


@contextmanager
def station(db: str) -> Iterator[Station]:
    """The store opened for a command (no server lock; rows need no files here)."""
    from zsad.store import Station

    with tempfile.TemporaryDirectory(prefix="zsad-profile-") as tmp:
        st = Station(_url(db), Path(tmp), lock=False)
        try:
            yield st
        finally:
            st.close()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ZsadInputError(f"{path}: cannot read ({e.strerror or e})") from None


def blob_reader(st: Station) -> Any:
    """(name, bytes) of a stored reference image, for ``write_profile_references``."""
    return lambda sha: (st.blob_name(sha), st.blob(sha))


def references_cache(p: dict[str, Any]) -> Path:
    """Where a revision's references are written for a run: ``$ZSAD_CACHE`` (or ~/.cache/zsad), by scoring key."""
    import os

    base = Path(os.environ.get("ZSAD_CACHE") or Path.home() / ".cache" / "zsad")
    return base / "profile-references" / p["scoring_key"][:32]


def load(db: str, name: str, revision: int | None, folder: Path | Callable[[dict[str, Any]], Path]) -> dict[str, Any]:
    """A profile revision, its references written into ``folder`` (or the folder a function of it names)."""
    from zsad.runs import write_profile_references

    with station(db) as st:
        p = st.profile(name, revision)
        where = folder(p) if callable(folder) else folder
        p["reference_dir"] = write_profile_references(p["setup"], blob_reader(st), where)
    return p


@app.command("create")
@with_backbone_options
def create_cmd(
    bb: BackboneSpec,
    name: Annotated[str, typer.Argument(help="Profile name (1-64 letters, digits, '_.-').")],
    db: Db,
    method: Annotated[str, typer.Option(help="Method name (see `zsad methods`).")] = "winclip",
    class_name: Annotated[str | None, typer.Option(help="Object name used in prompts.")] = None,
    reference_dir: Annotated[
        Path | None, typer.Option(help="Folder of NORMAL images: few-shot references and threshold calibration.")
    ] = None,
    k_shot: Annotated[int | None, typer.Option(help="References a few-shot method memorises (0 = all).")] = None,
    threshold: Annotated[float | None, typer.Option(help="A fixed image threshold (rule manual).")] = None,
    threshold_rule: Annotated[
        str | None,
        typer.Option(help="normal_quantile (default with references), robust_outlier, two_mode or manual."),
    ] = None,
    option: MethodOpt = None,
    sink: Annotated[
        list[str] | None,
        typer.Option(
            "--sink",
            help="Where this profile's decisions go, on every server and watcher (repeatable; secrets via "
            "#password_env=VAR or #secret_env=VAR, never in the URL).",
        ),
    ] = None,
    tiles: Tiles = "none",
    tile_overlap: TileOverlap = 0.25,
    tile_size: TileSize = None,
    tile_score: TileScore = "max_tile",
) -> None:
    """Create a profile (revision 1); its reference images are stored in the database by content hash."""
    from zsad.cli.main import _one_line_errors, console
    from zsad.methods.options import route_options
    from zsad.runs import check_profile_name, make_setup, reference_files

    with _one_line_errors():
        name = check_profile_name(name)
        opts = route_options([method], parse_options(option))[method]
        files = reference_files(reference_dir) if reference_dir is not None else []
        sinks = _checked_sinks(sink or [])
        cut = tile_spec(tiles, tile_overlap, tile_size, tile_score)
        with station(db) as st:
            if any(p["name"] == name for p in st.profiles()):
                raise ZsadInputError(f"profile {name!r}: exists in {st.url_safe}")
            shas = [st.put_blob(_read(f), f.name) for f in files]
            setup = make_setup(
                method,
                backbone=bb,
                options=opts,
                class_name=class_name,
                references=list(dict.fromkeys(shas)),
                k_shot=k_shot,
                threshold_rule=threshold_rule,
                threshold=threshold,
                sinks=sinks,
                tiles=cut,
            )
            p = st.create_profile(name, setup, "created")
    t = p["setup"]["threshold"]
    console.print(
        f"profile {p['name']} revision {p['revision']}: {setup['method']}, {len(setup['references'])} reference(s), "
        f"threshold {t['rule']}" + (f" {t['value']}" if t["value"] is not None else ""),
        highlight=False,
    )


def _checked_sinks(urls: list[str]) -> list[str]:
    try:
        from zsad.serve.sinks import parse_profile_sinks
    except ImportError as e:
        raise ZsadInputError(f"--sink needs the full install: pip install 'zsad[full]' ({e.name} is missing)") from None
    for s in parse_profile_sinks(urls):
        s.close()
    return urls


@app.command("sinks")
def sinks_cmd(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    db: Db,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="The profile's sinks from now on (repeatable).")] = (
        None
    ),
    clear: Annotated[bool, typer.Option(help="Remove every sink.")] = False,
) -> None:
    """Set where a profile's decisions go (a new revision; scores and thresholds are unchanged)."""
    from zsad.cli.main import _one_line_errors, console
    from zsad.runs import revise_setup

    with _one_line_errors():
        if bool(sink) == clear:
            raise ZsadInputError("give the new sinks (--sink URL, repeatable) or --clear, not both or neither")
        urls = _checked_sinks(sink or [])
        with station(db) as st:
            setup = st.profile(name)["setup"]
            if (setup.get("sinks") or []) == urls:
                raise ZsadInputError(f"profile {name}: it has these sinks already")
            p = st.revise(name, revise_setup(setup, sinks=urls), "changed sinks" if urls else "removed sinks")
    console.print(f"profile {p['name']} revision {p['revision']}: {len(urls)} sink(s)", highlight=False)


@app.command("list")
def list_cmd(db: Db) -> None:
    """Every profile at its current revision."""
    from rich.table import Table

    from zsad.cli.main import _one_line_errors
    from zsad.cli.tables import print_table

    with _one_line_errors(), station(db) as st:
        table = Table("name", "revision", "method", "class name", "references", "threshold", "changed")
        for p in st.profiles():
            s, t = p["setup"], p["setup"]["threshold"]
            value = "" if t["value"] is None else f" {t['value']:.6g}"
            table.add_row(
                p["name"],
                str(p["revision"]),
                s["method"],
                s["class_name"] or "",
                str(len(s["references"])),
                t["rule"] + value,
                p["created_at"],
            )
    print_table(table)


@app.command("show")
def show_cmd(name: Annotated[str, typer.Argument(help="Profile name.")], db: Db, revision: Revision = None) -> None:
    """A revision's setup as JSON, and every revision of the profile."""
    from zsad.cli.main import _one_line_errors

    with _one_line_errors(), station(db) as st:
        p = st.profile(name, revision)
        p["revisions"] = [
            {"revision": r["revision"], "created_at": r["created_at"], "reason": r["reason"]}
            for r in st.revisions(name)
        ]
    typer.echo(json.dumps(p, indent=2))


@app.command("export")
def export_cmd(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    db: Db,
    to: Annotated[Path, typer.Option(help="Folder for profile.json and references/ (must not exist or be empty).")],
    revision: Revision = None,
) -> None:
    """A revision as files: profile.json (setup, revision, scoring key) and its reference images."""
    from zsad.cli.main import _one_line_errors, console
    from zsad.fileio import write_json

    with _one_line_errors():
        if to.exists() and (not to.is_dir() or any(to.iterdir())):
            raise ZsadInputError(f"--to {to}: exists and is not an empty folder")
        p = load(db, name, revision, to / "references")
        refs = p.pop("reference_dir")
        write_json(to / "profile.json", p)
    console.print(
        f"wrote {to / 'profile.json'}" + (f" and {len(p['setup']['references'])} image(s) in {refs}" if refs else ""),
        highlight=False,
    )
