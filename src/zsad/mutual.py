"""Mutual scoring of unlabelled images (MuSc, Li et al., ICLR 2024): the parts that do not depend on a backbone.

- ``lnamd``: local neighbourhood aggregation of patch tokens at degree r (LayerNorm over the whole token map of an
  image, then the mean over each r x r neighbourhood, zero-padded at the borders, then L2 normalisation).
- ``mutual_scores``: each patch of each image scored against every *other* image of the set: the distance to its
  nearest patch there, then the mean over an interval of those per-image distances sorted ascending (the lowest
  30 % by default), so a patch that looks like patches in most other images scores low. Computed in blocks of
  images with a running selection, so memory is bounded by ``block_bytes`` instead of growing as N^2 x patches.
- ``rscin``: image-level re-scoring over a k-nearest-neighbour graph of the images' global embeddings.

What is the paper's and what is ours: the degrees, the interval (0, 0.3), Euclidean distance between unit tokens and
RsCIN's top-k row-normalised similarity smoothing with k in (1, 2, 3) follow the MuSc paper and its public code.
Ours: a set of 2 to 4 images, where the published interval holds no image (``int(0.3 * (n - 1)) == 0``, which gives
NaN scores in the public code), uses the single nearest other image; a set of one image has nobody to compare
with and scores 0 everywhere. Block-wise evaluation is ours and gives the same numbers as one-shot evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def lnamd(tokens: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """(B, N, C) patch tokens of one layer (no CLS) -> (B, N, C) aggregated unit features at degree ``r`` (odd)."""
    if r < 1 or r % 2 == 0:
        raise ValueError(f"aggregation degree r={r}: must be an odd number >= 1")
    b, n, c = tokens.shape
    gh, gw = grid
    x = tokens.float().transpose(1, 2).reshape(b, c, gh, gw)
    x = F.layer_norm(x, (c, gh, gw))  # over the whole token map of each image, no learnt scale
    if r > 1:
        x = F.avg_pool2d(x, r, stride=1, padding=(r - 1) // 2, count_include_pad=True)
    return F.normalize(x.reshape(b, c, n).transpose(1, 2), dim=-1)


def interval(n_others: int, low: float = 0.0, high: float = 0.3) -> tuple[int, int]:
    """[k_min, k_max) of the ascending per-image distances averaged for a set with ``n_others`` other images.

    Fractions are of ``n_others`` (truncated, as published); an empty interval falls back to the nearest image.
    """
    k_max = int(n_others * high) if high < 1 else int(high)
    k_min = int(n_others * low) if low < 1 else int(low)
    k_min, k_max = min(k_min, k_max), max(k_min, k_max)
    k_max = min(k_max, n_others)
    if k_max <= k_min:
        k_min, k_max = 0, min(1, n_others)
    return k_min, k_max


def mutual_scores(
    query: torch.Tensor,
    query_index: torch.Tensor,
    keys: Callable[[], Sequence[tuple[int, torch.Tensor]]] | torch.Tensor,
    n_set: int,
    low: float = 0.0,
    high: float = 0.3,
    block_bytes: int = 256 << 20,
    radius: float | None = None,
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Patch scores of ``query`` (B, N, C) unit, rows ``query_index`` of a set of ``n_set`` images -> (B, N).

    ``keys`` is the whole set's features (n_set, M, C), or a callable yielding ``(start, block)`` chunks of it, so
    the set can live in a feature bank. Each query patch's distance to its nearest patch in every other image is
    kept only among the ``k_max`` smallest so far, so memory stays at (B, N, k_max) plus one block of distances.

    ``radius`` (position-aware scoring, for parts photographed in a fixture): a query patch is compared only with
    the patches of the other images within that many patches of its own position on the ``grid`` (Chebyshev
    distance: a (2r+1) x (2r+1) neighbourhood); None compares with every patch (the published method).
    """
    b, n, _ = query.shape
    k_min, k_max = interval(n_set - 1, low, high)
    if k_max == 0:  # one image: nobody to compare with
        return query.new_zeros(b, n)
    chunks = (lambda: [(0, keys)]) if isinstance(keys, torch.Tensor) else keys
    near = None if radius is None else neighbourhood(grid, radius, query.device) if grid else None
    if radius is not None and near is None:
        raise ValueError("mutual_scores: a radius needs the patch grid")
    best = query.new_full((b, n, 0), float("inf"))
    for start, block in chunks():
        d = _nearest_distance(query, block.to(query.device, query.dtype), block_bytes, near)  # (B, N, P)
        own = query_index[:, None].to(d.device) == torch.arange(start, start + block.shape[0], device=d.device)
        d = d.masked_fill(own[:, None, :], float("inf"))
        merged = torch.cat([best, d], -1)
        best = merged.topk(min(k_max, merged.shape[-1]), dim=-1, largest=False).values
    return best[..., k_min:k_max].mean(-1)


def neighbourhood(grid: tuple[int, int], radius: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) bool: patch m is within ``radius`` patches of patch n on the grid (Chebyshev distance)."""
    if radius < 0:
        raise ValueError(f"radius {radius}: must be >= 0 (patches)")
    gh, gw = grid
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    return ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)


def within_radius(query_pos: torch.Tensor, key_pos: torch.Tensor, radius: float) -> torch.Tensor:
    """(N, 2), (M, 2) (row, col) positions in patch units -> (N, M) bool: Chebyshev distance <= ``radius``.

    ``neighbourhood`` for any two sets of positions (e.g. window centres, which may sit between patches).
    """
    if radius < 0:
        raise ValueError(f"radius {radius}: must be >= 0 (patches)")
    return (query_pos[:, None, :] - key_pos[None, :, :]).abs().amax(-1) <= radius


def _nearest_distance(
    query: torch.Tensor, keys: torch.Tensor, block_bytes: int, near: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, N, C), (P, M, C) unit -> (B, N, P): Euclidean distance of each query patch to its nearest key patch.

    ``near`` (N, M): which key patches each query patch may match (position-aware scoring); None: all.
    """
    b, n, _ = query.shape
    p, m, _ = keys.shape
    out = query.new_empty(b, n, p)
    step = max(1, block_bytes // max(1, b * n * m * query.element_size()))
    for s in range(0, p, step):
        sim = torch.einsum("bnc,pmc->bnpm", query, keys[s : s + step])
        if near is not None:
            sim = sim.masked_fill(~near[None, :, None, :], float("-inf"))
        out[:, :, s : s + step] = (2 - 2 * sim.amax(-1)).clamp_min(0).sqrt()
    return out


def rscin(scores: torch.Tensor, embeddings: torch.Tensor, k_list: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """Image scores smoothed over each image's k most similar images (itself included), averaged over ``k_list``.

    ``scores`` (n,) are min-max normalised first; ``embeddings`` (n, D) are unit global embeddings. Similarities
    weight the neighbours (as published, not clipped at 0); k is capped at the set size, and a row whose weights
    do not sum to a positive number keeps the image's own score.
    """
    n = scores.shape[0]
    if n == 0 or not k_list:
        return scores
    s = scores.double()
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    w = embeddings.double() @ embeddings.double().T
    out = []
    for k in k_list:
        top = w.topk(min(max(1, k), n), dim=1)
        mask = torch.zeros_like(w).scatter(1, top.indices, top.values)
        total = mask.sum(1, keepdim=True)
        p = torch.where(total > 0, mask / total.clamp_min(1e-12), torch.eye(n, dtype=w.dtype, device=w.device))
        out.append(p @ s)
    return torch.stack(out, -1).mean(-1)
