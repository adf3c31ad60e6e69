"""Upper bounds of the options that decide how much memory a run takes, checked before anything loads.

A size typed by mistake (``--image-size 100000``) must be refused in one line, not grow until the machine swaps
or the kernel kills the process. Each bound below is far above any published setting, so it only stops typos and
wishes; the memory estimate of a ViT forward (``vit_activation_bytes``) catches the in-range combinations that
still cannot fit. A user who knows better passes ``--allow-large`` or sets ``ZSAD_ALLOW_LARGE=1`` (``allow_large``):
every check here then lets the value through. docs/reliability.md lists the bounds.

Bottom layer: the standard library only, so the torch-free runtime shares these checks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from zsad.errors import ZsadInputError

ALLOW_LARGE_ENV = "ZSAD_ALLOW_LARGE"
ALLOW_LARGE_FLAG = "--allow-large"
OVERRIDE = f"pass {ALLOW_LARGE_FLAG} (or set {ALLOW_LARGE_ENV}=1) to run it anyway"
_TRUE = {"1", "true", "yes", "on"}


def allow_large() -> bool:
    """Whether the user lifted the bounds: ``ZSAD_ALLOW_LARGE`` is 1/true/yes/on (``--allow-large`` sets it)."""
    return os.environ.get(ALLOW_LARGE_ENV, "").strip().lower() in _TRUE


@contextmanager
def allowing_large(on: bool = True) -> Iterator[None]:
    """Lift the bounds for the duration (``--allow-large``); ``on=False`` leaves the environment as it is.

    The environment variable, not a context variable: the service's worker thread and a local Ray's workers
    (child processes) must see the same choice as the command that started them.
    """
    if not on:
        yield
        return
    before = os.environ.get(ALLOW_LARGE_ENV)
    os.environ[ALLOW_LARGE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOW_LARGE_ENV, None)
        else:
            os.environ[ALLOW_LARGE_ENV] = before


@dataclass(frozen=True)
class Bound:
    """An option's documented range: ``low`` is always enforced, ``high`` unless the user allows large values."""

    option: str
    low: float
    high: float
    why: str  # what the upper bound protects, said when it refuses
    note: str = ""  # said with the lower bound (e.g. "0 = no cap")

    def check(self, value: float, option: str | None = None, sep: str = " ") -> None:
        """One line naming the option when ``value`` is out of range.

        ``option`` renames it (another option of the same range); ``sep="="`` writes a method option's ``key=value``.
        """
        name = f"{option or self.option}{sep}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ZsadInputError(f"{name}{value!r}: must be a number")
        if not math.isfinite(value):
            raise ZsadInputError(f"{name}{value}: must be a finite number")
        if value < self.low:
            extra = f" ({self.note})" if self.note else ""
            raise ZsadInputError(f"{name}{value}: must be >= {_num(self.low)}{extra}")
        if value > self.high and not allow_large():
            raise ZsadInputError(f"{name}{value}: at most {_num(self.high)} ({self.why}); {OVERRIDE}")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# The model's input side. CLIP and DINOv2 are published at 224 to 518 px; 2048 px is four times the largest, where a
# ViT-B/16 already reads 16385 tokens an image. Below 32 px a patch-16 ViT sees at most 2 x 2 patches.
IMAGE_SIZE = Bound("--image-size", 32, 2048, "a ViT's memory grows with the square of the tokens, each 4x per doubling")
# Images per forward. Throughput stops growing far below this on any device; the memory estimate scales with it.
BATCH_SIZE = Bound("--batch-size", 1, 1024, "images held at once in one forward")
# Written/returned maps and overlays. A 16384 px float32 map is 1 GiB, its RGB overlay panel more.
MAP_SIZE = Bound("--max-map-size", 0, 16384, "a map of 16384 x 16384 float32 values is 1 GiB", "0 = no cap")
# `zsad samples`: synthetic images are drawn whole in memory.
SAMPLE_SIZE = Bound("--size", 16, 4096, "each sample image is drawn whole in memory")
SAMPLE_COUNT = Bound("--n-normal", 0, 10000, "a few samples are enough for a first run")
# The service: what one process holds for its clients.
SERVE_BATCH = Bound("--max-batch", 1, 1024, "images held at once in one forward")
SERVE_QUEUE = Bound("--max-queue", 1, 4096, "each waiting request holds its upload in memory")
SERVE_IMAGES = Bound("--max-images", 1, 1024, "a request's images are decoded and scored together")
SERVE_UPLOAD = Bound("--max-upload-bytes", 1, 4 * 2**30, "a request body is held in memory whole")
SERVE_UPLOAD_MB = Bound("--max-upload-mb", 0, 4096, "a request body is held in memory whole")
SERVE_MODELS = Bound("--max-models", 1, 64, "each prepared model keeps its backbone and text features in memory")
SERVE_KEEP = Bound("--keep-results", 1, 1_000_000, "each kept result holds its files and an index entry")
# Method options that size one block of pairwise distances (MuSc's block_mb, dual-image's chunk_mb), in MiB.
BLOCK_MB = Bound("block_mb", 1, 65536, "one block of distances is allocated whole")
# Ray: each actor holds one model.
ACTORS = Bound("--actors", 1, 256, "each actor loads its own model")


def physical_memory() -> int:
    """This machine's RAM in bytes (0 where the platform does not say; the memory checks then pass)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0


def vit_tokens(image_size: int, patch_size: int) -> int:
    """Tokens a ViT reads from a square image: the patch grid plus the class token."""
    return (image_size // patch_size) ** 2 + 1


def vit_activation_bytes(
    image_size: int, patch_size: int, width: int, layers: int, heads: int, batch: int = 1, bytes_per_value: int = 4
) -> int:
    """A rough upper bound of a ViT forward's activations in bytes: ``batch * bytes * (A + F)``.

    ``A = heads * T**2``: one block's attention weights, as an attention that is not fused holds them (a fused
    kernel needs far less, so this over-estimates there). ``F = (layers + 7) * T * width``: every block's output
    (methods tap several) plus one block's q, k, v and 4x-wide MLP hidden. ``T = (image_size // patch)**2 + 1``.
    Weights and method-specific buffers are not counted: this is about what grows with the options.
    """
    t = vit_tokens(image_size, patch_size)
    per_image = heads * t * t + (layers + 7) * t * width
    return batch * bytes_per_value * per_image


def gib(n: float) -> str:
    """Bytes as GiB for a message."""
    return f"{n / 2**30:.1f} GiB"


def check_memory(
    need: int, have: int, what: str, where: str = "this machine's memory", advice: str = "", note: str = ""
) -> None:
    """One line when an estimate ``need`` exceeds ``have`` bytes (unknown ``have``, 0, passes), unless allowed."""
    if have <= 0 or need <= have or allow_large():
        return
    note = f" ({note})" if note else ""
    advice = f"{advice}, or " if advice else ""
    raise ZsadInputError(f"{what} needs about {gib(need)}{note}, more than {where} ({gib(have)}); {advice}{OVERRIDE}")


def check_budget_mb(option: str, value: int, method: str = "") -> None:
    """A method's memory budget in MiB (MuSc's ``block_mb``, dual-image's ``chunk_mb``): in range, within the RAM.

    ``method`` words it as the methods' own option checks do (``musc: option block_mb=...``).
    """
    label = f"{method}: option {option}" if method else option
    BLOCK_MB.check(value, label, sep="=")
    check_memory(int(value) << 20, physical_memory(), f"{label}={value}", advice=f"lower {option}")
