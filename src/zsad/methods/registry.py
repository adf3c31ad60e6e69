"""Method registry: one line per method, imported lazily so listing methods stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

from zsad.backbone import Backbone
from zsad.errors import ZsadInputError
from zsad.methods.base import Method

METHODS: dict[str, str] = {
    "musc": "zsad.methods.musc:MuSc",
    "winclip": "zsad.methods.winclip:WinClip",
    "sdp": "zsad.methods.sdp:Sdp",
    "sdp+": "zsad.methods.sdp_plus:SdpPlus",
    "adaclip": "zsad.methods.adaclip:AdaClip",
    "anomalyclip": "zsad.methods.anomalyclip:AnomalyClip",
    "dual-image": "zsad.methods.dual_image:DualImage",
    "rwda": "zsad.methods.rwda:Rwda",
    "anomalyvfm": "zsad.methods.anomalyvfm:AnomalyVfm",
}


def list_methods() -> list[str]:
    """The registered method names, sorted: what ``create_method`` accepts."""
    return sorted(METHODS)


def get_method_class(name: str) -> type[Method]:
    """The class registered under ``name`` (any case), imported only now so unused methods cost nothing."""
    try:
        target = METHODS[name.lower()]
    except KeyError:
        raise ZsadInputError(f"unknown method {name!r}; known: {', '.join(list_methods())}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def create_method(name: str, backbone: Backbone, **options: Any) -> Method:
    """Build a registered method on an existing backbone (methods never build backbones)."""
    return get_method_class(name)(backbone, **options)
