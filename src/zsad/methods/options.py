"""Method options: typed, range-checked and refused in one line before any model is built.

Options arrive as text from the CLI (``-o window_stride=2``) or as Python values from the API. Both go through
``make_config``, which converts each value to the type its config field declares, rejects non-finite numbers, and
then runs the config's own range checks (``__post_init__``), so ``-o temperature=nan`` or ``-o scales=[]`` never
reaches a forward pass and ``-o window_stride=abc`` never reaches a comparison deep inside a method.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Sequence
from typing import Any

from zsad.errors import ZsadInputError

# Recorded under "backbone" in every manifest (the effective values); the config holds only the method's defaults.
BACKBONE_FIELDS = ("backbone", "pretrained", "image_size")


def _fail(method: str, key: str, value: Any, expected: str) -> ZsadInputError:
    return ZsadInputError(f"{method}: option {key}={_show(value)}: expected {expected}")


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _from_text(text: str) -> Any:
    """JSON when the text parses as JSON, else the text itself (``compat=none`` is the string 'none')."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _to_int(method: str, key: str, value: Any) -> int:
    v = _from_text(value.strip()) if isinstance(value, str) else value
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not v.is_integer()):
        raise _fail(method, key, value, "an integer")
    return int(v)


def _to_float(method: str, key: str, value: Any) -> float:
    v = value
    if isinstance(value, str):
        try:
            v = float(value.strip())
        except ValueError:
            raise _fail(method, key, value, "a number") from None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(method, key, value, "a number")
    if not math.isfinite(float(v)):
        raise _fail(method, key, value, "a finite number")
    return float(v)


def _to_bool(method: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise _fail(method, key, value, "true or false")


def _to_str(method: str, key: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    if not isinstance(value, str):
        raise _fail(method, key, value, "a string")
    return value


_SCALARS = {int: _to_int, float: _to_float, bool: _to_bool, str: _to_str}


def _to_tuple(method: str, key: str, value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``tuple[T, ...]`` (any length) or ``tuple[T, T]`` (fixed) from a list, a JSON list, ``a,b`` or one item."""
    items: Any = value
    if isinstance(value, str):
        text = value.strip()
        parsed = _from_text(text)
        if isinstance(parsed, list):
            items = parsed
        elif text.startswith("["):
            raise _fail(method, key, value, "a list such as [2, 3]")
        elif args[0] is str:
            items = [text]
        else:
            items = [t for t in text.split(",") if t.strip()] if "," in text else [parsed]
    elif not isinstance(value, list | tuple):
        items = [value]
    variadic = len(args) == 2 and args[1] is Ellipsis
    kinds = [args[0]] * len(items) if variadic else list(args)
    if len(kinds) != len(items):
        raise _fail(method, key, value, f"{len(kinds)} values")
    convert = [_SCALARS.get(k) for k in kinds]
    if any(c is None for c in convert):
        return tuple(items)
    return tuple(c(method, key, v) for c, v in zip(convert, items, strict=True))  # type: ignore[misc]


def coerce_option(method: str, key: str, value: Any, annotation: Any) -> Any:
    """``value`` (text or Python) as the type ``annotation`` declares, or a one-line error naming the option."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        annotation, origin = args[0], typing.get_origin(args[0])
    if origin is tuple:
        return _to_tuple(method, key, value, typing.get_args(annotation))
    convert = _SCALARS.get(annotation)
    return convert(method, key, value) if convert else value


def make_config(config_cls: type[Any], overrides: dict[str, Any], method: str, base: Any = None) -> Any:
    """A validated config: unknown keys refused with the known ones listed, values typed, ranges checked."""
    cfg = base if base is not None else config_cls()
    if not overrides:
        return cfg
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        known = ", ".join(sorted(fields - set(BACKBONE_FIELDS)))
        raise ZsadInputError(f"{method}: unknown option(s) {', '.join(unknown)}; known: {known}")
    hints = typing.get_type_hints(type(cfg))
    typed = {k: coerce_option(method, k, v, hints.get(k, Any)) for k, v in overrides.items()}
    try:
        return dataclasses.replace(cfg, **typed)
    except ZsadInputError:
        raise
    except (TypeError, ValueError) as e:  # a check that compared values of unexpected types
        raise ZsadInputError(f"{method}: invalid options {_show(overrides)}: {str(e).splitlines()[0]}") from None


def config_record(cfg: Any) -> dict[str, Any]:
    """The config as a manifest records it: without the default-backbone fields.

    The effective backbone is recorded separately, so a stale default such as ``pretrained: laion400m_e31`` never
    sits beside ``none``. A config's ``later_fields`` (options added after a release) are left out while at their
    default, so the run keys of folders made before them stay the same and those runs still resume.
    """
    later = set(getattr(cfg, "later_fields", ()))  # options added after release: recorded only when set
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in BACKBONE_FIELDS and not (k in later and v == defaults.get(k))
    }


def check_range(method: str, **checks: tuple[Any, bool, str]) -> None:
    """``name=(value, ok, rule)``: the first failed rule becomes one line naming the option and its value."""
    for name, (value, ok, rule) in checks.items():
        if not ok:
            raise ZsadInputError(f"{method}: option {name}={_show(value)}: must be {rule}")


def check_rscin_k(method: str, k_list: tuple[int, ...]) -> tuple[int, ...]:
    """RsCIN's neighbour counts as ints, each >= 1 (shared by every set-level method that offers RsCIN)."""
    k_list = tuple(int(v) for v in k_list)
    check_range(method, rscin_k=(list(k_list), bool(k_list) and all(k >= 1 for k in k_list), "integers >= 1"))
    return k_list


def parse_option(text: str) -> tuple[str | None, str, str]:
    """``KEY=VALUE`` (every selected method) or ``METHOD:KEY=VALUE`` -> (method or None, key, raw value text)."""
    if "=" not in text:
        raise ZsadInputError(f"--option {text!r}: expected KEY=VALUE or METHOD:KEY=VALUE")
    k, v = text.split("=", 1)
    target, _, key = k.strip().rpartition(":")
    if not key.strip():
        raise ZsadInputError(f"--option {text!r}: no option name before '='")
    return (target.strip() or None), key.strip(), v


def check_text_options(method: str, cfg: Any) -> None:
    """The prompt options WinCLIP, SDP and Dual-Image share: a known prompt set and aggregation, positive knobs."""
    from zsad.prompts.ensemble import TEXT_AGGREGATIONS, list_prompt_sets

    sets, aggs = list_prompt_sets(), TEXT_AGGREGATIONS
    check_range(
        method,
        prompt_set=(cfg.prompt_set, cfg.prompt_set in sets, f"one of {', '.join(sets)}"),
        text_aggregation=(cfg.text_aggregation, cfg.text_aggregation in aggs, f"one of {', '.join(aggs)}"),
        rvs_eps=(cfg.rvs_eps, cfg.rvs_eps > 0, "> 0"),
        rvs_min_samples=(cfg.rvs_min_samples, cfg.rvs_min_samples >= 1, ">= 1"),
        rvs_kde_bandwidth=(cfg.rvs_kde_bandwidth, cfg.rvs_kde_bandwidth > 0, "> 0"),
        rvs_meanshift_bandwidth=(cfg.rvs_meanshift_bandwidth, cfg.rvs_meanshift_bandwidth > 0, "> 0"),
    )


def option_names(method: str) -> set[str]:
    """The ``-o`` keys of a method: its config fields without the default-backbone ones."""
    from zsad.methods import get_method_class

    fields = {f.name for f in dataclasses.fields(get_method_class(method).config_cls)}
    return fields - set(BACKBONE_FIELDS)


def route_options(methods: Sequence[str], parsed: Sequence[tuple[str | None, str, Any]]) -> dict[str, dict[str, Any]]:
    """Options per method from ``(method or None, key, value)``: unprefixed keys go to every method that has them.

    Nothing is silently dropped: a prefix naming no selected method, a prefixed key the method lacks, or a key no
    selected method has is refused. With a single method, an unknown key is refused by the method itself, listing
    the known ones.
    """
    from zsad.methods import get_method_class

    names = {get_method_class(m).name: m for m in methods}
    known = set().union(*(option_names(m) for m in methods)) if methods else set()
    for target, key, value in parsed:
        if target is not None and target.lower() not in names:
            raise ZsadInputError(
                f"--option {target}:{key}={value}: {target!r} is not a selected method ({', '.join(sorted(names))})"
            )
        if target is None and key not in known and len(methods) > 1:
            raise ZsadInputError(f"--option {key}: no selected method ({', '.join(methods)}) has this option")
        if target is not None and key not in option_names(target.lower()):
            have = ", ".join(sorted(option_names(target.lower())))
            raise ZsadInputError(f"--option {target}:{key}: {target} has no option {key!r} (known: {have})")
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        fields = option_names(name)
        mine = out.setdefault(name, {})
        for target, key, value in parsed:
            if target is not None and target.lower() != get_method_class(name).name:
                continue
            if len(methods) == 1 or target is not None or key in fields:
                mine[key] = value
    return out
