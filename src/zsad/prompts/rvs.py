"""Representative Vector Selection (RVS): one text vector per state from its many prompt sentences.

A state ("normal", "anomalous") is described by hundreds of sentences (state words x templates); a zero-shot
detector compares image features with ONE vector per state. The plain mean is pulled by odd sentences, so CLIP-AD
(arXiv 2311.00453, "Representative Vector Selection") also picks the vector by PCA, KDE weighting, DBSCAN or
mean-shift clustering.

Caveats of the paper's settings: the DBSCAN eps is dataset-tuned in its scripts (eps=0.5, min_samples=15 on MVTec;
eps=1.5, min_samples=25 on VisA). Unit vectors are at most 2 apart and CLIP sentence embeddings far closer, so
eps=1.5 makes every sentence one cluster, i.e. the result equals the mean; mean-shift with bandwidth 2 on unit vectors
is likewise one cluster.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from zsad.errors import ZsadInputError

RVS_METHODS: tuple[str, ...] = ("mean", "pca", "kde", "dbscan", "mean_shift")


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of unit rows, renormalised (kept bit-identical to the historical ``aggregate_text("mean")``)."""
    return F.normalize(x.mean(0), dim=-1)


def _pca(x: torch.Tensor) -> torch.Tensor:
    """Dominant direction of the sentences, as the paper's official code computes it.

    Each sentence vector is centred by its OWN mean over its D entries, not across sentences: centring across
    sentences would remove exactly the shared direction we want to represent, leaving only how sentences differ.
    With X the (D, N) matrix of these columns, the result is X @ e for e the top eigenvector of X^T X (the first
    left singular vector of X times sigma), signed to agree with the plain mean, renormalised.
    """
    xd = x.double()
    cols = (xd - xd.mean(1, keepdim=True)).T  # (D, N)
    _, vecs = torch.linalg.eigh(cols.T @ cols)  # ascending eigenvalues; (N, N) is small: N sentences
    v = cols @ vecs[:, -1]
    if torch.dot(v, xd.mean(0)) < 0:
        v = -v
    return F.normalize(v, dim=-1).float()


def kde_weights(x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """(N,) weights proportional to each row's Gaussian-KDE density over all rows (float64).

    The kernel's normalising constant cancels in the softmax; logsumexp keeps tiny bandwidths from underflowing.
    """
    xd = x.double()
    log_k = -torch.cdist(xd, xd).square() / (2.0 * bandwidth**2)
    return torch.logsumexp(log_k, dim=1).softmax(0)


def _kde(x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    w = kde_weights(x, bandwidth)
    return F.normalize(w @ x.double(), dim=-1).float()


def _largest_cluster_mean(x: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Mean of the rows of the largest cluster (ties: lowest label), renormalised; labels < 0 are noise."""
    best = int(np.argmax(np.bincount(labels[labels >= 0])))
    mask = torch.from_numpy(labels == best).to(x.device)
    return _mean(x[mask])


def _dbscan(x: torch.Tensor, eps: float, min_samples: int) -> torch.Tensor:
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=eps, min_samples=min_samples).fit(x.detach().cpu().double().numpy()).labels_
    if not (labels >= 0).any():
        # The official code crashes here; the mean is the natural answer when no sentence group is dense enough.
        warnings.warn(
            f"RVS dbscan: no cluster with eps={eps}, min_samples={min_samples} (all {len(labels)} sentences are "
            "noise); using the mean",
            stacklevel=3,
        )
        return _mean(x)
    return _largest_cluster_mean(x, labels)


def _mean_shift(x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    from sklearn.cluster import MeanShift

    labels = MeanShift(bandwidth=bandwidth).fit(x.detach().cpu().double().numpy()).labels_
    return _largest_cluster_mean(x, labels)


def select_representative(
    embeddings: torch.Tensor,
    how: str = "dbscan",
    *,
    eps: float = 0.5,
    min_samples: int = 15,
    kde_bandwidth: float = 0.3,
    meanshift_bandwidth: float = 2.0,
) -> torch.Tensor:
    """Reduce (N, D) sentence embeddings of ONE state to one float32 unit vector (D,) on the input's device.

    Rows are L2-normalised first so that sentence length (embedding norm) does not weigh in. ``how`` is one of
    ``RVS_METHODS``; the keyword parameters are used only by the method they name.
    """
    if how not in RVS_METHODS:
        raise ZsadInputError(f"unknown representative vector selection {how!r}; known: {', '.join(RVS_METHODS)}")
    if embeddings.ndim != 2 or embeddings.shape[0] < 1:
        raise ZsadInputError(f"RVS needs (N, D) embeddings with N >= 1, got shape {tuple(embeddings.shape)}")
    if how == "dbscan" and (eps <= 0 or min_samples < 1):
        raise ZsadInputError(f"RVS dbscan needs eps > 0 and min_samples >= 1, got eps={eps}, min_samples={min_samples}")
    if how == "kde" and kde_bandwidth <= 0:
        raise ZsadInputError(f"RVS kde needs kde_bandwidth > 0, got {kde_bandwidth}")
    if how == "mean_shift" and meanshift_bandwidth <= 0:
        raise ZsadInputError(f"RVS mean_shift needs meanshift_bandwidth > 0, got {meanshift_bandwidth}")
    x = F.normalize(embeddings.float(), dim=-1)
    if how == "mean":
        return _mean(x)
    if how == "pca":
        return _pca(x)
    if how == "kde":
        return _kde(x, kde_bandwidth)
    if how == "dbscan":
        return _dbscan(x, eps, min_samples)
    return _mean_shift(x, meanshift_bandwidth)
