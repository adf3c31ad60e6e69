"""The driver's input listing: local files, folders and globs as ``zsad detect`` lists them, plus remote URIs."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad.errors import ZsadInputError
from zsad.outputs import check_out_not_input
from zsad.runs import DetectJob


def is_uri(item: str) -> bool:
    """A remote URI (``s3://``...), not a local path (``file://`` counts as local)."""
    return "://" in item and not item.startswith("file://")


def _local(item: str) -> str:
    return item[len("file://") :] if item.startswith("file://") else item


def list_inputs(job: DetectJob, group_by: str | None, skipped: Any = None) -> list[tuple[str, str]]:
    """(URI, group) of every input: local files, folders and globs as ``zsad detect`` lists them, plus URIs.

    Folder listings never enter the output folder, and record what they pass over in ``skipped``.
    """
    from zsad.data.datasets import collect_images

    items: list[str] = [_local(p) for p in job.paths]
    column = group_by[4:] if group_by and group_by.startswith("csv:") else None
    groups: dict[str, str] = {}
    if job.list_file is not None:
        listed = _read_list(job.list_file, column)
        items += [u for u, _ in listed]
        groups = {os.path.abspath(_local(u)) if not is_uri(u) else u: g for u, g in listed}
    elif column is not None:
        raise ZsadInputError(f"--group-by {group_by}: needs --list FILE.csv with a column {column!r}")
    if not items:
        raise ZsadInputError("no images given: pass files, folders or glob patterns, or --list FILE")
    remote = [u for u in items if is_uri(u)]
    local = [u for u in items if not is_uri(u)]
    check_out_not_input(job.out, local)
    found = collect_images(local, job.recursive, job.image_glob, skipped, exclude=[job.out]) if local else []
    uris = [str(p) for p in found]
    uris += _expand_remote(remote, job.recursive)
    out = []
    for u in uris:
        if column is not None:
            g = groups.get(u)
            if g is None:
                raise ZsadInputError(f"{u}: found through a folder of --list, so it has no {column!r} value")
        else:
            g = u.rsplit("/", 1)[0] if group_by == "parent" else ""
        out.append((u, g))
    return out


def _read_list(path: Path, column: str | None) -> list[tuple[str, str]]:
    """A list file (one path per line) or, for ``--group-by csv:COLUMN``, a CSV with ``image_path`` and COLUMN."""
    from zsad.data.datasets import list_entry, read_list_file

    if column is None:
        return [(u, "") for u in read_list_file(path)]
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0] or "image_path" not in rows[0]:
        raise ZsadInputError(f"{path}: --group-by csv:{column} needs a CSV with columns image_path and {column}")
    return [(list_entry(r["image_path"], path.parent), r[column] or "") for r in rows]


def _expand_remote(uris: Sequence[str], recursive: bool) -> list[str]:
    """Files behind URIs of any file system pyarrow knows (``s3://``, ``gs://``...): folders listed, not read."""
    if not uris:
        return []
    from pyarrow import fs as pafs

    from zsad.data import is_image_file

    out = []
    for uri in uris:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        scheme = uri.split("://", 1)[0]
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive))
            out += sorted(
                f"{scheme}://{f.path}" for f in found if f.type == pafs.FileType.File and is_image_file(f.path)
            )
        elif info.type == pafs.FileType.File:
            out.append(uri)
        else:
            raise ZsadInputError(f"{uri}: not found")
    return out


def read_bytes(uri: str) -> bytes:
    """A file's bytes from a local path or any file system pyarrow knows."""
    if is_uri(uri):
        from pyarrow import fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as f:
            return bytes(f.read())
    return Path(uri).read_bytes()
