"""Compositional prompt ensembles (state words x templates) and their reduction to one vector per state.

A ``PromptSet`` is data, so methods and users pick sets by name and new sets need no code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from zsad.errors import ZsadInputError
from zsad.prompts.rvs import RVS_METHODS, select_representative


@dataclass(frozen=True)
class PromptSet:
    """Normal and anomalous state phrases (with ``{}`` for the object) and sentence templates."""

    name: str
    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]


_WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
_WINCLIP_NORMAL = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
_WINCLIP_ANOMALOUS = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

# CLIP-AD paper (arXiv 2311.00453): WinCLIP's words without the bare "{}", more defect kinds, and 22 templates
# (WinCLIP's 21 plus "a cropped photo of a {}.").
_CLIPAD_TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a large {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a photo of a small {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
_CLIPAD_NORMAL = (
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
    "{} without scratch",
    "{} without crack",
    "{} without contamination",
)
_CLIPAD_ANOMALOUS = (
    "damaged {}",
    "imperfect {}",
    "blemished {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
    "{} with scratch",
    "{} with crack",
    "{} with contamination",
)

# AdaCLIP's official code: 7 normal and 5 anomalous states x 4 templates.
_ADACLIP = PromptSet(
    "adaclip",
    ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage"),
    ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"),
    (
        "a bad photo of a {}.",
        "a low resolution photo of the {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
    ),
)

_PROMPT_SETS: dict[str, PromptSet] = {
    "adaclip": _ADACLIP,
    # WinCLIP paper: 7 normal and 4 anomalous states x 21 templates.
    "winclip": PromptSet("winclip", _WINCLIP_NORMAL, _WINCLIP_ANOMALOUS, _WINCLIP_TEMPLATES),
    # anomalib's list: "a jpeg corrupted photo of a {}." is replaced by a second "... of the {}." (a typo upstream),
    # kept only so ``compat="anomalib"`` reproduces anomalib's numbers.
    "winclip-anomalib": PromptSet(
        "winclip-anomalib",
        _WINCLIP_NORMAL,
        _WINCLIP_ANOMALOUS,
        tuple(
            "a jpeg corrupted photo of the {}." if t == "a jpeg corrupted photo of a {}." else t
            for t in _WINCLIP_TEMPLATES
        ),
    ),
    # CLIP-AD paper: 9 normal and 10 anomalous states x 22 templates = 198 and 220 sentences.
    "clipad": PromptSet("clipad", _CLIPAD_NORMAL, _CLIPAD_ANOMALOUS, _CLIPAD_TEMPLATES),
}


def list_prompt_sets() -> list[str]:
    """Names of the built-in prompt sets, sorted: what the ``prompt_set`` options accept."""
    return sorted(_PROMPT_SETS)


def get_prompt_set(name: str) -> PromptSet:
    """The built-in prompt set called ``name`` (exact name, as ``list_prompt_sets`` gives it)."""
    try:
        return _PROMPT_SETS[name]
    except KeyError:
        raise ZsadInputError(f"unknown prompt set {name!r}; known: {', '.join(list_prompt_sets())}") from None


def build_prompts(prompt_set: PromptSet, class_name: str) -> tuple[list[str], list[str]]:
    """All sentences of each state: template.format(state.format(class_name)), state-major order."""
    normal = [t.format(s.format(class_name)) for s in prompt_set.normal_states for t in prompt_set.templates]
    anomalous = [t.format(s.format(class_name)) for s in prompt_set.anomalous_states for t in prompt_set.templates]
    return normal, anomalous


def _mean_of_raw(e: torch.Tensor) -> torch.Tensor:
    # anomalib averages unnormalised embeddings; long sentences with large norms weigh more.
    return F.normalize(e.mean(0), dim=-1)


TEXT_AGGREGATIONS: tuple[str, ...] = (*RVS_METHODS, "raw_mean")
_RVS_PARAMS = frozenset({"eps", "min_samples", "kde_bandwidth", "meanshift_bandwidth"})


def aggregate_text(embeddings: torch.Tensor, how: str = "mean", **params: Any) -> torch.Tensor:
    """Reduce (N, D) sentence embeddings of one state to a unit vector (D,).

    ``raw_mean`` exists only to reproduce anomalib; every other name is a representative vector selection (see
    ``zsad.prompts.rvs``), ``mean`` included, and ``params`` are its tuning knobs.
    """
    unknown = sorted(set(params) - _RVS_PARAMS)
    if unknown:
        known = ", ".join(sorted(_RVS_PARAMS))
        raise ZsadInputError(f"unknown text aggregation parameter(s) {', '.join(unknown)}; known: {known}")
    if how == "raw_mean":
        return _mean_of_raw(embeddings.float())
    if how in RVS_METHODS:
        return select_representative(embeddings, how, **params)
    raise ZsadInputError(f"unknown text aggregation {how!r}; known: {', '.join(TEXT_AGGREGATIONS)}")
