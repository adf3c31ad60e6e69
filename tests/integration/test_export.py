"""``zsad export``: the graph equals the torch path on real images, the manifest says what it holds, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsad.cli.main import app

pytest.importorskip("onnxruntime", reason="pip install 'zsad[export]'")
TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


def _run(*args: str) -> object:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _real_batch(assets_dir: Path, n: int = 3) -> torch.Tensor:
    from zsad.data import load_image, squash_image

    files = sorted((assets_dir / "magnetic_tile").glob("*/Imgs/*.jpg"))[::50][:n]
    return torch.stack([squash_image(load_image(f), 96) for f in files])


@pytest.mark.parametrize(
    ("method", "extra"),
    [("sdp", []), ("winclip", []), ("winclip", ["--reference-dir", "REFS", "--k-shot", "2"])],
    ids=["sdp", "winclip", "winclip-2shot"],
)
def test_export_equals_torch_on_real_images(method: str, extra: list[str], tmp_path: Path, assets_dir: Path) -> None:
    import onnxruntime as ort

    from zsad.backbone import ClipBackbone
    from zsad.data import ImageList
    from zsad.methods import create_method

    refs = sorted((assets_dir / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))[:4]
    (tmp_path / "refs").mkdir()
    for f in refs:
        (tmp_path / "refs" / f.name).symlink_to(f)
    extra = [str(tmp_path / "refs") if a == "REFS" else a for a in extra]
    out = tmp_path / "model"
    res = _run("export", "--method", method, "--class-name", "tile", "--out", str(out), *extra, *TINY)
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["method"] == method and man["preprocess"]["image_size"] == 96 and man["backbone"]["random_init"]
    assert man["parity"]["pred_score_max_abs"] <= 1e-4 and man["parity"]["anomaly_map_max_abs"] <= 1e-4
    # independently: the torch method set up the same way, on real images, against onnxruntime
    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method(method, bb)
    if extra:
        order = torch.randperm(4, generator=torch.Generator().manual_seed(0)).tolist()
        ds = ImageList([tmp_path / "refs" / f.name for f in refs], image_size=96)
        images = [ds[i]["image"] for i in order]
        m.setup("tile", torch.stack(images[:2]))
        assert man["k_shot"] == 2 and len(man["references"]) == 2 and man["threshold"]["source"] == "normal_quantile"
    else:
        m.setup("tile")
        assert man["threshold"]["value"] is None
    x = _real_batch(assets_dir)
    want = m.predict(x)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    score, amap = sess.run(None, {"image": x.numpy()})
    assert np.abs(score - want.pred_score.numpy()).max() <= 1e-4
    assert np.abs(amap - want.anomaly_map.numpy()).max() <= 1e-4


def test_export_refusals(tmp_path: Path) -> None:
    for method, words in (("musc", "set-level"), ("adaclip", "k-means"), ("dual-image", "set-level")):
        res = _run("export", "--method", method, "--out", str(tmp_path / method), *TINY)
        assert res.exit_code == 2 and words in res.output, res.output
    res = _run("export", "--method", "sdp", "-o", "transductive_minmax=true", "--out", str(tmp_path / "t"), *TINY)
    assert res.exit_code == 2 and "transductive" in res.output
    res = _run("export", "--method", "sdp", "--format", "tflite", "--out", str(tmp_path / "f"), *TINY)
    assert res.exit_code == 2 and "--format 'tflite'" in res.output


@pytest.mark.parametrize("method", ["sdp+", "anomalyclip"])
def test_trained_methods_export_with_their_parts(method: str, tmp_path: Path, assets_dir: Path) -> None:
    """Trained parts (random here) through a real checkpoint become constants of the graph."""
    import onnxruntime as ort

    from zsad.backbone import ClipBackbone
    from zsad.export import export_method
    from zsad.methods import create_method

    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method(method, bb)
    m.build_parts(0)
    m = create_method(method, bb, checkpoint=str(m.save(tmp_path / "ck", {"note": "test"})))
    m.setup("tile")
    res = export_method(m, tmp_path / "model")
    assert res.manifest["options"]["checkpoint"] == str(tmp_path / "ck")
    x = _real_batch(assets_dir)
    want = m.predict(x)
    score, amap = ort.InferenceSession(str(tmp_path / "model" / "model.onnx")).run(None, {"image": x.numpy()})
    assert np.abs(score - want.pred_score.numpy()).max() <= 1e-4
    assert np.abs(amap - want.anomaly_map.numpy()).max() <= 1e-4


def test_runtime_without_torch_equals_torch_and_refuses_bad_models(tmp_path: Path, assets_dir: Path) -> None:
    """``zsad.runtime`` in a process where torch cannot be imported gives the torch path's scores and maps."""
    import shutil
    import subprocess
    import sys

    from zsad.backbone import ClipBackbone
    from zsad.data import load_image, squash_image
    from zsad.export import export_method
    from zsad.methods import create_method

    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method("sdp", bb)
    m.setup("tile")
    export_method(m, tmp_path / "model", threshold={"value": 0.5, "source": "manual"})
    files = sorted((assets_dir / "magnetic_tile").glob("*/Imgs/*.jpg"))[::60][:4]
    want = m.predict(torch.stack([squash_image(load_image(f), 96) for f in files]))
    np.save(tmp_path / "want_score.npy", want.pred_score.numpy())
    np.save(tmp_path / "want_map.npy", want.anomaly_map.numpy())
    script = f"""
import sys, importlib.abc
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is hidden in this test")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from zsad.runtime import ExportedModel
from zsad.errors import ZsadInputError
m = ExportedModel({str(tmp_path / "model")!r})
out = m.predict({[str(f) for f in files]!r}, batch_size=3)
assert "torch" not in sys.modules
print(np.abs(out.pred_score - np.load({str(tmp_path / "want_score.npy")!r})).max())
print(np.abs(out.anomaly_map - np.load({str(tmp_path / "want_map.npy")!r})).max())
print(m.threshold)
for bad in {[str(tmp_path / b) for b in ("nomanifest", "tampered", "size")]!r}:
    try:
        ExportedModel(bad)
    except ZsadInputError as e:
        print("refused:", e)
"""
    (tmp_path / "nomanifest").mkdir()
    shutil.copy(tmp_path / "model" / "model.onnx", tmp_path / "nomanifest" / "model.onnx")
    shutil.copytree(tmp_path / "model", tmp_path / "tampered")
    with (tmp_path / "tampered" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    shutil.copytree(tmp_path / "model", tmp_path / "size")
    man = json.loads((tmp_path / "size" / "manifest.json").read_text())
    man["preprocess"]["image_size"] = 128
    (tmp_path / "size" / "manifest.json").write_text(json.dumps(man))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert float(lines[0]) <= 1e-4 and float(lines[1]) <= 1e-4 and float(lines[2]) == 0.5
    refused = [ln for ln in lines if ln.startswith("refused:")]
    assert len(refused) == 3
    assert "manifest.json: missing" in refused[0]
    assert "sha256 differs" in refused[1]
    assert "input is [96, 96] pixels but" in refused[2] and "says 128" in refused[2]


def test_detect_model_without_torch_matches_torch_detect(tmp_path: Path, assets_dir: Path) -> None:
    """``zsad detect --model`` in a process where torch cannot be imported: the torch path's rows and maps."""
    import csv
    import subprocess
    import sys

    import zsad.cli.runtime_detect as rd

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in sorted((assets_dir / "magnetic_tile").glob("*/Imgs/*.jpg"))[::70][:5]:
        (imgs / f.name).symlink_to(f)
    res = _run("export", "--method", "sdp", "--class-name", "tile", "--out", str(tmp_path / "model"), *TINY)
    assert res.exit_code == 0, res.output
    ref = _run("detect", str(imgs), "--method", "sdp", "--class-name", "tile", "--out", str(tmp_path / "ref"),
               "--no-overlays", *TINY)  # fmt: skip
    assert ref.exit_code == 0, ref.output
    hide = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is hidden in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from zsad.cli.entry import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["detect", str(imgs), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "rt"), "--batch-size", "2"]
    done = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 images scored" in done.stdout

    def rows(folder: Path) -> dict[str, dict[str, str]]:
        with (folder / "predictions.csv").open() as f:
            return {r["image_path"]: r for r in csv.DictReader(f)}

    want, got = rows(tmp_path / "ref"), rows(tmp_path / "rt")
    assert set(want) == set(got)
    for k, w in want.items():
        g = got[k]
        assert abs(float(g["pred_score"]) - float(w["pred_score"])) <= 1e-4
        assert g["image_size"] == w["image_size"] and g["map_size"] == w["map_size"]
        assert g["pred_label"] == w["pred_label"] and g["threshold_source"] == w["threshold_source"] == "robust_outlier"
        a, b = np.load(tmp_path / "rt" / g["anomaly_map_path"]), np.load(tmp_path / "ref" / w["anomaly_map_path"])
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4
    # the numpy resize is torch's bilinear (align_corners=False), also when enlarging and shrinking unevenly
    m = np.random.default_rng(0).random((7, 9)).astype(np.float32)
    want_t = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(13, 5), mode="bilinear")
    np.testing.assert_allclose(rd.resize_bilinear(m, (13, 5)), want_t[0, 0].numpy(), atol=1e-6)
    # a rerun resumes: nothing left to score
    again = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming: 5 of 5" in again.stdout, again.stdout + again.stderr


def test_rwda_exports_with_its_trained_classifier(tmp_path: Path, assets_dir: Path) -> None:
    """RWDA trains its text classifier on setup (few pairs here): the classifier becomes part of the graph."""
    import onnxruntime as ort

    from zsad.backbone import ClipBackbone
    from zsad.export import export_method
    from zsad.methods import create_method

    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method("rwda", bb, n_pairs=200)
    m.setup("tile")
    res = export_method(m, tmp_path / "model")
    assert res.manifest["method"] == "rwda" and res.parity["pred_score_max_abs"] <= 1e-4
    x = _real_batch(assets_dir)
    want = m.predict(x)
    score, amap = ort.InferenceSession(str(tmp_path / "model" / "model.onnx")).run(None, {"image": x.numpy()})
    assert np.abs(score - want.pred_score.numpy()).max() <= 1e-4
    assert np.abs(amap - want.anomaly_map.numpy()).max() <= 1e-4
