"""RWDA: a category-agnostic anomaly classifier trained only on CLIP text embeddings of random-word prompts.

Paper: Tamura, "Random Word Data Augmentation with CLIP for Zero-Shot Anomaly Detection", BMVC 2023; specification
docs/methods/rwda.md (no public code: the unverified details are options of ``RwdaConfig``).

- Training data: ``n_pairs`` normal/anomalous sentence pairs with random words (``zsad.prompts.random_words``),
  encoded by the backbone's cached text encoder. No image is used.
- Classifier: 4 linear layers (D -> h -> h -> h -> 2, ReLU) trained with cross-entropy by ``zsad.train.fit``.
- Scoring: the classifier's anomalous probability of the global image embedding (image score) and of WinCLIP's
  window embeddings (2x2 and 3x3 windows, harmonic aggregation, harmonic mean over scales with the image score: the
  pixel map). ``combine="rwda+clip"`` averages it with WinCLIP's plain prompt probability.
- ``object_mode="unknown"`` (category-agnostic, default): prompts name a generic or random object and the method
  never reads the class name. With ``objects`` (e.g. every MVTec category name) the prompts name those products
  instead: the paper's category-agnostic known-object setting, one classifier for all of them, still blind to the
  test image's class name. ``known``: the class name is the object of every training prompt (one classifier per
  class) and of the CLIP prompts.
- Modality gap: image and text embeddings sit in different regions of CLIP space. Both are L2-normalised
  (``modality_gap="normalize"``); ``center`` also subtracts each modality's mean: the training prompts' mean for
  text, and, for an image, the mean of its own global and window embeddings (per image, so no other test image is
  used). It is an experimental option.
- Without ``checkpoint`` the classifier is trained on the fly (seeded) and cached under ``cache_dir`` keyed by the
  backbone's weights and every setting that changes it, so the category-agnostic mode is one command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zsad.errors import ZsadInputError
from zsad.methods.options import check_range
from zsad.methods.trainable import TrainableMethod
from zsad.methods.winclip import WinClip, WinClipConfig, class_scores
from zsad.progress import SilentReporter, reporter
from zsad.prompts.random_words import GENERIC_OBJECTS, RandomWordOptions, random_word_prompts
from zsad.train.loop import TrainConfig, Training, TrainResult

_EMBED_CHUNK = 2048  # sentences per progress step (each still length-grouped in batches of 512)
_GENERATOR_FIELDS = ("n_pairs", "min_words", "max_words", "word_source", "positions", "random_object_rate")


@dataclass
class RwdaConfig(WinClipConfig):
    """RWDA options: WinCLIP's, plus the random-word prompt generator, the classifier and its training."""

    label: ClassVar[str] = "rwda"
    object_mode: str = "unknown"  # unknown (category-agnostic, never reads the class name) | known
    objects: tuple[str, ...] = ()  # unknown mode: product names for the prompts (default: generic nouns)
    combine: str = "rwda"  # rwda | rwda+clip (mean with WinCLIP's prompt probability)
    n_pairs: int = 10_000  # N_p
    min_words: int = 1
    max_words: int = 3
    word_source: str = "mixed"  # chars | vocab | mixed
    positions: str = "any"  # prefix | suffix | inside | any
    random_object_rate: float = 0.25  # unknown mode: pairs whose object is a random word
    generator_seed: int = 0
    hidden: int = 512
    modality_gap: str = "normalize"  # normalize | center
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    train_seed: int = 0
    checkpoint: str = ""
    cache_dir: str = ""  # default: $ZSAD_CACHE/rwda or ~/.cache/zsad/rwda

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.object_mode not in ("unknown", "known"):
            raise ZsadInputError(f"rwda: object_mode {self.object_mode!r}: use unknown or known")
        self.objects = (self.objects,) if isinstance(self.objects, str) else tuple(str(o) for o in self.objects)
        if self.objects and self.object_mode == "known":
            raise ZsadInputError("rwda: objects is for object_mode=unknown; known mode names the --class-name object")
        if self.combine not in ("rwda", "rwda+clip"):
            raise ZsadInputError(f"rwda: combine {self.combine!r}: use rwda or rwda+clip")
        if self.modality_gap not in ("normalize", "center"):
            raise ZsadInputError(f"rwda: modality_gap {self.modality_gap!r}: use normalize or center")
        self.generator(None)  # validates the generator options
        check_range(
            "rwda",
            hidden=(self.hidden, self.hidden >= 1, ">= 1"),
            epochs=(self.epochs, self.epochs >= 1, ">= 1"),
            batch_size=(self.batch_size, self.batch_size >= 1, ">= 1"),
            lr=(self.lr, self.lr > 0, "> 0"),
        )

    def generator(self, class_name: str | None) -> RandomWordOptions:
        """Prompt generator options; known-object mode with a class name puts it in every prompt."""
        named = self.object_mode == "known" and bool(class_name)
        return RandomWordOptions(
            **{k: getattr(self, k) for k in _GENERATOR_FIELDS if k != "random_object_rate"},
            random_object_rate=0.0 if named else self.random_object_rate,
            prompt_set=self.prompt_set,
            objects=(str(class_name),) if named else (self.objects or GENERIC_OBJECTS),
            seed=self.generator_seed,
        )


def _report(record: dict[str, Any]) -> None:
    """The one line a user sees after training (``zsad train`` or on the fly): time and held-out accuracy."""
    reporter().message(
        f"rwda: classifier trained in {record['seconds']:.0f} s, held-out prompt accuracy "
        f"{100 * record['heldout_accuracy']:.1f}%"
    )


class Classifier(nn.Module):
    """4 linear layers on unit text/image embeddings; ``text_mean`` is the training prompts' mean (centring)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )
        self.text_mean: torch.Tensor
        self.register_buffer("text_mean", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) prepared embeddings -> (..., 2) normal/anomalous logits; callers do the normalising or centring."""
        return self.net(x)


class Rwda(WinClip, TrainableMethod):
    """RWDA: a classifier trained on text alone scores WinCLIP's image and window embeddings."""

    classifier: Classifier
    name = "rwda"
    config_cls = RwdaConfig
    config: RwdaConfig
    supports_few_shot = False
    requires_checkpoint = False  # trains itself on first use (seconds to minutes); zsad.runs caches it
    needs_training_data = False  # text only
    self_training = True
    full_precision = {"bf16": "measured: bf16 flipped an image decision beyond the fp32 noise floor, see RESULTS.md"}
    arch_fields = ("hidden", "modality_gap", "object_mode", "objects", *_GENERATOR_FIELDS, "generator_seed")

    @property
    def parts(self) -> nn.Module:
        """The text-trained classifier."""
        return self.classifier

    def build_parts(self, seed: int | None) -> None:
        """A fresh, untrained classifier (seeded on a forked RNG); forgets what the previous one was trained for."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            clf = Classifier(self.backbone.embed_dim, self.config.hidden)
        self.classifier = clf.to(self.backbone.device)
        self.trained_for = None  # (object,) once trained or loaded
        self.new_training = None

    def loaded(self, manifest: dict[str, Any]) -> None:
        """Remember the object the checkpoint was trained for (known mode), so ``setup`` does not retrain it."""
        objects = manifest.get("training", {}).get("generator", {}).get("objects", [None])
        self.trained_for = (objects[0] if self.config.object_mode == "known" else None,)

    def training_object(self, class_name: str | None) -> str | None:
        """The object a classifier for ``class_name`` is trained on: the name in known mode, else none."""
        return class_name if self.config.object_mode == "known" else None

    @classmethod
    def uses_class_name(cls, config: Any) -> bool:
        """Category-agnostic (object_mode=unknown, the default) never reads the class name."""
        return bool(config.object_mode == "known")

    # ------------------------------------------------------------------ text-only training
    def _embed(self, sentences: list[str], progress: bool, what: str) -> torch.Tensor:
        """Unit text embeddings, encoded in chunks (a progress bar: this is minutes of a CPU's time).

        Tens of thousands of one-off sentences: they bypass the shared text cache instead of flooding it.
        """
        out = []
        rep = reporter() if progress else SilentReporter()
        with rep.task(f"rwda: encoding {what} prompts", len(sentences), transient=True) as task:
            for i in range(0, len(sentences), _EMBED_CHUNK):
                part = sentences[i : i + _EMBED_CHUNK]
                out.append(self.backbone.encode_text(part, batch_size=512, cache=False).float())
                task.advance(len(part))
        return F.normalize(torch.cat(out), dim=-1)

    def _dataset(
        self, opts: RandomWordOptions, progress: bool = False, what: str = "training"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sentences, labels = random_word_prompts(opts)
        emb = self._embed(sentences, progress, what)
        return emb, torch.tensor(labels, device=emb.device)

    def _prepare(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return F.normalize(x - mean, dim=-1) if self.config.modality_gap == "center" else F.normalize(x, dim=-1)

    def classifier_training(self, class_name: str | None, *, progress: bool = False, report: bool = False) -> Training:
        """Generate and encode the prompts, start a seeded classifier: the ``Training`` of the text-only classifier.

        Its ``record`` measures the held-out accuracy (prompts never seen) and returns the training record; with
        ``report`` it also says the one summary line. Nothing to resume: text-only training is cheap and seeded.
        """
        import time

        t0 = time.perf_counter()
        cfg = self.config
        opts = cfg.generator(class_name)
        emb, labels = self._dataset(opts, progress)
        held = dataclasses.replace(opts, seed=opts.seed + 1, n_pairs=max(1, min(2000, opts.n_pairs // 5)))
        h_emb, h_labels = self._dataset(held, progress, "held-out")
        self.build_parts(seed=cfg.train_seed)  # a forked RNG: the caller's global RNG is left as it was
        clf = self.classifier
        if cfg.modality_gap == "center":
            clf.text_mean.copy_(emb.mean(0))
        x = self._prepare(emb, clf.text_mean)

        def step(module: nn.Module, batch: list[int]) -> torch.Tensor:
            idx = torch.tensor(batch, device=x.device)
            return F.cross_entropy(module(x[idx]), labels[idx])

        train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.train_seed)

        def record(result: TrainResult) -> dict[str, Any]:
            clf.eval()
            with torch.no_grad():
                acc = float((clf(self._prepare(h_emb, clf.text_mean)).argmax(-1) == h_labels).float().mean())
            self.trained_for = (class_name,)
            done = {
                "data": "text only: random-word prompts (no images)",
                "generator": dataclasses.asdict(opts),
                "num_sentences": len(x),
                "heldout_sentences": len(h_emb),
                "heldout_accuracy": acc,
                "train_config": dataclasses.asdict(train_cfg),
                "history": result.history,
                "seconds": time.perf_counter() - t0,
            }
            if report:
                _report(done)
            return done

        data = list(range(len(x)))
        return Training(clf, data, step, train_cfg, "rwda (text only)", resumable=False, record=record)

    def train_classifier(
        self, class_name: str | None, *, progress: bool = False, epoch_lines: bool | None = None
    ) -> dict[str, Any]:
        """Train the classifier in memory now (``setup``'s on-the-fly training); returns the training record.

        ``epoch_lines`` (default: ``progress``) prints the per-epoch losses; on-the-fly training inside
        ``detect`` shows only the encoding bars and one summary line.
        """
        from zsad.train import fit

        t = self.classifier_training(class_name, progress=progress)
        lines = progress if epoch_lines is None else epoch_lines
        result = fit(t.module, t.data, t.step, t.cfg, progress=lines, description=t.description)
        assert t.record is not None
        return t.record(result)

    def default_train_config(self) -> TrainConfig:
        """The training fields of the config, so ``zsad train`` and on-the-fly training use the same recipe."""
        cfg = self.config
        return TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.train_seed)

    def fit(
        self, datasets: Sequence[tuple[str, Any]], train_cfg: TrainConfig, *, class_names: dict[str, str] | None = None
    ) -> Training:
        """``zsad train --method rwda``: text only; the recipe overrides become the config's training fields."""
        self.config = dataclasses.replace(
            self.config,
            epochs=train_cfg.epochs,
            batch_size=train_cfg.batch_size,
            lr=train_cfg.lr,
            train_seed=train_cfg.seed,
        )
        class_name = (class_names or {}).get("*") if self.config.object_mode == "known" else None
        if self.config.object_mode == "known" and not class_name:
            raise ZsadInputError("rwda: object_mode=known trains one classifier per object: pass --class-name")
        return self.classifier_training(class_name, progress=True, report=True)

    def describe(self) -> dict[str, Any]:
        """Adds a summary of how the classifier was trained (held-out accuracy, sentences, seconds, data)."""
        d = super().describe()
        t = (self.training_manifest or {}).get("training", {})
        d["rwda_classifier"] = {k: t.get(k) for k in ("heldout_accuracy", "num_sentences", "seconds", "data")}
        return d

    def cache_key(self, obj: str | None) -> str:
        """Digest of what decides the classifier: backbone weights, generator, classifier and training settings."""
        bb = self.backbone.manifest()
        fields: tuple[str, ...] = (*_GENERATOR_FIELDS, "generator_seed", "object_mode", "prompt_set", "hidden")
        fields = (*fields, "modality_gap")
        if self.config.objects:  # absent when empty, so caches made before the option existed stay valid
            fields = (*fields, "objects")
        key = {
            "backbone": {k: bb.get(k) for k in ("model_name", "pretrained", "weights", "seed", "random_init")},
            "config": {k: getattr(self.config, k) for k in (*fields, "epochs", "batch_size", "lr", "train_seed")},
            "class": obj if self.config.object_mode == "known" else None,
            "format": 1,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]

    # ------------------------------------------------------------------ inference
    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        """Text features as WinCLIP; a classifier for this object, trained here in memory if there is none yet.

        Training writes nothing: ``zsad.runs`` looks in its cache before and stores ``new_training`` after.
        """
        super()._setup(class_name, None)  # "object" unless known (Method.setup never passes the given name)
        want = self.training_object(class_name)
        if self.trained_for == (want,):
            return
        if self.config.checkpoint:
            was = self.trained_for[0] if self.trained_for else None
            raise ZsadInputError(
                f"{self.config.checkpoint}: rwda classifier trained for object {was!r}, not {class_name!r} "
                "(object_mode=known)"
            )
        reporter().message(f"rwda: training the text-only classifier ({self.config.n_pairs} prompt pairs)")
        with torch.enable_grad():
            record = self.train_classifier(want, progress=True, epoch_lines=False)
        _report(record)
        self.new_training = record
        self.training_manifest = {"method": self.name, "config": self.checkpoint_config(), "training": record}

    def _zero_shot_prob(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Classifier probability of (B, D) global or (B, W, D) window embeddings (mean with CLIP's for rwda+clip)."""
        assert self.classifier is not None
        mean = self.classifier.text_mean
        if self.config.modality_gap == "center":
            mean = self._image_mean if embeddings.ndim == 2 else self._image_mean[:, None]
        p = self.classifier(self._prepare(embeddings.float(), mean)).softmax(-1)[..., 1]
        if self.config.combine == "rwda+clip":
            p = (p + class_scores(embeddings, self.text, self.config.temperature)) / 2
        return p

    def _encode(self, images: torch.Tensor, final_tokens: bool) -> tuple[torch.Tensor, Any, list[torch.Tensor]]:
        emb, fin, wins = super()._encode(images, final_tokens)
        if self.config.modality_gap == "center":  # per image: the mean of its own global and window embeddings
            unit = [F.normalize(emb, dim=-1)[:, None], *(F.normalize(w, dim=-1) for w in wins)]
            self._image_mean = torch.cat(unit, 1).mean(1)  # (B, D)
        return emb, fin, wins
