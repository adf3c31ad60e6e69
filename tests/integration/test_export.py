"""``zsad export``: the graph equals the torch path on real images, the manifest says what it holds, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from outputs_check import NO_TORCH, NO_TORCH_CLI
from typer.testing import CliRunner

from zsad.cli.main import app
from zsad.tiling import resize_bilinear

pytest.importorskip("onnxruntime", reason="pip install 'zsad[export]'")
TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


def _run(*args: str) -> object:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _csv_rows(folder: Path) -> dict[str, dict[str, str]]:
    """predictions.csv rows by image path."""
    import csv

    with (folder / "predictions.csv").open() as f:
        return {r["image_path"]: r for r in csv.DictReader(f)}


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
    # each weight tensor is stored once, though WinCLIP runs the blocks twice (full pass and windows)
    import hashlib

    import onnx
    from onnx import numpy_helper

    big = [numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer]
    digests = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in big if a.size >= 1024]
    assert len(digests) == len(set(digests))
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
    # OpenVINO (CPU, fp32) runs the same graph to the same numbers
    ov = pytest.importorskip("openvino")
    res = ov.Core().compile_model(str(out / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())
    assert np.abs(res[0] - want.pred_score.numpy()).max() <= 1e-4
    assert np.abs(res[1] - want.anomaly_map.numpy()).max() <= 1e-4


def test_export_refusals(tmp_path: Path) -> None:
    for method, words in (("musc", "set-level"), ("adaclip", "k-means"), ("dual-image", "set-level")):
        res = _run("export", "--method", method, "--out", str(tmp_path / method), *TINY)
        assert res.exit_code == 2 and words in res.output, res.output
    res = _run("export", "--method", "sdp", "-o", "transductive_minmax=true", "--out", str(tmp_path / "t"), *TINY)
    assert res.exit_code == 2 and "transductive" in res.output
    res = _run("export", "--method", "sdp", "--format", "tflite", "--out", str(tmp_path / "f"), *TINY)
    assert res.exit_code == 2 and "--format 'tflite'" in res.output


def test_export_reads_the_refusal_from_the_method_class() -> None:
    """The reason is the class's ``export_refusal``; export keeps no list of names."""
    from zsad.errors import ZsadInputError
    from zsad.export import check_exportable, refused
    from zsad.methods import get_method_class

    assert set(refused()) == {"adaclip", "dual-image", "musc"}
    assert refused()["musc"] == get_method_class("musc").export_refusal
    check_exportable(get_method_class("sdp"))  # exportable: no error

    class Refused(get_method_class("sdp")):
        export_refusal = "a reason only this class gives"

    with pytest.raises(ZsadInputError, match="method sdp cannot be exported yet: a reason only this class gives"):
        check_exportable(Refused)


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
    script = (
        NO_TORCH
        + f"""
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
    )
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
    import subprocess
    import sys

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in sorted((assets_dir / "magnetic_tile").glob("*/Imgs/*.jpg"))[::70][:5]:
        (imgs / f.name).symlink_to(f)
    res = _run("export", "--method", "sdp", "--class-name", "tile", "--out", str(tmp_path / "model"), *TINY)
    assert res.exit_code == 0, res.output
    ref = _run("detect", str(imgs), "--method", "sdp", "--class-name", "tile", "--out", str(tmp_path / "ref"),
               "--no-overlays", *TINY)  # fmt: skip
    assert ref.exit_code == 0, ref.output
    args = ["detect", str(imgs), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "rt"), "--batch-size", "2"]
    done = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 images scored" in done.stdout

    want, got = _csv_rows(tmp_path / "ref"), _csv_rows(tmp_path / "rt")
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
    np.testing.assert_allclose(resize_bilinear(m, (13, 5)), want_t[0, 0].numpy(), atol=1e-6)
    # a rerun resumes: nothing left to score
    again = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming: 5 of 5" in again.stdout, again.stdout + again.stderr
    # the rest of the command line needs torch: help says what works here, a command says what to install
    for help_args in (["--help"], []):
        shown = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *help_args], capture_output=True, text=True)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "zsad detect PATHS... --model DIR" in shown.stdout, shown.stdout
    other = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, "eval"], capture_output=True, text=True)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
    assert other.stdout.startswith("error: zsad eval needs the full install") and len(other.stdout.splitlines()) == 1


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


def test_openvino_ir_export_runs_without_torch(tmp_path: Path, assets_dir: Path) -> None:
    """``--format openvino`` writes IR whose both files are hash-checked; it runs torch-free as torch scores."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("openvino")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in sorted((assets_dir / "magnetic_tile").glob("*/Imgs/*.jpg"))[::70][:4]:
        (imgs / f.name).symlink_to(f)
    out = tmp_path / "model"
    res = _run("export", "--method", "winclip", "--class-name", "tile", "--format", "openvino", "--out", str(out),
               *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "openvino" and man["model_file"] == "model.xml" and man["weights_file"] == "model.bin"
    assert sorted(p.name for p in out.iterdir()) == [".zsad-folder.json", "manifest.json", "model.bin", "model.xml"]
    assert man["parity"]["pred_score_max_abs"] <= 1e-4 and man["parity"]["anomaly_map_max_abs"] <= 1e-4
    ref = _run("detect", str(imgs), "--method", "winclip", "--class-name", "tile", "--out", str(tmp_path / "ref"),
               "--no-overlays", *TINY)  # fmt: skip
    assert ref.exit_code == 0, ref.output
    shutil.copytree(out, tmp_path / "tampered")
    with (tmp_path / "tampered" / "model.bin").open("ab") as f:
        f.write(b"\0")

    def detect(model: Path, dest: str, *extra: str) -> subprocess.CompletedProcess[str]:
        args = ["detect", str(imgs), "--model", str(model), "--out", str(tmp_path / dest), *extra]
        return subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True, timeout=300)

    done = detect(out, "rt")
    assert done.returncode == 0 and "4 images scored" in done.stdout, done.stdout + done.stderr
    bad = detect(tmp_path / "tampered", "bad")
    assert bad.returncode == 2 and "model.bin: sha256 differs" in bad.stdout, bad.stdout
    wrong = detect(out, "wrong", "--runtime", "onnxruntime")
    assert wrong.returncode == 2 and "runs on OpenVINO only" in wrong.stdout, wrong.stdout
    want, got = _csv_rows(tmp_path / "ref"), _csv_rows(tmp_path / "rt")
    assert set(want) == set(got)
    for k, w in want.items():
        assert abs(float(got[k]["pred_score"]) - float(w["pred_score"])) <= 1e-4
        a = np.load(tmp_path / "rt" / got[k]["anomaly_map_path"])
        assert np.abs(a - np.load(tmp_path / "ref" / w["anomaly_map_path"])).max() <= 1e-4
    assert json.loads((tmp_path / "rt" / "manifest.json").read_text())["runtime"] == "openvino"


def test_fp16_export_and_bf16_torch_path(tmp_path: Path, assets_dir: Path) -> None:
    """fp16 graphs hold fp16 tower weights and match torch in fp16; bf16 runs on the torch path; refusals."""
    import onnx
    import onnxruntime as ort

    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method

    out = tmp_path / "fp16"
    res = _run("export", "--method", "sdp", "--class-name", "tile", "--precision", "fp16", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["precision"] == "fp16" and "layer norms" in man["precision_scope"]
    graph = onnx.load(str(out / "model.onnx")).graph
    halves = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    blocks = len(ClipBackbone.from_pretrained("zsad-tiny", "none", seed=0).model.visual.transformer.resblocks)
    assert len(halves) >= 4 * blocks  # qkv, out_proj, c_fc, c_proj weights of every image block (biases too)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in and out
    x = _real_batch(assets_dir)
    want = {}
    for precision in ("fp32", "fp16"):
        m = create_method("sdp", ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0))
        m.backbone.set_precision(precision)
        m.setup("tile")
        want[precision] = m.predict(x)
    score, amap = ort.InferenceSession(str(out / "model.onnx")).run(None, {"image": x.numpy()})
    assert np.abs(score - want["fp16"].pred_score.numpy()).max() <= 1e-3
    assert np.abs(amap - want["fp16"].anomaly_map.numpy()).max() <= 1e-3
    assert np.abs(score - want["fp32"].pred_score.numpy()).max() > 0  # it is another precision
    res = _run("export", "--method", "sdp", "--precision", "bf16", "--out", str(tmp_path / "b"), *TINY)
    assert res.exit_code == 2 and "--precision bf16: graphs are exported in fp32 or fp16" in res.output
    # bf16 on the torch path: recorded, keyed (an fp32 folder is not resumed in bf16), close to fp32
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in sorted((assets_dir / "magnetic_tile").glob("*/Imgs/*.jpg"))[::70][:3]:
        (imgs / f.name).symlink_to(f)
    for precision in ("fp32", "bf16"):
        r = _run("detect", str(imgs), "--method", "sdp", "--class-name", "tile", "--out", str(tmp_path / precision),
                 "--no-overlays", "--precision", precision, *TINY)  # fmt: skip
        assert r.exit_code == 0, r.output
    det = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert '"precision": "bf16"' in json.dumps(det)
    r = _run("detect", str(imgs), "--method", "sdp", "--class-name", "tile", "--out", str(tmp_path / "fp32"),
             "--no-overlays", "--precision", "bf16", *TINY)  # fmt: skip
    assert r.exit_code == 2 and "precision" in r.output
    r = _run("detect", str(imgs), "--method", "sdp", "--out", str(tmp_path / "x"), "--precision", "fp8", *TINY)
    assert r.exit_code == 2 and "--precision fp8: use one of fp32, bf16, fp16" in r.output
