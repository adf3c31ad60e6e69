"""The one training loop of zsad: small trainable modules on a frozen CLIP, seeded, resumable bit for bit.

Every method hands ``fit`` its module, its data and a ``step`` that returns the loss; the loop owns the
optimiser, the RNG, progress output and the per-epoch resume state, so all methods train and resume the same way.

Determinism: the caller seeds its own module init; ``fit`` seeds the optimisation. Shuffling uses a generator
seeded ``seed * 1000 + epoch``; randomness inside ``step`` (dropout, noise) draws from torch's global RNG, which
``fit`` seeds with ``seed`` on a fresh run, saves after every epoch and restores on resume. The caller's own
global RNG state is left as it was (CPU, and CUDA when already initialised).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsad.errors import ZsadInputError
from zsad.progress import SilentReporter, reporter

STATE_FILE = "train_state.pt"

StepOutput = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class TrainConfig:
    """Optimisation settings; everything but ``epochs`` must match to resume an earlier run."""

    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"  # "adam" | "adamw" | "sgd" (plain SGD, no momentum)
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw only
    grad_clip: float | None = None  # max global L2 norm of the gradients, None = no clipping
    seed: int = 42


@dataclass
class TrainResult:
    """What ``fit`` did; ``history`` also holds the epochs a resumed run had done before."""

    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: epoch, loss, extra terms, seconds
    epochs_run: int = 0  # epochs executed in this call (0 if it resumed a finished run)
    resumed_from: int = 0  # last epoch already done before this call (0 = fresh)


def _nothing() -> None:
    return None


@dataclass
class Training:
    """What a method's ``fit`` hands the run layer: what to train and how, never where or for whom.

    ``zsad.runs.train`` runs it through ``fit``: it lists ``images`` in the checkpoint folder, keeps the loop's
    resume state there (when ``resumable``), reports progress, and writes the manifest's training section (the
    method's own ``record`` of the result, else the data record, the images and the loss history).
    """

    module: nn.Module  # the learnable parts
    data: Sequence[Any]  # the loop's items: indices into ``images``, or the method's own
    step: Callable[[nn.Module, Any], StepOutput]
    cfg: TrainConfig
    description: str  # the loop's name in progress lines
    images: list[tuple[str, Any, int]] = field(default_factory=list)  # (category, dataset, index); [] for text
    summary: str = ""  # what trains, said before the loop ("CLIP frozen, prompts only")
    resumable: bool = True  # False: cheap and seeded (text only), so run again rather than resumed
    record: Callable[[TrainResult], dict[str, Any]] | None = None
    close: Callable[[], None] = _nothing  # frees what ``step`` reads (a feature bank), however the run ends


def _plain(cfg: TrainConfig) -> dict[str, Any]:
    """The config as JSON types (tuples -> lists), so a saved one compares equal to a live one."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _check_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 0 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise ZsadInputError(
            f"train config: need epochs >= 0, batch_size >= 1, lr > 0 (got {cfg.epochs}, {cfg.batch_size}, {cfg.lr})"
        )
    if cfg.optimizer not in ("adam", "adamw", "sgd"):
        raise ZsadInputError(f"--optimizer {cfg.optimizer!r}: unknown; use adam, adamw or sgd")


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    b1, b2 = cfg.betas
    return cls(params, lr=cfg.lr, betas=(b1, b2), weight_decay=cfg.weight_decay)


def _cuda_live() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _fork_rng() -> Any:
    """A fork of torch's global RNG: CPU always, CUDA only when already initialised (forking would init it)."""
    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if _cuda_live() else [])


def _rng_state() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if _cuda_live() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _trainable_state(module: nn.Module, frozen: set[str]) -> dict[str, torch.Tensor]:
    """Trainable parameters and buffers (e.g. norm statistics); frozen weights are rebuilt by the caller."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k not in frozen}


def _batches(data: Any, batch_size: int, gen: torch.Generator) -> tuple[Iterable[Any], int | None]:
    """(batches, count or None) for one epoch: a shuffled list-of-items per batch, or the caller's own batches."""
    if callable(data):
        return data(gen), None
    n = len(data)
    order = torch.randperm(n, generator=gen).tolist()
    chunks = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return ([data[i] for i in chunk] for chunk in chunks), len(chunks)


def _terms(out: StepOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss to backpropagate, detached scalars to log) from a step's return value."""
    if isinstance(out, torch.Tensor):
        return out, {"loss": out.detach()}
    if "loss" not in out:
        raise ValueError(f"step returned a dict without 'loss' (keys: {sorted(out)})")
    logged = {k: (v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))) for k, v in out.items()}
    return out["loss"], logged


class _StateFile:
    """``train_state.pt``: everything needed to continue after the last finished epoch, replaced atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self, cfg: TrainConfig) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises many types
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ZsadInputError(f"{self.path}: unreadable training state ({first}); delete it to start over") from e
        if not isinstance(state, dict) or not {"module", "optimizer", "epoch", "rng", "config"} <= set(state):
            raise ZsadInputError(f"{self.path}: not a zsad training state; use another --out or delete it")
        saved = {k: v for k, v in state["config"].items() if k != "epochs"}
        now = {k: v for k, v in _plain(cfg).items() if k != "epochs"}
        diffs = [
            f"{k} {saved.get(k)!r} there vs {now.get(k)!r} now"
            for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)
        ]
        if diffs:
            raise ZsadInputError(
                f"{self.path}: an earlier run with different settings ({', '.join(diffs)}) is here; "
                "use another --out or delete it"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def fit(
    module: nn.Module,
    data: Sequence[Any] | Callable[[torch.Generator], Iterable[Any]],
    step: Callable[[nn.Module, Any], StepOutput],
    cfg: TrainConfig,
    *,
    state_dir: Path | None = None,
    progress: bool = True,
    description: str = "train",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the ``requires_grad`` parameters of ``module`` for ``cfg.epochs`` epochs (1-based numbering).

    ``data`` is a sequence of items (shuffled each epoch, each batch a list of up to ``batch_size`` items) or a
    callable ``data(generator) -> batches`` for callers that batch themselves. ``step(module, batch)`` returns the
    loss or ``{"loss": ..., **extra_terms}``; extra terms are averaged into the history. Nothing is moved between
    devices: ``step`` does that. With ``state_dir``, the state after every epoch goes to ``train_state.pt`` there
    and a later call with the same settings continues from it (more epochs continue training; the same number
    returns the stored history). ``on_epoch_end(epoch, row)`` runs on a forked RNG, so it cannot perturb training.
    """
    _check_config(cfg)
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit: the module has no parameters with requires_grad")
    opt = _make_optimizer(params, cfg)
    store = _StateFile(state_dir) if state_dir is not None else None
    say = reporter().message if progress else (lambda text, level="info": None)
    history: list[dict[str, float]] = []
    done = 0
    with _fork_rng():
        state = store.load(cfg) if store is not None else None
        if state is None:
            torch.manual_seed(cfg.seed)
        else:
            assert store is not None
            result = module.load_state_dict(state["module"], strict=False)
            missing = [k for k in result.missing_keys if k not in frozen]
            if missing or result.unexpected_keys:
                raise ZsadInputError(
                    f"{store.path}: training state does not fit this module (missing {missing[:3]}, unexpected "
                    f"{result.unexpected_keys[:3]}); use another --out or delete it"
                )
            opt.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"])
            done, history = int(state["epoch"]), list(state["history"])
            if done >= cfg.epochs:
                say(f"{description}: {store.path} already holds {done} trained epochs; nothing to do")
        for epoch in range(done + 1, cfg.epochs + 1):
            row = _run_epoch(module, data, step, cfg, opt, params, epoch, progress, description)
            history.append(row)
            extras = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "loss", "seconds"))
            say(
                f"{description} epoch {epoch}/{cfg.epochs}: loss {row['loss']:.4f}"
                + (f", {extras}" if extras else "")
                + f" ({row['seconds']:.1f}s)"
            )
            if not math.isfinite(row["loss"]):
                raise ZsadInputError(
                    f"{description}: mean loss is {row['loss']} at epoch {epoch}; lower --lr or check the masks"
                )
            if on_epoch_end is not None:
                with _fork_rng():
                    on_epoch_end(epoch, dict(row))
            if store is not None:
                store.save(
                    {
                        "module": _trainable_state(module, frozen),
                        "optimizer": opt.state_dict(),
                        "epoch": epoch,
                        "history": history,
                        "rng": _rng_state(),
                        "config": _plain(cfg),
                    }
                )
    module.eval()
    return TrainResult(history=history, epochs_run=max(cfg.epochs - done, 0), resumed_from=done)


def _run_epoch(
    module: nn.Module,
    data: Any,
    step: Callable[[nn.Module, Any], StepOutput],
    cfg: TrainConfig,
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    epoch: int,
    progress: bool,
    description: str,
) -> dict[str, float]:
    """One pass over the data; returns the history row (means over batches, unweighted)."""
    module.train()  # every epoch: an on_epoch_end hook may have switched to eval()
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    batches, total = _batches(data, cfg.batch_size, gen)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    title = f"{description} epoch {epoch}/{cfg.epochs}"
    rep = reporter() if progress else SilentReporter()
    with rep.task(title, total, transient=True) as task:
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            loss, logged = _terms(step(module, batch))
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            for k, v in logged.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
                counts[k] = counts.get(k, 0) + 1
            if progress:  # reading the running mean syncs the device: only when someone watches
                mean = float(sums["loss"]) / counts["loss"]
                task.advance()
                task.update(description=f"{title} loss {mean:.4f}")
    if not counts:
        raise ValueError(f"{description}: epoch {epoch} produced no batches (empty training data)")
    row: dict[str, float] = {"epoch": epoch}
    row.update({k: float(sums[k]) / counts[k] for k in sums})
    row["seconds"] = time.perf_counter() - t0
    return row
