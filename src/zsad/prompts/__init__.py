"""Prompt tools shared by every method: state words, templates, ensembles, aggregation."""

from zsad.prompts.ensemble import (
    TEXT_AGGREGATIONS,
    PromptSet,
    aggregate_text,
    build_prompts,
    get_prompt_set,
    list_prompt_sets,
)
from zsad.prompts.rvs import RVS_METHODS, kde_weights, select_representative
from zsad.prompts.text import TextOptions, rvs_params, state_text

__all__ = [
    "RVS_METHODS",
    "TEXT_AGGREGATIONS",
    "PromptSet",
    "TextOptions",
    "rvs_params",
    "state_text",
    "aggregate_text",
    "build_prompts",
    "get_prompt_set",
    "list_prompt_sets",
    "kde_weights",
    "select_representative",
]
