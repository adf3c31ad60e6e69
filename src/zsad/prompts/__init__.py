"""Prompt tools shared by every method: state words, templates, ensembles, aggregation."""

from zsad.prompts.ensemble import PromptSet, aggregate_text, build_prompts, get_prompt_set, list_prompt_sets

__all__ = ["PromptSet", "aggregate_text", "build_prompts", "get_prompt_set", "list_prompt_sets"]
