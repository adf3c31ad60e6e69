"""``TrainableMethod``: what SDP+, AdaCLIP and RWDA share around their learnable parts.

A trainable method owns a small ``nn.Module`` of learnable ``parts`` on the frozen backbone. The base class saves
and loads them in the one checkpoint format (``zsad.train.checkpoint``: safetensors + manifest.json), adopts the
architecture fields the checkpoint was trained with, refuses an option that contradicts them, refuses to run
untrained, and converts officially released checkpoints (``import_official``). Each method's ``fit`` says what
training takes (a ``zsad.train.Training``: parts, data, loss); ``zsad.runs.train`` runs it on the shared loop into
the checkpoint folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from zsad.backbone import Backbone, ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods.base import Method, MethodConfig
from zsad.methods.options import config_record

if TYPE_CHECKING:
    from zsad.train import TrainConfig, Training


class TrainableMethod(Method):
    """Base of methods with learnable parts: ``parts``, ``build_parts``, ``save``/``load``, ``import_official``."""

    trainable = True
    # Config fields a checkpoint fixes (its parts were trained with them); an explicit, different option is refused.
    arch_fields: ClassVar[tuple[str, ...]] = ()
    # Prefix of the tensor names in the checkpoint file (kept for the files earlier versions wrote).
    tensor_prefix: ClassVar[str] = ""
    # What ``import_official`` converts ("" = no official release to import).
    official_checkpoint: ClassVar[str] = ""
    # Trains itself on first use (RWDA): ``setup`` trains in memory, ``zsad.runs`` caches the result.
    self_training: ClassVar[bool] = False
    trained_for: tuple[str | None] | None = None  # self-training: (object,) the parts are trained for
    new_training: dict[str, Any] | None = None  # self-training: the record of training done by ``setup``

    def __init__(self, backbone: Backbone, config: MethodConfig | None = None, **overrides: Any) -> None:
        super().__init__(backbone, config, **overrides)
        self.training_manifest: dict[str, Any] | None = None
        self.given_options = set(overrides)  # what the user chose, as opposed to defaults
        self.finish_config()
        self.build_parts(seed=None)
        if self.config_checkpoint:
            self.load(self.config_checkpoint)

    @property
    def config_checkpoint(self) -> str:
        """The checkpoint folder the config names ('' when the parts are not loaded from one)."""
        return str(getattr(self.config, "checkpoint", "") or "")

    def finish_config(self) -> None:
        """Hook: complete the config from the backbone (e.g. default taps) before the parts are built."""

    # ------------------------------------------------------------------ the parts
    @property
    def parts(self) -> nn.Module | None:
        """The learnable module (None until built, for methods that build it when they train)."""
        raise NotImplementedError

    def build_parts(self, seed: int | None) -> None:
        """(Re)create the learnable modules for the current config; ``seed`` makes their init reproducible."""
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """The learnable tensors as stored in a checkpoint (on CPU, contiguous)."""
        parts = self.parts
        if parts is None:
            raise ZsadInputError(f"{self.name}: nothing trained to save")
        return {f"{self.tensor_prefix}{k}": v.detach().cpu().contiguous() for k, v in parts.state_dict().items()}

    def checkpoint_config(self) -> dict[str, Any]:
        """The config recorded in a checkpoint manifest (what ``load`` adopts the architecture fields from)."""
        return config_record(self.config)

    # ------------------------------------------------------------------ training
    def default_train_config(self) -> TrainConfig:
        """The published training recipe of this method."""
        raise NotImplementedError

    def fit(
        self, datasets: Sequence[tuple[str, Any]], train_cfg: TrainConfig, *, class_names: dict[str, str] | None = None
    ) -> Training:
        """What training the parts on (category, dataset) pairs (none for text-only methods) takes.

        ``class_names`` maps a category to the name its prompts use. The run layer (``zsad.runs.train``) runs the
        returned ``Training`` into its checkpoint folder and calls ``save``: a method never chooses where.
        """
        raise NotImplementedError

    def image_training(
        self, items: list[tuple[str, Any, int]], step: Any, train_cfg: TrainConfig, **extra: Any
    ) -> Training:
        """The ``Training`` every image-trained method returns: its parts on ``items`` (indices into them)."""
        from zsad.train import Training

        parts = self.parts
        assert parts is not None
        return Training(parts, list(range(len(items))), step, train_cfg, self.name, images=items, **extra)

    # ------------------------------------------------------------------ checkpoints
    def save(self, out: Path, training: dict[str, Any]) -> Path:
        """Write the checkpoint folder: tensors + manifest (method, backbone, config, training record)."""
        from zsad.train import save_checkpoint

        manifest = {
            "method": self.name,
            "backbone": self.backbone.manifest(),
            "config": {**self.checkpoint_config(), "checkpoint": ""},
            "training": training,
        }
        save_checkpoint(Path(out), self.tensors(), manifest)
        self.training_manifest = manifest
        return Path(out)

    def save_imported(self, path: Path, out: Path, trained_on: str, source: str) -> Path:
        """Save parts converted from the released checkpoint ``path``, recording that file by path and sha256."""
        from zsad.backbone.loading import file_digest

        record = {"source": source, "file": str(Path(path).resolve()), "sha256": file_digest(path)["sha256"]}
        return self.save(out, {**record, "dataset": trained_on})

    def load(self, path: str | Path) -> None:
        """Load a checkpoint folder made for this method and backbone; its architecture fields are adopted."""
        from zsad.train import load_checkpoint

        tensors, manifest = load_checkpoint(Path(path), method=self.name, backbone=self.backbone.manifest())
        self.adopt(manifest.get("config", {}), path)
        self.build_parts(seed=None)
        parts = self.parts
        assert parts is not None
        prefix = self.tensor_prefix
        load_tensors(parts, {k.removeprefix(prefix): v for k, v in tensors.items()}, path)
        parts.eval()
        self.training_manifest = manifest
        self.loaded(manifest)

    def adopt(self, saved: dict[str, Any], path: str | Path) -> None:
        """Take the checkpoint's architecture fields; an option the user set to another value is refused."""
        changes = {}
        for key in self.arch_fields:
            if key not in saved:
                continue
            value = tuple(saved[key]) if isinstance(saved[key], list) else saved[key]
            now = getattr(self.config, key)
            if key in self.given_options and now != value:
                raise ZsadInputError(
                    f"{path}: the checkpoint was trained with {key}={_plain(value)}, but {key}={_plain(now)} was "
                    f"given; drop the option (the checkpoint fixes it)"
                )
            changes[key] = value
        self.config = dataclasses.replace(self.config, **changes)

    def loaded(self, manifest: dict[str, Any]) -> None:
        """Hook after a checkpoint was loaded (e.g. to remember what it was trained for)."""

    def training_object(self, class_name: str | None) -> str | None:
        """Self-training: the object the parts for ``class_name`` are trained on (None: one set for every class)."""
        return None

    def cache_key(self, obj: str | None) -> str:
        """Self-training: a digest of everything that decides the parts trained for ``obj``."""
        raise NotImplementedError

    def require_trained(self, what: str, extra: str = "") -> None:
        """Refuse to run on the untrained initialisation."""
        if self.training_manifest is None:
            raise ZsadInputError(
                f"{self.name}: no trained {what}; pass --checkpoint DIR (from `zsad train --method {self.name} ...`)"
                + extra
            )

    @classmethod
    def import_official(cls, path: Path, backbone: ClipBackbone, out: Path, trained_on: str) -> Path:
        """Convert a checkpoint released with the method's official code into a zsad checkpoint folder."""
        raise ZsadInputError(f"{cls.name}: there is no official checkpoint to import")


def _plain(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else repr(value)


def read_official(path: Path) -> dict[str, Any]:
    """The tensors of a released checkpoint: safetensors, or a torch file read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ZsadInputError(f"{path}: file not found")
    from zsad.backbone.loading import check_weights_file

    check_weights_file(path)
    with path.open("rb") as f:
        head = f.read(9)
    try:
        if len(head) == 9 and head[8:9] == b"{":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch and safetensors raise many types for a bad file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        if "weights_only" in reason or "Weights only load failed" in reason:
            reason = "it holds Python objects besides tensors, which zsad does not unpickle (weights_only=True)"
        raise ZsadInputError(f"{path}: not a readable checkpoint: {reason}") from None
    if not isinstance(raw, dict):
        raise ZsadInputError(f"{path}: holds a {type(raw).__name__}, not a dict of tensors")
    return raw


# ---------------------------------------------------------------------------------------------- training records
def mask_items(method: str, datasets: Sequence[tuple[str, Any]]) -> list[tuple[str, Any, int]]:
    """(category, dataset, index) of every training image; refuses anomalous images without a pixel mask."""
    items = [(cat, ds, i) for cat, ds in datasets for i in range(len(ds))]
    if not items:
        raise ZsadInputError(f"{method}: the training data holds no images")
    for cat, ds in datasets:
        unmasked = [s for s in ds.samples if s.label == 1 and s.mask_path is None]
        if unmasked:
            raise ZsadInputError(
                f"{unmasked[0].image_path}: {method} trains on pixel masks, but {len(unmasked)} anomalous images of "
                f"{cat} have none (pass --mask-dir)"
            )
    return items


def load_tensors(module: nn.Module, tensors: dict[str, Any], path: str | Path) -> None:
    """Load checkpoint tensors into a module; a shape mismatch is a one-line input error naming the file."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        raise ZsadInputError(f"{path}: tensors do not fit this backbone: {str(e).splitlines()[0]}") from e
