"""How wide and where ``--engine ray`` runs (``RayOptions``), and Ray itself imported with one line if missing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zsad.errors import ZsadInputError

INSTALL = "--engine ray needs Ray Data: pip install 'zsad[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: cluster address, actors, GPUs per actor, grouping of set-level methods."""

    address: str | None = None  # None: a local Ray on this machine; "auto" or "ray://host:10001" for a cluster
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: 1, or less so that decoding tasks still fit beside the actors
    group_by: str | None = None  # "parent" or "csv:COLUMN" (a column of the --list CSV)
    map_dtype: str = "float16"  # float16: 16 bits a value (``range16``, levels of the map's range); float32: exact

    @property
    def map_encoding(self) -> str:
        """How new shards store maps (``zsad.runs.shards.MAP_ENCODINGS``)."""
        return "range16" if self.map_dtype == "float16" else "float32"

    def validate(self) -> None:
        """One line per bad setting."""
        from zsad.limits import ACTORS

        ACTORS.check(self.actors)
        if self.gpus_per_actor < 0 or (self.cpus_per_actor is not None and self.cpus_per_actor <= 0):
            raise ZsadInputError("--gpus-per-actor must be >= 0 and --cpus-per-actor > 0")
        if self.group_by is not None and self.group_by != "parent" and not self.group_by.startswith("csv:"):
            raise ZsadInputError(f"--group-by {self.group_by}: use 'parent' or 'csv:COLUMN'")
        if self.map_dtype not in ("float16", "float32"):
            raise ZsadInputError(f"--map-dtype {self.map_dtype}: use float16 or float32")


def import_ray() -> Any:
    """``ray`` and ``ray.data``, or the one line saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ZsadInputError(INSTALL) from None
    return ray
