"""``zsad benchmark`` on the real assets (random weights, tiny model: plumbing, never quality).

The data root holds MPDD (the asset's metal_plate in MPDD's published layout) and HeadCT as published; every other
dataset of the suite is missing and must be listed, not fatal. The table's numbers must be those of the per-dataset
evaluations; a killed run must resume to the same table; a checkpoint trained on MPDD is refused on MPDD only.
"""

from __future__ import annotations

import json
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from outputs_check import TINY, cli, subprocess_cli
from test_benchmark_data import mpdd_tree

# sdp with a small prompt set: the text tower was most of each tiny run (plumbing, the same code path)
FAST_SDP = ["-o", "prompt_set=adaclip", "-o", "text_aggregation=raw_mean"]


@pytest.fixture(scope="module")
def data_root(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    mpdd_tree(assets_dir, root / "MPDD")
    (root / "headct").symlink_to(assets_dir / "headct")
    return root


def test_benchmark_table_missing_and_resume(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = cli("benchmark", "--suite", "anomalyclip17", "--root", data_root, "--method", "sdp", "--batch-size", "64",
              "--out", out, *FAST_SDP, *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    table = json.loads((out / "table.json").read_text())
    assert set(table["found"]) == {"mpdd", "headct"} and "visa" in table["missing"] and "isic" in table["missing"]
    for name in ("mpdd", "headct"):  # the table holds each evaluation's own mean metrics
        own = json.loads((out / name / "sdp" / "metrics.json").read_text())["mean"]
        assert table["datasets"][name]["metrics"]["sdp"] == pytest.approx(own, nan_ok=True)
    assert "pixel_AUROC" in table["datasets"]["mpdd"]["metrics"]["sdp"]
    assert "pixel_AUROC" not in table["datasets"]["headct"]["metrics"]["sdp"]  # image labels only
    md = (out / "table.md").read_text()
    head_ct = next(line for line in md.splitlines() if line.startswith("| HeadCT |"))
    assert head_ct.split("|")[-3].strip() == "-"  # no pixel AUROC for an image-level set
    skipped = next(line for line in md.splitlines() if line.startswith("Not found under the data root (skipped):"))
    assert "visa" in skipped and "mpdd" not in skipped
    assert ET.parse(out / "table.svg").getroot().tag.endswith("svg")
    # a killed run resumes to the same numbers without scoring finished images again
    killed = tmp_path / "killed"
    args = ["benchmark", "--suite", "anomalyclip17", "--root", data_root, "--method", "sdp", "--batch-size", "8",
            "--out", killed, *FAST_SDP, *TINY]  # fmt: skip
    proc = subprocess_cli(*args, wait=False)
    deadline = time.time() + 240
    pred = killed / "mpdd" / "sdp" / "predictions.csv"
    while time.time() < deadline and (not pred.is_file() or len(pred.read_text().splitlines()) < 20):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "headct").exists() or not (killed / "headct" / "sdp" / "metrics.json").exists()
    done = subprocess_cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    again = json.loads((killed / "table.json").read_text())
    for name in ("mpdd", "headct"):
        assert again["datasets"][name]["metrics"]["sdp"] == pytest.approx(
            table["datasets"][name]["metrics"]["sdp"], abs=1e-6, nan_ok=True
        )


def test_leakage_guard_refuses_the_training_dataset_only(data_root: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    res = cli("train", "--method", "sdp+", "--dataset", "mpdd", "--root", data_root / "MPDD", "--epochs", "1",
              "--batch-size", "16", "--out", ck, *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    out = tmp_path / "bench"
    res = cli("benchmark", "--suite", "industrial", "--root", data_root, "--method", "sdp+", "--checkpoint", ck,
              "--dataset", "mpdd", "--out", out, *TINY)  # fmt: skip
    assert res.exit_code == 1, res.output
    table = json.loads((out / "table.json").read_text())
    assert "zero-shot" in table["datasets"]["mpdd"]["problems"]["sdp+"]
    assert "| MPDD | pixel | refused |" in (out / "table.md").read_text()
    res = cli("benchmark", "--suite", "industrial", "--root", data_root, "--dataset", "isic", "--out", out, *TINY)
    assert res.exit_code == 2 and "--dataset 'isic': not in suite industrial" in res.output
