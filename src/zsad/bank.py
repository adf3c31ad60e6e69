"""Per-image features of a whole set (a folder, a category) for methods that score an image against the others.

Dual-Image pairing and mutual scoring need every image's features before any image can be scored. The backbone runs
once per image (pass 1, ``add``); scoring (pass 2) reads partners back in chunks. Features stay in RAM up to
``ram_bytes``; later chunks spill to ``.npy`` files in a temporary folder that are read back memory-mapped, so a
folder of thousands of images fits in RAM whatever the feature size.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zsad.errors import ZsadInputError


@dataclass
class _Chunk:
    start: int
    length: int
    ram: dict[str, torch.Tensor] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


class FeatureBank:
    """Append-only store of per-image tensors (first dim = image), stored as ``dtype`` (float16 halves the RAM)."""

    def __init__(self, *, ram_bytes: int = 2 << 30, dtype: torch.dtype = torch.float16) -> None:
        self.ram_bytes = ram_bytes
        self.dtype = dtype
        self._chunks: list[_Chunk] = []
        self._n = 0
        self._ram_used = 0
        self._dir: Path | None = None
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return self._n

    @property
    def spilled(self) -> bool:
        """Whether some chunks live on disk (for tests and logs)."""
        return any(c.files for c in self._chunks)

    def add(self, feats: dict[str, torch.Tensor]) -> None:
        """Append one batch: every tensor has the batch as first dim; keys and shapes never change."""
        shapes = {k: tuple(v.shape[1:]) for k, v in feats.items()}
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            raise ZsadInputError(f"feature bank: batch shapes {shapes} differ from the first batch's {self._shapes}")
        lengths = {v.shape[0] for v in feats.values()}
        if len(lengths) != 1:
            raise ZsadInputError(f"feature bank: tensors of one batch have different lengths {sorted(lengths)}")
        b = lengths.pop()
        chunk = _Chunk(self._n, b)
        for k, v in feats.items():
            t = v.detach().to("cpu", self._dtype_for(v)).contiguous()
            size = t.numel() * t.element_size()
            if self._ram_used + size <= self.ram_bytes:
                chunk.ram[k] = t
                self._ram_used += size
            else:
                if self._dir is None:
                    self._dir = Path(tempfile.mkdtemp(prefix="zsad-bank-"))
                path = self._dir / f"{len(self._chunks)}_{k}.npy"
                np.save(path, t.numpy())
                chunk.files[k] = path
        self._chunks.append(chunk)
        self._n += b

    def _dtype_for(self, v: torch.Tensor) -> torch.dtype:
        return self.dtype if v.is_floating_point() else v.dtype

    def _read(self, chunk: _Chunk, key: str, rows: torch.Tensor | slice) -> torch.Tensor:
        if key in chunk.ram:
            return chunk.ram[key][rows]
        arr = np.load(chunk.files[key], mmap_mode="r")
        picked = arr[rows.numpy()] if isinstance(rows, torch.Tensor) else arr[rows]
        return torch.from_numpy(np.ascontiguousarray(picked))

    def get(
        self,
        index: Sequence[int] | torch.Tensor,
        keys: Sequence[str] | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """Rows ``index`` (any order, repeats allowed) of each key, as ``dtype`` on ``device``."""
        if self._shapes is None:
            raise ZsadInputError("feature bank is empty")
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self._n):
            raise IndexError(f"feature bank holds {self._n} images; asked for {idx.tolist()}")
        names = list(keys or self._shapes)
        out = {k: torch.empty((len(idx), *self._shapes[k]), dtype=dtype) for k in names}
        starts = torch.tensor([c.start for c in self._chunks])
        which = torch.searchsorted(starts, idx, right=True) - 1
        for ci in which.unique().tolist():
            sel = (which == ci).nonzero().squeeze(1)
            chunk = self._chunks[ci]
            rows = idx[sel] - chunk.start
            for k in names:
                out[k][sel] = self._read(chunk, k, rows).to(dtype)
        return {k: v.to(device) for k, v in out.items()}

    def chunks(
        self,
        size: int,
        keys: Sequence[str] | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(start, rows start..start+size-1) over the whole bank, in order."""
        for start in range(0, self._n, max(1, size)):
            stop = min(self._n, start + size)
            yield start, self.get(torch.arange(start, stop), keys, device=device, dtype=dtype)

    def close(self) -> None:
        """Delete spilled files (also done when the bank is garbage-collected)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __del__(self) -> None:
        self.close()
