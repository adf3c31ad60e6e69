"""Pseudo-anomalies synthesised on the test images themselves, for test-time adaptation (DRAEM / CutPaste style).

Why: test-time adaptation of a zero-shot detector has no labelled anomalies, so it fabricates them on the very images
it will score, either a smooth Perlin-shaped region filled with a foreign, jittered texture (DRAEM) or a rectangle cut
from elsewhere in the same image and pasted back (CutPaste). Every random draw comes from one explicit
``torch.Generator`` so a run is reproducible bit for bit, and every operation is batched over the images.

The images are already-normalised CLIP input, so nothing here assumes a [0, 1] range: colour jitter is expressed in
units of each channel's own standard deviation and pixels outside the anomaly are never touched (``torch.where``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zsad.errors import ZsadInputError

PASTE_MODES = ("texture", "cutpaste")
SYNTH_MODES = (*PASTE_MODES, "mixed")
_OPACITY = (0.5, 1.0)
_GAIN = (0.6, 1.4)  # per-channel contrast jitter
_OFFSET = (-0.5, 0.5)  # per-channel brightness jitter, in units of the channel's std
_ASPECT = (0.3, 3.3)  # CutPaste's aspect-ratio range (height / width), drawn log-uniformly


# --------------------------------------------------------------------------------------------------------- helpers


def _uniform(size: tuple[int, ...], lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform draws on the generator's device (a CPU generator cannot fill a CUDA tensor)."""
    return lo + (hi - lo) * torch.rand(size, generator=generator, device=generator.device)


def _randint(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One integer in [0, high_i) per entry of ``high``: ``torch.randint`` only takes a scalar bound."""
    u = torch.rand(high.shape, generator=generator, device=generator.device, dtype=torch.float64)
    return torch.minimum((u * high).floor().long(), high.long() - 1)


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic 6t^5 - 15t^4 + 10t^3: zero first and second derivatives at cell borders, so no creases."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def _area_range(area: float | tuple[float, float]) -> tuple[float, float]:
    """``area`` as a (lo, hi) range, validated: an empty or full mask is no anomaly at all."""
    if isinstance(area, tuple | list):
        if len(area) != 2:
            raise ZsadInputError(f"area range must be (lo, hi), got {area!r}")
        lo, hi = (float(a) for a in area)
        if not (0.0 < lo <= hi < 1.0):
            raise ZsadInputError(f"area range must satisfy 0 < lo <= hi < 1, got {area!r}")
        return lo, hi
    if isinstance(area, bool) or not isinstance(area, int | float):
        raise ZsadInputError(f"area must be a float in (0, 1) or a (lo, hi) range, got {area!r}")
    a = float(area)
    if not (0.0 < a < 1.0):
        raise ZsadInputError(f"area must lie strictly between 0 and 1, got {area!r}")
    return a, a


def _check_images(images: torch.Tensor, name: str = "images") -> tuple[int, int, int]:
    """(B, C, S) of a batch of square images; rotations by 90 degrees need square inputs."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2] or images.shape[0] < 1:
        raise ZsadInputError(f"{name} must be a non-empty (B, C, S, S) tensor, got shape {tuple(images.shape)}")
    return images.shape[0], images.shape[1], images.shape[-1]


def _check_opacity(opacity: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(o) for o in opacity)
    if not (0.0 <= lo <= hi <= 1.0):
        raise ZsadInputError(f"opacity must satisfy 0 <= lo <= hi <= 1, got {opacity!r}")
    return lo, hi


def _gather2d(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]``: per-image shifts / crops in two batched gathers."""
    b, c, h, w = x.shape
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _jitter(x: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Per-channel contrast / brightness change relative to each channel's own statistics (no [0, 1] assumption)."""
    mu = x.mean(dim=(-2, -1), keepdim=True)
    sd = x.std(dim=(-2, -1), keepdim=True, correction=0)
    return (x - mu) * gain[..., None, None] + mu + offset[..., None, None] * sd


def _flip_roll(images: torch.Tensor) -> torch.Tensor:
    """Texture stand-in when there is no other image: the image mirrored and rolled by half its size."""
    s = images.shape[-1]
    return images.flip(-1).roll(shifts=(s // 2, s // 2), dims=(-2, -1))


def _augment(tex: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 90-degree rotation, horizontal flip, colour jitter and spatial roll, so the texture looks foreign."""
    b, c, s, _ = tex.shape
    dev = tex.device
    rot = torch.randint(0, 4, (b,), generator=generator, device=generator.device).to(dev)
    flip = (torch.rand((b,), generator=generator, device=generator.device) < 0.5).to(dev)
    gain = _uniform((b, c), *_GAIN, generator).to(device=dev, dtype=tex.dtype)
    offset = _uniform((b, c), *_OFFSET, generator).to(device=dev, dtype=tex.dtype)
    shift = torch.randint(0, s, (2, b), generator=generator, device=generator.device).to(dev)
    tex = tex.clone()
    for k in (1, 2, 3):
        sel = rot == k
        if bool(sel.any()):
            tex[sel] = torch.rot90(tex[sel], k, dims=(-2, -1))
    tex = torch.where(flip[:, None, None, None], tex.flip(-1), tex)
    tex = _jitter(tex, gain, offset)
    ar = torch.arange(s, device=dev)
    return _gather2d(tex, (ar[None] - shift[0, :, None]) % s, (ar[None] - shift[1, :, None]) % s)


def _blend_texture(
    images: torch.Tensor,
    masks: torch.Tensor,
    textures: torch.Tensor,
    generator: torch.Generator,
    opacity: tuple[float, float],
) -> torch.Tensor:
    """DRAEM blend ``(1 - beta m) img + beta m tex`` inside the mask; outside, the input pixels exactly."""
    textures = _augment(textures, generator)
    beta = _uniform((images.shape[0],), *opacity, generator).to(device=images.device, dtype=images.dtype)
    bm = beta[:, None, None, None] * masks[:, None]
    blended = (1 - bm) * images + bm * textures
    return torch.where(masks[:, None] > 0, blended, images)


def _cutpaste(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a jittered rectangle of the mask's area from a random spot of the same image and paste it at another.

    The source and destination corners are drawn independently (they coincide only by chance, and then the colour
    jitter still makes the patch differ). An empty mask gives an empty rectangle and the image unchanged.
    """
    b, c, s, _ = images.shape
    gdev, dev = generator.device, images.device
    target = masks.flatten(1).sum(1).to(device=gdev, dtype=torch.float64)
    ratio = torch.exp(_uniform((b,), math.log(_ASPECT[0]), math.log(_ASPECT[1]), generator).double())
    h = torch.sqrt(target * ratio).round().clamp(1, s)
    w = (target / h).round().clamp(1, s)  # from h, so a clamped height keeps the area
    h = torch.where(target > 0, h, torch.zeros_like(h)).long()
    w = torch.where(target > 0, w, torch.zeros_like(w)).long()
    y0, x0 = _randint(s - h + 1, generator), _randint(s - w + 1, generator)
    y1, x1 = _randint(s - h + 1, generator), _randint(s - w + 1, generator)
    gain = _uniform((b, c), *_GAIN, generator).to(device=dev, dtype=images.dtype)
    offset = _uniform((b, c), *_OFFSET, generator).to(device=dev, dtype=images.dtype)
    h, w, y0, x0, y1, x1 = (t.to(dev)[:, None] for t in (h, w, y0, x0, y1, x1))
    ar = torch.arange(s, device=dev)[None]
    moved = _gather2d(images, (ar - y1 + y0).clamp(0, s - 1), (ar - x1 + x0).clamp(0, s - 1))
    moved = _jitter(moved, gain, offset)
    rect = ((ar >= y1) & (ar < y1 + h))[:, :, None] & ((ar >= x1) & (ar < x1 + w))[:, None, :]
    return torch.where(rect[:, None], moved, images), rect.to(images.dtype)


# ------------------------------------------------------------------------------------------------------ public API


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(H, W) float32 2-D gradient (Perlin) noise with ``scale`` = lattice cells along (y, x), roughly in [-1, 1].

    Why Perlin: its thresholded level sets are smooth, blob-like regions of controllable size, a much better stand-in
    for real defects than rectangles. The noise is computed on a grid padded to whole cells and then cropped, so H, W
    need not be multiples of the scale. Samples sit at pixel centres, never exactly on a lattice point (where Perlin
    noise is identically zero), which avoids ties when the noise is thresholded.
    """
    h, w = (int(v) for v in shape)
    sy, sx = (int(v) for v in scale)
    if h < 1 or w < 1:
        raise ZsadInputError(f"perlin_noise shape must be positive, got {shape!r}")
    if sy < 1 or sx < 1:
        raise ZsadInputError(f"perlin_noise scale must be >= 1 along both axes, got {scale!r}")
    dev = generator.device
    cy, cx = -(-h // sy), -(-w // sx)  # pixels per cell
    angles = torch.rand((sy + 1, sx + 1), generator=generator, device=dev, dtype=torch.float32) * (2 * math.pi)
    gy, gx = torch.sin(angles), torch.cos(angles)  # unit gradients at the lattice points
    y = (torch.arange(cy * sy, device=dev, dtype=torch.float32) + 0.5) / cy
    x = (torch.arange(cx * sx, device=dev, dtype=torch.float32) + 0.5) / cx
    iy, ix = y.floor().long(), x.floor().long()
    fy, fx = y - iy, x - ix

    def corner(dy: int, dx: int) -> torch.Tensor:
        ry, rx = (iy + dy)[:, None], (ix + dx)[None, :]
        return gy[ry, rx] * (fy - dy)[:, None] + gx[ry, rx] * (fx - dx)[None, :]

    u, v = _fade(fy)[:, None], _fade(fx)[None, :]
    top = torch.lerp(corner(0, 0), corner(0, 1), v)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), v)
    return (torch.lerp(top, bottom, u) * math.sqrt(2.0))[:h, :w].contiguous()


def perlin_masks(
    n: int,
    size: int,
    area: float | tuple[float, float],
    *,
    generator: torch.Generator,
    min_scale: int = 1,
    max_scale: int = 6,
) -> torch.Tensor:
    """(n, size, size) binary float masks of Perlin blobs covering exactly the requested fraction of pixels.

    Why exact: the anomaly size is the knob TTA experiments turn, so each mask keeps the ``round(area * size**2)``
    pixels of highest noise (a stable rank, so ties cannot add or drop pixels) instead of thresholding at a fixed
    level. The lattice scale is an integer drawn independently along y and x in [min_scale, max_scale] (number of
    cells, not a power-of-two exponent); the noise is rotated by a random multiple of 90 degrees. ``area`` is a float
    or a (lo, hi) range from which each mask draws its own target; the pixel count is clamped to [1, size**2 - 1].
    """
    lo, hi = _area_range(area)
    if n < 0 or size < 1:
        raise ZsadInputError(f"perlin_masks needs n >= 0 and size >= 1, got n={n}, size={size}")
    if not (1 <= min_scale <= max_scale):
        raise ZsadInputError(f"perlin_masks needs 1 <= min_scale <= max_scale, got {min_scale}, {max_scale}")
    dev = generator.device
    total = size * size
    if n == 0:
        return torch.zeros((0, size, size), device=dev)
    noises = []
    for _ in range(n):
        sy, sx = torch.randint(min_scale, max_scale + 1, (2,), generator=generator, device=dev).tolist()
        noise = perlin_noise((size, size), (sy, sx), generator)
        k = int(torch.randint(0, 4, (1,), generator=generator, device=dev))
        noises.append(torch.rot90(noise, k, dims=(0, 1)))
    targets = lo + (hi - lo) * torch.rand((n,), generator=generator, device=dev, dtype=torch.float64)
    counts = (targets * total).round().clamp(1, total - 1).long()
    flat = torch.stack(noises).reshape(n, total)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(total, device=dev).expand(n, total))
    return (ranks < counts[:, None]).reshape(n, size, size).float()


def paste_anomalies(
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    generator: torch.Generator,
    source: torch.Tensor | None = None,
    mode: str = "texture",
    opacity: tuple[float, float] = _OPACITY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste pseudo-anomalies into (B, 3, S, S) images; returns (images, masks actually used (B, S, S) float).

    ``texture`` (DRAEM): the region ``masks`` is blended with an augmented foreign texture,
    ``out = (1 - beta m) img + beta m tex`` with ``beta`` ~ U(opacity) per image. The texture comes from ``source``
    (K, 3, S', S'), resized to S, picked at random; when ``source`` is None or is ``images`` itself, the batch is
    permuted by a random derangement (a random cyclic permutation) so no image gets its own texture, and a lone image
    uses itself mirrored and rolled. ``cutpaste``: a jittered rectangle of the mask's area (aspect ratio in
    [0.3, 3.3]) is moved within the same image; the mask's shape is ignored and the rectangle is returned.
    Pixels outside the returned mask are exactly the input's.
    """
    b, _, s = _check_images(images)
    if masks.shape != (b, s, s):
        raise ZsadInputError(f"masks must have shape {(b, s, s)}, got {tuple(masks.shape)}")
    if mode not in PASTE_MODES:
        raise ZsadInputError(f"unknown paste mode {mode!r}; expected one of {', '.join(PASTE_MODES)}")
    opacity = _check_opacity(opacity)
    m = masks.to(device=images.device, dtype=images.dtype)
    if mode == "cutpaste":
        return _cutpaste(images, m, generator)
    if source is None or source is images:
        if b == 1:
            textures = _flip_roll(images)
        else:
            perm = torch.randperm(b, generator=generator, device=generator.device)
            idx = torch.empty_like(perm)
            idx[perm] = perm.roll(-1)  # image perm[i] takes perm[i + 1]: a derangement
            textures = images[idx.to(images.device)]
    else:
        _check_images(source, "source")
        src = source.to(device=images.device, dtype=images.dtype)
        if src.shape[-1] != s:
            src = F.interpolate(src, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        idx = torch.randint(0, src.shape[0], (b,), generator=generator, device=generator.device)
        textures = src[idx.to(images.device)]
    return _blend_texture(images, m, textures, generator, opacity), m


def synthesize(
    images: torch.Tensor,
    *,
    n: int,
    area: float | tuple[float, float],
    seed: int,
    mode: str = "texture",
    source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesise n pseudo-anomalous copies of the test images with their masks: ((n, 3, S, S), (n, S, S)).

    Why a one-call helper: TTA loops want a reproducible batch from a seed alone. Images are taken in a seeded random
    order, cycling when n > B; masks are Perlin blobs of the requested area. ``mixed`` alternates texture (even
    samples) and cutpaste (odd samples). Without ``source`` (or with ``source`` being ``images``) each texture comes
    from a different test image than the one it is pasted on, also when n > B repeats images.
    """
    b, _, s = _check_images(images)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ZsadInputError(f"synthesize needs a positive integer n, got {n!r}")
    if mode not in SYNTH_MODES:
        raise ZsadInputError(f"unknown synthesis mode {mode!r}; expected one of {', '.join(SYNTH_MODES)}")
    _area_range(area)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(b, generator=g)[torch.arange(n) % b]
    masks = perlin_masks(n, s, area, generator=g).to(device=images.device, dtype=images.dtype)
    picked = images[idx.to(images.device)]
    is_texture = torch.full((n,), mode == "texture") if mode != "mixed" else torch.arange(n) % 2 == 0
    out, used = picked.clone(), masks.clone()
    tex_sel, cut_sel = is_texture.nonzero().flatten(), (~is_texture).nonzero().flatten()
    if tex_sel.numel():
        sel = tex_sel.to(images.device)
        if source is None or source is images:
            if b == 1:
                textures = _flip_roll(picked[sel])
            else:
                other = (idx[tex_sel] + torch.randint(1, b, (tex_sel.numel(),), generator=g)) % b
                textures = images[other.to(images.device)]
            out[sel] = _blend_texture(picked[sel], masks[sel], textures, g, _OPACITY)
        else:
            out[sel], _ = paste_anomalies(picked[sel], masks[sel], generator=g, source=source, mode="texture")
    if cut_sel.numel():
        sel = cut_sel.to(images.device)
        out[sel], used[sel] = _cutpaste(picked[sel], masks[sel], g)
    return out, used
