"""zsad.train: losses against hand-computed numbers and slow loops, checkpoint refusals, bit-identical resume."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from zsad.errors import ZsadInputError
from zsad.train import TrainConfig, dice_loss, fit, focal_loss, load_checkpoint, save_checkpoint

# ---------------------------------------------------------------------------------------------------------- losses


def test_focal_loss_hand_computed() -> None:
    # one image, 2 pixels: p = (0.8, 0.2) with class 0, p = (0.4, 0.6) with class 1
    probs = torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])  # (1, 1, 2)
    # smooth = 0: pt = 0.8 and 0.6; (0.2^2 * -ln 0.8 + 0.4^2 * -ln 0.6) / 2 = (0.008925742 + 0.081732099) / 2
    got = focal_loss(probs, target, smooth=0.0)
    assert got.item() == pytest.approx(0.0453289205, abs=1e-9)
    # default smooth 1e-5: one-hot becomes (1-1e-5, 1e-5), so pt = 0.8*(1-1e-5) + 0.2e-5 + 1e-5 = 0.800004 and
    # pt = 0.4e-5 + 0.6*(1-1e-5) + 1e-5 = 0.600008
    ref = (0.199996**2 * -math.log(0.800004) + 0.399992**2 * -math.log(0.600008)) / 2
    assert focal_loss(probs, target).item() == pytest.approx(ref, abs=1e-12)
    # gamma = 0 is plain cross-entropy on the probabilities
    assert focal_loss(probs, target, gamma=0.0, smooth=0.0).item() == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 2, abs=1e-12
    )
    # float masks are accepted and give the same value
    assert focal_loss(probs, target.double(), smooth=0.0).item() == got.item()


def test_dice_loss_hand_computed() -> None:
    prob = torch.tensor([[[0.5, 1.0]], [[0.0, 0.0]]])  # (2, 1, 2)
    target = torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]])
    # image 1: (2*1 + 1) / (1.5 + 1 + 1) = 6/7; image 2 (empty, empty): 1/1 = 1; loss = 1 - (6/7 + 1)/2 = 1/14
    assert dice_loss(prob, target).item() == pytest.approx(1 / 14, abs=1e-7)
    assert dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-7)


def _focal_slow(probs: torch.Tensor, target: torch.Tensor, gamma: float, smooth: float) -> float:
    b, c, h, w = probs.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                cls = int(target[i, y, x])
                pt = smooth
                for k in range(c):
                    hot = 1.0 if k == cls else 0.0
                    hot = min(max(hot, smooth / (c - 1)), 1.0 - smooth)
                    pt += hot * float(probs[i, k, y, x])
                total += -((1.0 - pt) ** gamma) * math.log(pt)
    return total / (b * h * w)


def _dice_slow(prob: torch.Tensor, target: torch.Tensor, smooth: float) -> float:
    ds = []
    for p, t in zip(prob.tolist(), target.tolist(), strict=True):
        pf = [v for row in p for v in row]
        tf = [v for row in t for v in row]
        inter = sum(a * b for a, b in zip(pf, tf, strict=True))
        ds.append((2 * inter + smooth) / (sum(pf) + sum(tf) + smooth))
    return 1.0 - sum(ds) / len(ds)


@pytest.mark.parametrize(("c", "gamma", "smooth"), [(2, 2.0, 1e-5), (3, 2.0, 1e-5), (2, 1.5, 0.1), (4, 0.0, 1e-5)])
def test_focal_loss_matches_slow_loop(c: int, gamma: float, smooth: float) -> None:
    g = torch.Generator().manual_seed(c)
    probs = torch.randn(2, c, 5, 7, generator=g, dtype=torch.float64).softmax(1)
    target = torch.randint(0, c, (2, 5, 7), generator=g)
    got = focal_loss(probs, target, gamma=gamma, smooth=smooth).item()
    assert got == pytest.approx(_focal_slow(probs, target, gamma, smooth), abs=1e-6)


def test_dice_loss_matches_slow_loop() -> None:
    g = torch.Generator().manual_seed(1)
    prob = torch.rand(3, 6, 5, generator=g, dtype=torch.float64)
    target = (torch.rand(3, 6, 5, generator=g) > 0.7).double()
    for smooth in (1.0, 1e-3):
        assert dice_loss(prob, target, smooth).item() == pytest.approx(_dice_slow(prob, target, smooth), abs=1e-6)


def test_losses_have_finite_gradients() -> None:
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    target = torch.ones(2, 4, 4)
    q = torch.sigmoid(logits) * (torch.arange(4) > 0)  # (2, 1, 4, 4); first column exactly 0 with target 1
    probs = torch.cat([1 - q, q], 1)  # (2, 2, 4, 4)
    (focal_loss(probs, target) + dice_loss(probs[:, 1], target)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------ checkpoint

BB: dict[str, Any] = {
    "model_name": "ViT-B-16-plus-240",
    "pretrained": "laion400m_e31",
    "random_init": False,
    "weights": None,
    "image_size": 240,
    "pos_interpolation": "bicubic",
    "seed": None,
}
TENSORS = {"heads.0.weight": torch.arange(12.0).view(3, 4), "prompts": torch.randn(2, 5).bfloat16()}


def _save(tmp_path: Path, backbone: dict[str, Any] = BB) -> Path:
    return save_checkpoint(tmp_path / "ckpt", TENSORS, {"method": "sdp+", "backbone": backbone, "config": {"a": 1}})


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    out = _save(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [".zsad-folder.json", "manifest.json", "model.safetensors"]
    for where in (out, out / "model.safetensors", out / "manifest.json"):
        tensors, manifest = load_checkpoint(where, method="sdp+", backbone=BB)
        assert tensors.keys() == TENSORS.keys()
        for k, v in TENSORS.items():
            assert tensors[k].dtype == v.dtype and torch.equal(tensors[k], v)
    assert manifest["config"] == {"a": 1} and manifest["backbone"] == BB and manifest["format_version"] == 1
    assert manifest["size"] == (out / "model.safetensors").stat().st_size and len(manifest["sha256"]) == 64
    assert manifest["created"].endswith("+00:00")
    assert {"torch", "open_clip", "zsad", "python"} <= set(manifest["environment"])
    # another resolution is not a refusal; the caller sees the trained one in the manifest
    _, m = load_checkpoint(out, method="sdp+", backbone={**BB, "image_size": 336})
    assert m["backbone"]["image_size"] == 240


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_files_share_one_mode(tmp_path: Path, umask: int) -> None:
    """safetensors creates its file 0o600; every file of a checkpoint must get what ``open`` would give."""
    import os

    before = os.umask(umask)
    try:
        out = _save(tmp_path)
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == dict.fromkeys([".zsad-folder.json", "manifest.json", "model.safetensors"], 0o666 & ~umask)


def _refused(path: Path, backbone: dict[str, Any] = BB, method: str = "sdp+") -> str:
    with pytest.raises(ZsadInputError) as e:
        load_checkpoint(path, method=method, backbone=backbone)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_checkpoint_refuses_missing_and_broken_files(tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in _refused(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "model.safetensors" in _refused(tmp_path / "empty")
    out = _save(tmp_path)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[:-10])
    assert "manifest.json" in _refused(out) and "not valid JSON" in _refused(out)
    (out / "manifest.json").unlink()
    assert "manifest.json: missing" in _refused(out)


def test_checkpoint_detects_edited_tensors(tmp_path: Path) -> None:
    out = _save(tmp_path)
    model = out / "model.safetensors"
    raw = bytearray(model.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last tensor: same size, still loadable, different weights
    model.write_bytes(bytes(raw))
    msg = _refused(out)
    assert str(model) in msg and "sha256" in msg


def test_checkpoint_refuses_other_method_and_backbones(tmp_path: Path) -> None:
    out = _save(tmp_path)
    msg = _refused(out, method="adaclip")
    assert str(out) in msg and "'sdp+'" in msg and "--method sdp+" in msg
    msg = _refused(out, {**BB, "model_name": "ViT-L-14-336", "pretrained": "openai"})
    assert msg == (
        f"{out}: checkpoint was trained for backbone ViT-B-16-plus-240 (pretrained laion400m_e31) but the current "
        "backbone is ViT-L-14-336 (pretrained openai); pass --backbone ViT-B-16-plus-240 --pretrained laion400m_e31 "
        "or retrain"
    )
    assert "pretrained laion2b" in _refused(out, {**BB, "pretrained": "laion2b"})


def test_checkpoint_local_weights_compare_by_content(tmp_path: Path) -> None:
    w = {"path": "/a/clip.bin", "size": 10, "sha256": "ab" * 32}
    bb = {**BB, "pretrained": "/a/clip.bin", "weights": w}
    out = _save(tmp_path, bb)
    moved = {**bb, "pretrained": "/b/copy.bin", "weights": {**w, "path": "/b/copy.bin"}}
    load_checkpoint(out, method="sdp+", backbone=moved)  # same bytes elsewhere: fine
    msg = _refused(out, {**moved, "weights": {**w, "sha256": "cd" * 32}})
    assert "--weights" in msg and "ab" * 32 in msg
    assert "weights file" in _refused(out, BB)  # trained on a file, now a pretrained tag


def test_checkpoint_random_init_compares_seed(tmp_path: Path) -> None:
    bb = {**BB, "model_name": "zsad-tiny", "pretrained": "none", "random_init": True, "seed": 0}
    out = _save(tmp_path, bb)
    load_checkpoint(out, method="sdp+", backbone=bb)
    msg = _refused(out, {**bb, "seed": 1})
    assert "seed 0" in msg and "seed 1" in msg and "--pretrained none --seed 0" in msg


# ------------------------------------------------------------------------------------------------------------ loop


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()  # linearly separable
    return x, y


class Toy(nn.Module):
    """Dropout (global RNG) plus a frozen parameter that must never move."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 1))
        self.frozen = nn.Parameter(torch.randn(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) + 0 * self.frozen.sum()


def _step(module: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    x, y = (
        batch if isinstance(batch, tuple) else (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]))
    )
    x = x + 0.01 * torch.rand_like(x)  # randomness inside the step, on the global RNG
    bce = nn.functional.binary_cross_entropy_with_logits(module(x), y)
    return {"loss": bce, "bce": bce, "half": 0.5 * bce.detach()}


def _items() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data()
    return list(zip(x, y, strict=True))


def _callable_data() -> Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    x, y = _data()

    def batches(gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 16):
            idx = order[i : i + 16]
            yield x[idx], y[idx]

    return batches


CFG = TrainConfig(epochs=3, batch_size=8, lr=1e-2, seed=3)


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_loss_decreases_and_extra_terms_are_logged() -> None:
    m = Toy()
    frozen = m.frozen.detach().clone()
    cfg = dataclasses.replace(CFG, epochs=15, lr=3e-2, optimizer="adamw", weight_decay=0.1)
    res = fit(m, _items(), _step, cfg, progress=False)
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < 0.5 * losses[0]
    assert [r["epoch"] for r in res.history] == list(range(1, 16)) and res.epochs_run == 15 and res.resumed_from == 0
    row = res.history[0]
    assert set(row) == {"epoch", "loss", "bce", "half", "seconds"}
    assert row["bce"] == row["loss"] and row["half"] == pytest.approx(0.5 * row["loss"])
    assert torch.equal(m.frozen, frozen) and not m.training  # frozen untouched; eval() after fit


@pytest.mark.parametrize("mode", ["sequence", "callable"])
@pytest.mark.parametrize("interruption", ["fewer_epochs", "crash"])
def test_resume_is_bit_identical(tmp_path: Path, mode: str, interruption: str) -> None:
    data: Any = _items() if mode == "sequence" else _callable_data()
    straight = Toy()
    ref = fit(straight, data, _step, CFG, state_dir=tmp_path / "a", progress=False)
    plain = Toy()
    fit(plain, data, _step, CFG, progress=False)  # no state_dir: the same numbers
    assert all(torch.equal(v, _params(plain)[k]) for k, v in _params(straight).items())

    if interruption == "fewer_epochs":
        first = fit(Toy(), data, _step, dataclasses.replace(CFG, epochs=1), state_dir=tmp_path / "b", progress=False)
        assert first.epochs_run == 1
    else:
        calls = {"n": 0}

        def dying(module: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            calls["n"] += 1
            if calls["n"] == 6:  # in epoch 2 for both data modes (5 resp. 3 batches an epoch)
                raise KeyboardInterrupt
            return _step(module, batch)

        with pytest.raises(KeyboardInterrupt):
            fit(Toy(), data, dying, CFG, state_dir=tmp_path / "b", progress=False)
    resumed = Toy()
    torch.manual_seed(1234)  # the caller's global RNG must not matter
    res = fit(resumed, data, _step, CFG, state_dir=tmp_path / "b", progress=False)
    assert res.resumed_from == 1 and res.epochs_run == 2
    got = _params(resumed)
    assert all(torch.equal(v, got[k]) for k, v in _params(straight).items())
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in res.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in ref.history
    ]


def test_finished_run_does_nothing_and_more_epochs_continue(tmp_path: Path) -> None:
    trained = Toy()
    ref = fit(trained, _items(), _step, CFG, state_dir=tmp_path, progress=False)
    again = Toy()
    res = fit(again, _items(), _step, CFG, state_dir=tmp_path, progress=False)
    assert res.epochs_run == 0 and res.resumed_from == 3 and res.history == ref.history
    assert all(torch.equal(v, _params(again)[k]) for k, v in _params(trained).items())  # trained state loaded
    more = fit(Toy(), _items(), _step, dataclasses.replace(CFG, epochs=4), state_dir=tmp_path, progress=False)
    assert more.epochs_run == 1 and more.resumed_from == 3 and len(more.history) == 4


def test_changed_settings_refuse(tmp_path: Path) -> None:
    fit(Toy(), _items(), _step, dataclasses.replace(CFG, epochs=1), state_dir=tmp_path, progress=False)
    with pytest.raises(ZsadInputError) as e:
        fit(Toy(), _items(), _step, dataclasses.replace(CFG, lr=1e-3), state_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert str(tmp_path / "train_state.pt") in msg and "lr 0.01 there vs 0.001 now" in msg and "\n" not in msg
    (tmp_path / "train_state.pt").write_bytes(b"not a pickle")
    with pytest.raises(ZsadInputError, match="train_state.pt: unreadable"):
        fit(Toy(), _items(), _step, CFG, state_dir=tmp_path, progress=False)


def test_grad_clip_hook_and_rng_isolation() -> None:
    m = Toy()
    before = _params(m)
    rows: list[tuple[int, dict[str, float]]] = []
    rng = torch.get_rng_state()
    cfg = dataclasses.replace(CFG, epochs=2, optimizer="sgd", lr=1.0, grad_clip=1e-6)
    fit(m, _items(), _step, cfg, progress=False, on_epoch_end=lambda e, r: rows.append((e, r)))
    assert torch.equal(torch.get_rng_state(), rng)  # fit leaves the caller's RNG alone
    assert [e for e, _ in rows] == [1, 2] and "loss" in rows[0][1]
    moved = max((v - before[k]).abs().max().item() for k, v in _params(m).items())
    assert 0 < moved < 1.1e-5  # 10 SGD steps of lr 1, gradients clipped to norm 1e-6 (unclipped: ~0.1)


class _Recorder:
    """A reporter that keeps what it was told (tasks with their final counts, and messages)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.tasks: list[dict[str, Any]] = []

    def task(self, description: str, total: int | None = None, *, transient: bool = False) -> Any:
        rec = self
        entry = {"description": description, "total": total, "transient": transient, "completed": 0}

        class _T:
            def advance(self, n: int = 1) -> None:
                entry["completed"] += n

            def update(self, *, completed: int | None = None, description: str | None = None) -> None:
                if completed is not None:
                    entry["completed"] = completed
                if description is not None:
                    entry["description"] = description

            def __enter__(self) -> Any:
                rec.tasks.append(entry)
                return self

            def __exit__(self, *exc: object) -> None:
                pass

        return _T()

    def message(self, text: str, level: str = "info") -> None:
        self.messages.append((level, text))


def test_progress_goes_through_the_reporter(capsys: pytest.CaptureFixture[str]) -> None:
    """Silent by default (library use); a front end's reporter gets one transient task per epoch and a summary."""
    from zsad.progress import using

    fit(Toy(), _items(), _step, dataclasses.replace(CFG, epochs=2), description="toy")
    assert capsys.readouterr() == ("", "")
    rec = _Recorder()
    with using(rec):
        fit(Toy(), _items(), _step, dataclasses.replace(CFG, epochs=1), progress=False)
        assert rec.messages == [] and rec.tasks == []
        fit(Toy(), _items(), _step, dataclasses.replace(CFG, epochs=2), description="toy")
    assert capsys.readouterr() == ("", "")  # nothing printed below the CLI
    assert [t["transient"] for t in rec.tasks] == [True, True]
    n_batches = -(-len(_items()) // CFG.batch_size)
    assert [t["completed"] for t in rec.tasks] == [n_batches, n_batches] and rec.tasks[0]["total"] == n_batches
    lines = [text for _, text in rec.messages]
    assert (
        len(lines) == 2 and lines[0].startswith("toy epoch 1/2: loss ") and "bce " in lines[0] and "half " in lines[0]
    )


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ZsadInputError, match="optimizer"):
        fit(Toy(), _items(), _step, dataclasses.replace(CFG, optimizer="lion"), progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fit(Toy(), [], _step, CFG, progress=False)
    frozen = Toy().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        fit(frozen, _items(), _step, CFG, progress=False)


def test_state_file_is_json_free_of_surprises(tmp_path: Path) -> None:
    """The saved state loads with weights_only (no pickled code) and records the config as plain types."""
    fit(Toy(), _items(), _step, dataclasses.replace(CFG, epochs=1), state_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and "frozen" not in state["module"] and "net.0.weight" in state["module"]
    assert json.loads(json.dumps(state["config"]))["betas"] == [0.9, 0.999]
    assert not (tmp_path / "train_state.pt.tmp").exists()


def test_fit_says_what_to_train_and_writes_nothing(tmp_path: Path, tiny_backbone, monkeypatch) -> None:  # noqa: ANN001
    """A method's ``fit`` returns a ``Training``; the folder, image lists and manifest are ``zsad.runs.train``'s."""
    from zsad.data import make_sample_images
    from zsad.data.spec import DatasetSpec
    from zsad.methods import create_method, get_method_class
    from zsad.runs.train import list_training_data
    from zsad.train import Training

    root = make_sample_images(tmp_path / "data", n_normal=2, n_anomalous=3, size=96, seed=1)
    spec = DatasetSpec("folder", root, normal_dir="good", abnormal_dir="defect", mask_dir="ground_truth")
    listed = list_training_data(get_method_class("anomalyclip"), [spec])
    pairs = [(key, ds.with_preprocessing(tiny_backbone.preprocess)) for key, ds, _ in listed]
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    m = create_method("anomalyclip", tiny_backbone)
    t = m.fit(pairs, m.default_train_config())
    try:
        assert isinstance(t, Training) and t.resumable and t.record is None and t.module is m.parts
        assert len(t.images) == len(t.data) == 5 and t.summary == "CLIP frozen, prompts only"
        assert torch.isfinite(t.step(t.module, [0, 1])["loss"])
    finally:
        t.close()
    assert sorted(tmp_path.rglob("*")) == before
    rwda = create_method("rwda", tiny_backbone, n_pairs=50, epochs=1)
    t = rwda.fit([], rwda.default_train_config())
    assert not t.resumable and t.record is not None and t.images == [] and t.description == "rwda (text only)"
