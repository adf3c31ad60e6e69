"""The method contract: a method receives a built backbone, is set up once per class, then predicts batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from zsad.backbone import Backbone
from zsad.bank import FeatureBank
from zsad.errors import ZsadInputError
from zsad.methods.options import check_text_options, config_record, make_config
from zsad.types import Prediction


@dataclass
class MethodConfig:
    """User-facing defaults of a method live in its config dataclass, not in module constants."""

    # The backbone this method's published numbers use; the CLI builds it unless told otherwise.
    backbone: str = "ViT-B-16-plus-240"
    pretrained: str = "laion400m_e31"
    image_size: int = 240


@dataclass
class TextPromptConfig(MethodConfig):
    """The text options WinCLIP, SDP and Dual-Image share, checked once here for every method that uses them.

    They choose the prompt set and how each state's sentences reduce to one vector (``mean``, a Representative
    Vector Selection ``pca | kde | dbscan | mean_shift``, or anomalib's ``raw_mean``), with that reduction's knobs.
    """

    label: ClassVar[str] = "method"  # the method name in error messages
    prompt_set: str = "winclip"
    text_aggregation: str = "mean"
    rvs_eps: float = 0.5  # DBSCAN; the CLIP-AD scripts use 0.5/15 on MVTec and 1.5/25 on VisA
    rvs_min_samples: int = 15
    rvs_kde_bandwidth: float = 0.3
    rvs_meanshift_bandwidth: float = 2.0

    def __post_init__(self) -> None:
        check_text_options(self.label, self)


class Method(ABC):
    """Base class: ``setup(class_name, reference_images)`` then ``predict(images) -> Prediction``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    needs_class_name: ClassVar[bool] = True
    supports_few_shot: ClassVar[bool] = False
    transductive: ClassVar[bool] = False
    trainable: ClassVar[bool] = False  # has learnable parts: `zsad train` + `--checkpoint`
    requires_checkpoint: ClassVar[bool] = True  # a trainable method refuses to run untrained (RWDA trains itself)
    needs_training_data: ClassVar[bool] = True  # `zsad train` needs --dataset/--root (RWDA trains on text only)
    # Scoring an image needs the features of the whole set (pairing, mutual scoring): ``SetLevelMethod``.
    set_level: ClassVar[bool] = False
    # {precision: why} for the precisions under which the method keeps its backbone in fp32, because measured drift
    # changed decisions (benchmarks/bench_export.py, RESULTS.md); absent: that precision is allowed.
    full_precision: ClassVar[dict[str, str]] = {}
    # Why ``zsad export`` cannot make this method one static per-image graph, with the plan (docs/export.md);
    # None: exportable.
    export_refusal: ClassVar[str | None] = None

    def __init__(self, backbone: Backbone, config: MethodConfig | None = None, **overrides: Any) -> None:
        cfg = make_config(self.config_cls, overrides, self.name, base=config)
        self.backbone = backbone
        self.config = cfg
        self.class_name: str | None = None
        self.k_shot = 0
        self.set_notes: list[str] = []  # what the last set's scoring fell back on (``SetLevelMethod.end_set``)

    @property
    def image_size(self) -> int:
        """Side of the square inputs ``predict`` accepts: the backbone's input size."""
        return self.backbone.image_size

    @torch.no_grad()
    def setup(self, class_name: str | None = None, reference_images: torch.Tensor | None = None) -> None:
        """Prepare text features for ``class_name`` and, for few-shot methods, reference features."""
        if reference_images is not None and not self.supports_few_shot:
            raise ZsadInputError(f"{self.name}: does not take reference images")
        # a category-agnostic method never reads the name it is given
        self.class_name = (class_name or "object") if self.uses_class_name(self.config) else "object"
        self._setup(self.class_name, reference_images)

    @abstractmethod
    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None: ...

    @abstractmethod
    def _predict(self, images: torch.Tensor) -> Prediction: ...

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch of normalised images (B, 3, S, S) at the backbone's resolution."""
        if self.class_name is None:
            self.setup(None)
        s = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ZsadInputError(f"{self.name}: expected images (B, 3, {s}, {s}), got {tuple(images.shape)}")
        return self._predict(images.to(self.backbone.device))

    @classmethod
    def uses_text(cls, config: Any) -> bool:
        """Whether this configuration reads the text tower (a vision-only backbone is refused when it does)."""
        return True

    @property
    def is_transductive(self) -> bool:
        """Whether this configured instance uses other test images to score one (flagged in every result)."""
        return self.transductive_for(self.config)

    @classmethod
    def uses_class_name(cls, config: Any) -> bool:
        """Whether the prompts read the class name under ``config``: runs and the service key models by it only then.

        A classmethod, never an instance property: front ends ask before any model is built.
        """
        return cls.needs_class_name

    @classmethod
    def transductive_for(cls, config: Any) -> bool:
        """``is_transductive`` from a config alone, so a service can say it before building the method."""
        return cls.transductive

    @property
    def transductive_note(self) -> str:
        """Why results are transductive, printed with every result of a transductive run."""
        return "image scores re-scaled with statistics of the whole test set"

    def finalize_scores(
        self, parts: dict[str, np.ndarray], fit: dict[str, np.ndarray] | None = None
    ) -> np.ndarray | None:
        """Set-level re-scoring from ``Prediction.score_parts`` of a whole category/run, or None (scores are final).

        ``fit`` holds the parts the set statistics come from when they differ from ``parts`` (e.g. reference images
        scored with the test set's statistics).
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce a run of this method (goes into the run manifest)."""
        return {
            "method": self.name,
            "config": config_record(self.config),
            "class_name": self.class_name,
            "k_shot": self.k_shot,
            "transductive": self.is_transductive,
            "backbone": self.backbone.manifest(),
        }


Tag = TypeVar("Tag")


class SetLevelMethod(Method):
    """A method that scores an image against the other images of its set (pairing, mutual scoring).

    Subclasses give the four steps: ``new_bank``, ``encode`` (pass 1, one backbone forward per image), ``end_set``
    (the set is complete) and ``score_in_set`` (pass 2). ``score_set`` is the one loop running them, for every
    front end: ``zsad detect``/``eval`` (files, re-read in pass 2), the service and Ray (images in memory), and
    ``predict`` (the batch is the set).
    """

    set_level: ClassVar[bool] = True
    export_refusal: ClassVar[str | None] = "it scores each image against the other images of its set (set-level)"

    @abstractmethod
    def new_bank(self) -> FeatureBank:
        """Start a set: an empty bank that collects ``encode`` outputs for the whole set."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a batch that the bank keeps until the whole set is seen."""

    @abstractmethod
    def end_set(self, bank: FeatureBank) -> None:
        """Called once every image of the set is in ``bank``, before any ``score_in_set``.

        A set too small for the method is scored by its documented fallback, and ``set_notes`` says so: a method
        never prints, so every front end (the CLI, the service, Ray) shows these notes beside the results.
        """

    @abstractmethod
    def score_in_set(self, index: torch.Tensor, bank: FeatureBank) -> Prediction:
        """Predictions for the bank rows ``index``, scored against the whole set."""

    def score_set(
        self, images: Iterable[torch.Tensor], rows: Callable[[int], Iterable[tuple[torch.Tensor, Tag]]]
    ) -> Iterator[tuple[Tag, Prediction]]:
        """Encode every batch of ``images`` into one bank, close the set, then score the bank rows ``rows`` names.

        ``rows(n)`` is called once the set of ``n`` images is closed (``set_notes`` are final) and yields (bank
        rows, tag) pairs; each prediction comes back with its tag. The caller's two iterables are its hooks: pass 1
        may drop unreadable files and report progress as it yields, pass 2 may skip rows already scored and
        re-read files instead of keeping them in memory. An empty set yields nothing; the bank is closed however
        the loop ends.
        """
        self.set_notes = []
        bank = self.new_bank()
        try:
            for batch in images:
                with torch.no_grad():
                    bank.add(self.encode(batch.to(self.backbone.device)))
            if not len(bank):
                return
            with torch.no_grad():
                self.end_set(bank)
            for index, tag in rows(len(bank)):
                with torch.no_grad():
                    pred = self.score_in_set(index, bank)
                yield tag, pred
        finally:
            bank.close()

    def predict_as_set(self, images: torch.Tensor, batch_size: int | None = None) -> list[Prediction]:
        """``images`` in memory as one set, encoded and scored ``batch_size`` at a time (None: all at once)."""
        step = max(1, batch_size or len(images))
        chunks = torch.split(images, step)
        return [pred for _, pred in self.score_set(chunks, lambda n: ((i, None) for i in torch.arange(n).split(step)))]

    def _predict(self, images: torch.Tensor) -> Prediction:
        """The batch is the set (``zsad detect``/``eval`` score the whole set)."""
        preds = self.predict_as_set(images)
        if not preds:
            raise ZsadInputError(f"{self.name}: an empty batch is not a set to score")
        return preds[0]
