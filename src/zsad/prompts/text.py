"""Text side shared by prompt-based methods: one unit vector per state, from a prompt set and an RVS choice."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from zsad.prompts.ensemble import aggregate_text, build_prompts, get_prompt_set


class TextOptions(Protocol):
    """The config fields a method needs for its text features (WinCLIP, SDP, ... all carry them)."""

    prompt_set: str
    text_aggregation: str
    rvs_eps: float
    rvs_min_samples: int
    rvs_kde_bandwidth: float
    rvs_meanshift_bandwidth: float


def rvs_params(cfg: TextOptions) -> dict[str, Any]:
    """RVS tuning knobs of a config (ignored by ``mean`` and ``raw_mean``)."""
    return {
        "eps": cfg.rvs_eps,
        "min_samples": cfg.rvs_min_samples,
        "kde_bandwidth": cfg.rvs_kde_bandwidth,
        "meanshift_bandwidth": cfg.rvs_meanshift_bandwidth,
    }


def state_text(backbone: Any, cfg: TextOptions, class_name: str) -> torch.Tensor:
    """(2, D) unit text vectors [normal, anomalous]; sentence embeddings come from the backbone's cache."""
    normal, anomalous = build_prompts(get_prompt_set(cfg.prompt_set), class_name)
    how, params = cfg.text_aggregation, rvs_params(cfg)
    return torch.stack([aggregate_text(backbone.encode_text(p), how, **params) for p in (normal, anomalous)])
