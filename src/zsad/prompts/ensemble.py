"""Compositional prompt ensembles (state words x templates) and their reduction to one vector per state.

A ``PromptSet`` is data, so methods and users pick sets by name and new sets need no code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zsad.errors import ZsadInputError


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

_PROMPT_SETS: dict[str, PromptSet] = {
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
}


def list_prompt_sets() -> list[str]:
    return sorted(_PROMPT_SETS)


def get_prompt_set(name: str) -> PromptSet:
    try:
        return _PROMPT_SETS[name]
    except KeyError:
        raise ZsadInputError(f"unknown prompt set {name!r}; known: {', '.join(list_prompt_sets())}") from None


def build_prompts(prompt_set: PromptSet, class_name: str) -> tuple[list[str], list[str]]:
    """All sentences of each state: template.format(state.format(class_name)), state-major order."""
    normal = [t.format(s.format(class_name)) for s in prompt_set.normal_states for t in prompt_set.templates]
    anomalous = [t.format(s.format(class_name)) for s in prompt_set.anomalous_states for t in prompt_set.templates]
    return normal, anomalous


def _mean_of_normalized(e: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(e, dim=-1).mean(0), dim=-1)


def _mean_of_raw(e: torch.Tensor) -> torch.Tensor:
    # anomalib averages unnormalised embeddings; long sentences with large norms weigh more.
    return F.normalize(e.mean(0), dim=-1)


_AGGREGATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": _mean_of_normalized,
    "raw_mean": _mean_of_raw,
}


def aggregate_text(embeddings: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Reduce (N, D) sentence embeddings of one state to a unit vector (D,)."""
    try:
        return _AGGREGATORS[how](embeddings.float())
    except KeyError:
        raise ZsadInputError(f"unknown text aggregation {how!r}; known: {', '.join(sorted(_AGGREGATORS))}") from None
