"""``zsad.runs`` from Python: the same files as the CLI without rich/typer installed, and the public API's promises.

Covers: detect/evaluate driven from Python on real Magnetic Tile images equal the CLI's predictions.csv and
metrics.json; open_clip model-config JSON files and folders as backbones (two configs with one file name); an
option that contradicts a checkpoint refused naming both values; ``predict_set`` equal to ``zsad eval``'s set-level
(transductive) scores; ``import_checkpoint`` reading safetensors.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from outputs_check import TINY, cli, one_line_error, rows

from zsad import ClipBackbone, create_method
from zsad.errors import ZsadInputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tile(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 defect-free and 6 cracked Magnetic Tile images (masks beside the images, as published)."""
    root = tmp_path_factory.mktemp("tile")
    for src, n in (("MT_Free", 6), ("MT_Crack", 6)):
        (root / src).mkdir()
        for jpg in sorted((assets_dir / "magnetic_tile" / src / "Imgs").glob("*.jpg"))[:n]:
            shutil.copy(jpg, root / src)
            shutil.copy(jpg.with_suffix(".png"), root / src)
    return root


def _table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.assets
def test_python_runs_equal_the_cli_without_rich(tile: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        for blocked in ("rich", "typer", "click"):  # as if not installed: any import of them fails
            sys.modules[blocked] = None
        from zsad import runs
        from zsad.runs import BackboneSpec, DatasetSpec

        bb = BackboneSpec("zsad-tiny", "none", image_size=96, device="cpu")
        res = runs.detect([{str(tile / "MT_Crack")!r}], {str(tmp_path / "py_detect")!r}, method="sdp",
                          backbone=bb, image_glob="*.jpg", class_name="magnetic tile")
        assert res.exit_code == 0 and res.num_images == 6
        data = DatasetSpec("folder", {str(tile)!r}, normal_dir="MT_Free", abnormal_dir="MT_Crack",
                           mask_dir="MT_Crack", image_glob="*.jpg", class_name="magnetic tile")
        out = runs.evaluate(data, {str(tmp_path / "py_eval")!r}, methods=["winclip", "sdp"],
                            options={{"sdp": {{"transductive_minmax": True}}}}, backbone=bb)
        assert set(out) == {{"winclip", "sdp"}}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("rich", "typer", "click") and sys.modules[m])
        assert not loaded, loaded
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    args = ["--image-glob", "*.jpg", "--class-name", "magnetic tile", *TINY]
    assert cli("detect", tile / "MT_Crack", "--out", tmp_path / "cli_detect", "--method", "sdp", *args).exit_code == 0
    data = ["--dataset", "folder", "--root", tile, "--normal-dir", "MT_Free", "--abnormal-dir", "MT_Crack"]
    res = cli(
        "eval", *data, "--mask-dir", "MT_Crack", "--method", "winclip", "--method", "sdp",
        "-o", "sdp:transductive_minmax=true", "--out", tmp_path / "cli_eval", *args,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _table(tmp_path / "py_detect" / "predictions.csv") == _table(tmp_path / "cli_detect" / "predictions.csv")
    for name in ("winclip", "sdp"):
        py, by_cli = tmp_path / "py_eval" / name, tmp_path / "cli_eval" / name
        assert _table(py / "predictions.csv") == _table(by_cli / "predictions.csv")
        assert json.loads((py / "metrics.json").read_text()) == json.loads((by_cli / "metrics.json").read_text())
    assert (tmp_path / "py_eval" / "comparison.md").read_text() == (tmp_path / "cli_eval" / "comparison.md").read_text()


@pytest.mark.assets
def test_predict_set_gives_evals_transductive_scores(tile: Path, tmp_path: Path) -> None:
    """A Python user scoring one set gets the numbers `zsad eval` reports (SDP's test-set min-max included)."""
    from zsad.data import Folder
    from zsad.runs import predict_set

    args = ["--image-glob", "*.jpg", "--class-name", "magnetic tile", "-o", "transductive_minmax=true", *TINY]
    data = ["--dataset", "folder", "--root", tile, "--normal-dir", "MT_Free", "--abnormal-dir", "MT_Crack"]
    assert cli("eval", *data, "--method", "sdp", "--out", tmp_path / "e", "--overlays", "0", *args).exit_code == 0
    want = {r["image_path"]: float(r["pred_score"]) for r in rows(tmp_path / "e")}
    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method("sdp", bb, transductive_minmax=True)
    m.setup("magnetic tile")
    ds = Folder(tile, normal_dir="MT_Free", abnormal_dir="MT_Crack", image_glob="*.jpg", **bb.preprocess.kwargs())
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    pred = predict_set(m, images, batch_size=5)
    got = dict(zip([str(s.image_path) for s in ds.samples], pred.pred_score.tolist(), strict=True))
    assert got.keys() == want.keys()
    # equal up to predictions.csv's 8 significant digits, which the min-max over a small range amplifies
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5)
    plain = m.predict(images).pred_score  # the per-image scores differ: the min-max is over the set
    assert not torch.allclose(plain, pred.pred_score)


def test_model_config_files_and_folders(tmp_path: Path) -> None:
    """A config JSON or a folder with config + weights is a backbone; two configs called model.json do not collide."""
    src = REPO / "src" / "zsad" / "backbone" / "configs" / "zsad-tiny.json"
    cfg = json.loads(src.read_text())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "model.json").write_text(json.dumps(cfg))
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "width": 32}
    (tmp_path / "b" / "model.json").write_text(json.dumps(cfg))
    a = ClipBackbone.from_pretrained(str(tmp_path / "a" / "model.json"), "none", image_size=96, seed=3)
    b = ClipBackbone.from_pretrained(str(tmp_path / "b"), "none", image_size=96, seed=3)
    assert (a.width, b.width) == (64, 32) and a.model_name != b.model_name
    assert a.manifest()["model_config"]["path"] == str((tmp_path / "a" / "model.json").resolve())
    # a folder with its weights: the same numbers as the model those weights came from
    tiny = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=7)
    folder = tmp_path / "finetuned"
    folder.mkdir()
    shutil.copy(src, folder / "open_clip_config.json")
    torch.save(tiny.model.state_dict(), folder / "weights.pt")
    loaded = ClipBackbone.from_pretrained(str(folder), "none", image_size=96)
    assert loaded.weights_info is not None and not loaded.random_init
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.encode_image(x).embedding, tiny.encode_image(x).embedding)
    # the CLI takes the same through --model-config, and refuses a broken one in one line
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        arr = np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        from PIL import Image

        Image.fromarray(arr).save(imgs / f"{i}.png")
    res = cli("detect", imgs, "--out", tmp_path / "out", "--model-config", folder, "--image-size", "96")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["backbone"]["model_config"]["path"] == str((folder / "open_clip_config.json").resolve())
    (tmp_path / "bad.json").write_text('{"embed_dim": 8}')
    one_line_error(cli("detect", imgs, "--out", tmp_path / "o2", "--model-config", tmp_path / "bad.json"), "bad.json")


def test_an_option_a_checkpoint_fixes_is_refused_naming_both(tmp_path: Path) -> None:
    from zsad.methods.adaclip import AdaClip

    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method("adaclip", bb, text_placeholders=False)
    m.save(tmp_path / "ck", {"dataset": "test"})
    assert isinstance(m, AdaClip)
    loaded = create_method("adaclip", bb, checkpoint=str(tmp_path / "ck"))  # no option: adopted
    assert loaded.config.text_placeholders is False
    with pytest.raises(ZsadInputError, match=r"text_placeholders=False.*text_placeholders=True") as e:
        create_method("adaclip", bb, checkpoint=str(tmp_path / "ck"), text_placeholders=True)
    assert "\n" not in str(e.value)
    same = create_method("adaclip", bb, checkpoint=str(tmp_path / "ck"), text_placeholders=False)  # agreeing: fine
    assert same.config.text_placeholders is False
