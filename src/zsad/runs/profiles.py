"""Profiles: a named inspection setup as data, and the run settings it stands for.

A profile's *setup* is plain JSON (stored by ``zsad.store`` as one revision): method, options, backbone identity,
class name, reference images by content hash, k-shot, threshold rule and value. This module is the
one place that turns a setup into what a run takes (``MethodSpec``, ``Policy``), so the station's server,
``zsad detect --profile`` and ``zsad export --profile`` decide the same way from the same revision.

Threshold rules: ``normal_quantile`` (the references' calibration images decide; the value recorded with the
revision is what they gave when it was made), ``robust_outlier`` / ``two_mode`` (each request's own scores decide),
``manual`` and ``refit`` (a fixed value: one typed by a person, one fitted from reviewed decisions).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zsad.errors import ZsadInputError
from zsad.runs.build import BackboneSpec, MethodSpec
from zsad.runs.decide import Policy
from zsad.thresholds import UNLABELLED_RULES
from zsad.tiling import TileSpec, tile_key

THRESHOLD_RULES = ("normal_quantile", *UNLABELLED_RULES, "manual", "refit")
FIXED_RULES = ("manual", "refit")  # a value, not a rule: it decides alone


def check_profile_name(name: str) -> str:
    """A profile name by the store's rule (a short url-safe word: it appears in URLs, file names and tables)."""
    from zsad.store import check_profile_name as check

    return check((name or "").strip())


def backbone_record(spec: BackboneSpec) -> dict[str, Any]:
    """A backbone's identity as JSON: what was asked (unset fields stay each method's default) and the weights' hash.

    The weights file is recorded by path *and* sha256: another machine may keep it elsewhere, but it must be the
    same file (``profile_backbone`` checks).
    """
    from zsad.backbone.loading import file_digest

    weights = None
    if spec.weights is not None:
        digest = file_digest(Path(spec.weights))
        weights = {"path": str(spec.weights), "sha256": digest["sha256"], "size": digest["size"]}
    return {
        "model_name": spec.model_name,
        "pretrained": spec.pretrained,
        "image_size": spec.image_size,
        "precision": spec.precision,
        "seed": spec.seed,
        "weights": weights,
    }


def profile_backbone(setup: dict[str, Any], device: str | None = None) -> BackboneSpec:
    """The profile's backbone as a spec; its weights file must be there and be the recorded one."""
    from zsad.backbone.loading import file_digest

    b = dict(setup.get("backbone") or {})
    weights = b.get("weights")
    path = None
    if weights:
        path = Path(weights["path"])
        if not path.is_file():
            raise ZsadInputError(
                f"{path}: the profile's weights file is not on this machine (sha256 {weights['sha256']})"
            )
        if file_digest(path)["sha256"] != weights["sha256"]:
            raise ZsadInputError(f"{path}: not the weights file the profile was made with (sha256 differs)")
    return BackboneSpec(
        model_name=b.get("model_name"),
        pretrained=b.get("pretrained"),
        weights=path,
        image_size=b.get("image_size"),
        device=device,
        seed=int(b.get("seed") or 0),
        precision=str(b.get("precision") or "fp32"),
    )


def make_setup(
    method: str,
    *,
    backbone: BackboneSpec,
    options: dict[str, Any] | None = None,
    class_name: str | None = None,
    references: list[str] | None = None,
    k_shot: int | None = None,
    threshold_rule: str | None = None,
    threshold: float | None = None,
    sinks: list[str] | None = None,
    tiles: TileSpec | None = None,
) -> dict[str, Any]:
    """A checked setup: the method and its options typed against the backbone, the threshold rule consistent.

    A value without a rule is ``manual``; a rule without a value is ``normal_quantile`` when there are references
    and ``robust_outlier`` otherwise. ``sinks``: where the profile's decisions go (URLs, checked by the front end
    that takes them: ``zsad.serve.sinks``); they never change scores, so they are no part of the scoring key.
    ``tiles``: the profile's parts are scored tile by tile (``zsad.tiling``); recorded only when given, so an
    untiled setup is the same JSON (and scoring key) as before tiling existed.
    """
    spec = MethodSpec(method, backbone, dict(options or {}))
    spec.validate()
    refs = list(references or [])
    rule = threshold_rule or ("manual" if threshold is not None else "normal_quantile" if refs else "robust_outlier")
    check_threshold(rule, threshold, refs)
    if k_shot is not None and k_shot < 0:
        raise ZsadInputError(f"k_shot {k_shot}: must be >= 0 (0 = every reference memorised)")
    if k_shot and not spec.cls.supports_few_shot:
        raise ZsadInputError(f"k_shot: method {spec.name} takes no reference images (they only calibrate)")
    return {
        "method": spec.name,
        # typed as the method reads them (a CLI's "0.05" is 0.05), so a profile means the same on every front end
        "options": {k: _plain(getattr(spec.config, k, v)) for k, v in sorted(dict(options or {}).items())},
        "backbone": backbone_record(backbone),
        "class_name": (class_name or "").strip() or None,
        "references": refs,
        "k_shot": k_shot,
        "threshold": {"rule": rule, "value": None if threshold is None else float(threshold)},
        "pixel_threshold": None,  # reserved: the pixel threshold follows the image threshold's basis for now
        "sinks": [str(u) for u in sinks or []],
        **tile_key(tiles),
    }


def profile_tiles(setup: dict[str, Any]) -> TileSpec | None:
    """The setup's tile setting as a ``TileSpec`` (None: whole images, squashed)."""
    t = setup.get("tiles")
    return TileSpec.from_record(t) if t else None


def check_threshold(rule: str, value: float | None, references: list[str]) -> None:
    """One line for a rule that cannot decide: unknown, a fixed one without a value, quantiles without normals."""
    if rule not in THRESHOLD_RULES:
        raise ZsadInputError(f"threshold_rule {rule!r}: use one of {', '.join(THRESHOLD_RULES)}")
    if rule in FIXED_RULES and (value is None or not math.isfinite(value)):
        raise ZsadInputError(f"threshold_rule {rule}: needs a finite threshold value")
    if rule == "normal_quantile" and not references:
        raise ZsadInputError("threshold_rule normal_quantile: needs reference images of normal parts")


def profile_policy(setup: dict[str, Any]) -> Policy:
    """How a run decides for this profile: a fixed value, or a rule (its references' normals win, as in detect)."""
    t = setup.get("threshold") or {}
    rule, value = t.get("rule", "robust_outlier"), t.get("value")
    if rule in FIXED_RULES and value is not None:
        return Policy(threshold=float(value))
    return Policy(None, rule if rule in UNLABELLED_RULES else "robust_outlier")


def profile_uses_normals(setup: dict[str, Any]) -> bool:
    """Whether the references' calibration images join the decision.

    By the precedence every front end applies (manual, then normals, then the rule) they set the pixel threshold
    even when the image threshold is fixed.
    """
    return bool(setup.get("references"))


def profile_source(setup: dict[str, Any], source: str) -> str:
    """The threshold source a decision records: ``refit`` rather than ``manual`` for a fitted value."""
    rule = (setup.get("threshold") or {}).get("rule")
    return str(rule) if source == "manual" and rule in FIXED_RULES else source


def revise_setup(setup: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``setup`` with ``changes`` (top-level keys); the original revision is never edited."""
    unknown = sorted(set(changes) - set(setup) - {"sinks", "tiles"})  # fields added later: older setups take them
    if unknown:
        raise ZsadInputError(f"profile setup: unknown field(s) {', '.join(unknown)}")
    new = copy.deepcopy(setup)
    new.update(copy.deepcopy(changes))
    return new


def profile_settings(setup: dict[str, Any], device: str | None = None) -> dict[str, Any]:
    """A setup as the arguments of a detect or export run (``zsad detect --profile``, ``zsad export --profile``).

    The references come separately (``write_profile_references``); a fixed value becomes the run's manual
    threshold, a rule its unlabelled rule, and ``normal_quantile`` is what the references give in any run.
    """
    t = setup.get("threshold") or {}
    rule = t.get("rule", "robust_outlier")
    return {
        "method": setup["method"],
        "options": dict(setup.get("options") or {}),
        "backbone": profile_backbone(setup, device),
        "class_name": setup.get("class_name"),
        "k_shot": setup.get("k_shot"),
        "threshold": float(t["value"]) if rule in FIXED_RULES else None,
        "threshold_rule": rule if rule in UNLABELLED_RULES else "robust_outlier",
        "tiles": profile_tiles(setup),
    }


def write_profile_references(
    setup: dict[str, Any], read: Callable[[str], tuple[str, bytes]], folder: Path
) -> Path | None:
    """The profile's reference images as files in ``folder`` (None without references).

    Named so that their sorted order is the setup's order: every run then draws the same seeded split of
    memorised and calibration images as the station's server does.
    """
    from zsad.fileio import write_bytes

    shas = list(setup.get("references") or [])
    if not shas:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for i, sha in enumerate(shas):
        name, data = read(sha)
        ext = Path(name).suffix.lower()
        write_bytes(folder / f"{i:05d}-{sha[:16]}{ext if ext in _IMAGE_EXT else '.png'}", data)
    return folder


def _plain(value: Any) -> Any:
    """An option value as JSON keeps it (tuples become lists, which the option parser takes back)."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
