"""`zsad train` + `zsad eval --checkpoint` end to end (tiny seeded backbone): checkpoints, resume, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsad.cli.main import app

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


def _run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _folder(root: Path) -> list[str]:
    return [
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--normal-dir",
        "good",
        "--abnormal-dir",
        "defect",
        "--mask-dir",
        "ground_truth",
        "--class-name",
        "tile",
    ]


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from zsad.data import make_sample_images

    a = make_sample_images(tmp_path_factory.mktemp("a"), n_normal=3, n_anomalous=5, size=96, seed=1)
    b = make_sample_images(tmp_path_factory.mktemp("b"), n_normal=4, n_anomalous=4, size=96, seed=2)
    return a, b


@pytest.fixture(scope="module")
def ckpt(two_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "sdp_plus"
    args = ["train", "--method", "sdp+", *_folder(two_sets[0]), "--epochs", "2", "--batch-size", "4"]
    res = _run(*args, "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_checkpoint_with_manifest(ckpt: Path, two_sets: tuple[Path, Path]) -> None:
    m = json.loads((ckpt / "manifest.json").read_text())
    assert m["method"] == "sdp+" and m["backbone"]["model_name"] == "zsad-tiny" and m["backbone"]["seed"] == 0
    t = m["training"]
    assert t["dataset"] == "folder" and t["num_images"] == 8 and t["train_config"]["epochs"] == 2
    assert t["train_config"]["seed"] == 42 and len(t["history"]) == 2
    assert all(k in m for k in ("sha256", "created")) and (ckpt / "model.safetensors").is_file()
    listed = (ckpt / "training_images.txt").read_text().split()
    assert len(listed) == 8 and all(str(two_sets[0].resolve()) in p for p in listed)


def test_train_resumes_and_extends(ckpt: Path, two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(ckpt, copy)
    args = ["train", "--method", "sdp+", *_folder(two_sets[0]), "--batch-size", "4", "--out", str(copy), *TINY]
    res = _run(*args, "--epochs", "3")
    assert res.exit_code == 0, res.output
    hist = json.loads((copy / "manifest.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    old = json.loads((ckpt / "manifest.json").read_text())["training"]["history"]
    assert hist[:2] == old  # the first two epochs were not redone
    res = _run(*args, "--epochs", "3", "--lr", "0.01")
    assert res.exit_code == 2 and "error:" in res.output


def test_eval_side_by_side_on_unseen_data(ckpt: Path, two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    methods = ["--method", "winclip", "--method", "sdp", "--method", "sdp+"]
    res = _run("eval", *_folder(two_sets[1]), *methods, "--checkpoint", str(ckpt), "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    table = (out / "comparison.md").read_text()
    for name in ("winclip", "sdp", "sdp+"):
        assert f"| {name} |" in table
    assert "RANDOM" in table
    data = json.loads((out / "comparison.json").read_text())
    sdp_plus = json.loads((out / "sdp_plus" / "metrics.json").read_text())
    assert data["sdp+"]["mean"]["image_AUROC"] == pytest.approx(sdp_plus["mean"]["image_AUROC"])
    with (out / "sdp" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    parts = json.loads(rows[0]["score_parts"])
    assert float(rows[0]["pred_score"]) == pytest.approx(parts["text_prob"] + parts["map_max"], abs=1e-6)


def test_eval_refuses_training_images_unless_allowed(ckpt: Path, two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    args = ["eval", *_folder(two_sets[0]), "--method", "sdp+", "--checkpoint", str(ckpt), *TINY]
    res = _run(*args, "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and "8 of 8 images were used to train" in res.output
    res = _run(*args, "--out", str(tmp_path / "y"), "--allow-seen")
    assert res.exit_code == 0, res.output
    assert "NOT zero-shot" in (tmp_path / "y" / "metrics.md").read_text()


def test_checkpoint_for_other_backbone_is_refused(ckpt: Path, two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    other = [*TINY[:-4], "--seed", "7", *TINY[-4:]]
    res = _run(
        "eval", *_folder(two_sets[1]), "--method", "sdp+", "--checkpoint", str(ckpt), "--out", str(tmp_path), *other
    )
    assert res.exit_code == 2 and "seed" in res.output and res.output.count("error:") == 1
    res = _run("eval", *_folder(two_sets[1]), "--method", "sdp+", "--out", str(tmp_path / "n"), *TINY)
    assert res.exit_code == 2 and "--checkpoint" in res.output


def test_transductive_option_is_flagged(two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "t"
    res = _run(
        "eval", *_folder(two_sets[1]), "--method", "sdp", "-o", "transductive_minmax=true", "--out", str(out), *TINY
    )
    assert res.exit_code == 0, res.output
    assert "TRANSDUCTIVE" in res.output and "TRANSDUCTIVE" in (out / "metrics.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["transductive"] is True
    with (out / "predictions.csv").open() as f:
        scores = [float(r["pred_score"]) for r in csv.DictReader(f)]
    assert min(scores) >= 0.0 and max(scores) <= 2.0 and max(scores) > 1.0


def test_detect_with_checkpoint_and_transductive(ckpt: Path, two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = ["detect", str(two_sets[1] / "good"), str(two_sets[1] / "defect"), "--class-name", "tile", *TINY]
    res = _run(*args, "--method", "sdp+", "--checkpoint", str(ckpt), "--out", str(out), "--no-overlays")
    assert res.exit_code == 0, res.output
    out2 = tmp_path / "t"
    res = _run(*args, "--method", "sdp", "-o", "transductive_minmax=true", "--out", str(out2), "--no-overlays")
    assert res.exit_code == 0 and "TRANSDUCTIVE" in res.output
    with (out2 / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    parts = [json.loads(r["score_parts"]) for r in rows]
    p0 = [p["text_prob"] for p in parts]
    p1 = [p["map_max"] for p in parts]
    for r, a, b in zip(rows, p0, p1, strict=True):
        expected = (a - min(p0)) / (max(p0) - min(p0)) + (b - min(p1)) / (max(p1) - min(p1))
        assert float(r["pred_score"]) == pytest.approx(expected, abs=1e-6)
    assert json.loads((out2 / "manifest.json").read_text())["transductive"] is True


def test_adaclip_trains_evaluates_and_guards_leakage(two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "ada"
    res = _run(
        "train",
        "--method",
        "adaclip",
        *_folder(two_sets[0]),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(ckpt),
        *TINY,
    )
    assert res.exit_code == 0, res.output
    m = json.loads((ckpt / "manifest.json").read_text())
    assert m["method"] == "adaclip" and m["training"]["train_config"]["optimizer"] == "adamw"
    assert m["training"]["train_config"]["seed"] == 111 and len(m["training"]["history"]) == 1
    ok = _run(
        "eval",
        *_folder(two_sets[1]),
        "--method",
        "adaclip",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "e"),
        *TINY,
    )
    assert ok.exit_code == 0, ok.output
    seen = _run(
        "eval",
        *_folder(two_sets[0]),
        "--method",
        "adaclip",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "s"),
        *TINY,
    )
    assert seen.exit_code == 2 and "were used to train" in seen.output
    # two trainable methods side by side: each --checkpoint goes to the method its manifest names
    sdp_ckpt = tmp_path / "sdp_plus"
    res = _run("train", "--method", "sdp+", *_folder(two_sets[0]), "--epochs", "1", "--out", str(sdp_ckpt), *TINY)
    assert res.exit_code == 0, res.output
    both = ["--method", "adaclip", "--method", "sdp+", "--checkpoint", str(sdp_ckpt), "--checkpoint", str(ckpt)]
    res = _run("eval", *_folder(two_sets[1]), *both, "--out", str(tmp_path / "both"), *TINY)
    assert res.exit_code == 0, res.output
    for name, folder, path in (("adaclip", "adaclip", ckpt), ("sdp+", "sdp_plus", sdp_ckpt)):
        used = json.loads((tmp_path / "both" / folder / "manifest.json").read_text())
        assert used["method"] == name and used["config"]["checkpoint"] == str(path)
        assert f"| {name} |" in (tmp_path / "both" / "comparison.md").read_text()
    twice = _run("eval", *_folder(two_sets[1]), *both[:4], "--checkpoint", str(ckpt), "--checkpoint", str(ckpt), *TINY)
    assert twice.exit_code == 2 and "two checkpoints for method adaclip" in twice.output
    pair = ["--method", "sdp+", "--method", "winclip", "--checkpoint", str(sdp_ckpt), "--checkpoint", str(ckpt)]
    stray = _run("eval", *_folder(two_sets[1]), *pair, *TINY)
    assert stray.exit_code == 2 and "trained for method 'adaclip', which is not among" in stray.output


def test_train_on_a_list_of_datasets(two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "both"
    a, b = two_sets
    folder_opts = _folder(a)[4:]  # the folder options shared by both roots
    res = _run(
        "train",
        "--method",
        "sdp+",
        "--dataset",
        "folder",
        "--root",
        str(a),
        "--dataset",
        "folder",
        "--root",
        str(b),
        *folder_opts,
        "--epochs",
        "1",
        "--out",
        str(out),
        *TINY,
    )
    assert res.exit_code == 0, res.output
    t = json.loads((out / "manifest.json").read_text())["training"]
    assert t["num_images"] == 16 and len(t["sources"]) == 2 and len(t["categories"]) == 2
    res = _run(
        "train",
        "--method",
        "sdp+",
        "--dataset",
        "folder",
        "--root",
        str(a),
        "--root",
        str(b),
        *folder_opts,
        "--out",
        str(tmp_path / "x"),
        *TINY,
    )
    assert res.exit_code == 2 and "pair them" in res.output


def _tiny_mvtec(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cat in ("bottle", "cable"):
        for split, kind, n in (("train", "good", 2), ("test", "good", 2), ("test", "broken", 2)):
            d = root / cat / split / kind
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
                if kind == "broken":
                    m = np.zeros((64, 64), np.uint8)
                    m[10:30, 10:30] = 255
                    (root / cat / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(m).save(root / cat / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


def test_benchmark_category_guard_survives_another_copy(tmp_path: Path) -> None:
    """Trained on MVTec bottle: another copy of MVTec (other paths) is still refused for bottle, fine for cable."""
    import shutil

    root = _tiny_mvtec(tmp_path / "mvtec")
    ckpt = tmp_path / "ck"
    res = _run(
        "train",
        "--method",
        "sdp+",
        "--dataset",
        "mvtec",
        "--root",
        str(root),
        "--category",
        "bottle",
        "--epochs",
        "1",
        "--out",
        str(ckpt),
        *TINY,
    )
    assert res.exit_code == 0, res.output
    copy = shutil.copytree(root, tmp_path / "mvtec_copy")
    args = ["eval", "--dataset", "mvtec", "--root", str(copy), "--method", "sdp+", "--checkpoint", str(ckpt), *TINY]
    res = _run(*args, "--category", "bottle", "--out", str(tmp_path / "e1"))
    assert res.exit_code == 2 and "trained on mvtec bottle" in res.output
    res = _run(*args, "--category", "cable", "--out", str(tmp_path / "e2"))
    assert res.exit_code == 0, res.output


def test_anomalyclip_trains_evaluates_imports_and_guards_leakage(two_sets: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    ckpt = tmp_path / "acl"
    args = ["train", "--method", "anomalyclip", *_folder(two_sets[0]), "--epochs", "2", "--batch-size", "4"]
    res = _run(*args, "--out", str(ckpt), *TINY)
    assert res.exit_code == 0, res.output
    m = json.loads((ckpt / "manifest.json").read_text())
    cfg = m["training"]["train_config"]
    assert m["method"] == "anomalyclip" and cfg["optimizer"] == "adam" and cfg["lr"] == 1e-3 and cfg["seed"] == 111
    assert cfg["betas"] == [0.5, 0.999] and len(m["training"]["history"]) == 2
    ok = _run("eval", *_folder(two_sets[1]), "--method", "anomalyclip", "--checkpoint", str(ckpt), "--out",
              str(tmp_path / "e"), *TINY)  # fmt: skip
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "anomalyclip" in json.dumps(metrics)
    seen = _run("eval", *_folder(two_sets[0]), "--method", "anomalyclip", "--checkpoint", str(ckpt), "--out",
                str(tmp_path / "s"), *TINY)  # fmt: skip
    assert seen.exit_code == 2 and "were used to train" in seen.output
    # the official layout through the CLI importer, and a file of another method refused in one line
    from safetensors.torch import load_file

    width = load_file(str(ckpt / "model.safetensors"))["ctx_normal"].shape[1]  # the tiny text width
    state = {"ctx_pos": torch.zeros(1, 1, 12, width), "ctx_neg": torch.ones(1, 1, 12, width) * 0.01}
    state |= {"compound_prompts_text.0": torch.zeros(4, width)}
    torch.save({"prompt_learner": state}, tmp_path / "epoch_15.pth")
    imp = _run("import-checkpoint", str(tmp_path / "epoch_15.pth"), "--method", "anomalyclip", "--out",
               str(tmp_path / "imp"), "--trained-on", "visa", *TINY)  # fmt: skip
    assert imp.exit_code == 0, imp.output
    assert json.loads((tmp_path / "imp" / "manifest.json").read_text())["config"]["deep_depth"] == 2
    torch.save({"clip_model.visual_prompter.static_prompts.0": torch.zeros(2)}, tmp_path / "ada.pth")
    bad = _run("import-checkpoint", str(tmp_path / "ada.pth"), "--method", "anomalyclip", "--out",
               str(tmp_path / "bad"), "--trained-on", "visa", *TINY)  # fmt: skip
    assert bad.exit_code == 2 and "not an official AnomalyCLIP file" in bad.output
