"""RWDA: random-word prompt generator, text-only classifier, category-agnostic scoring, cache, CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsad.backbone import ClipBackbone
from zsad.cli.main import app
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.prompts import get_prompt_set
from zsad.prompts.random_words import RandomWordOptions, random_word_prompts, vocabulary_words

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


def test_generator_is_seeded_and_pairs_differ_only_by_state() -> None:
    opts = RandomWordOptions(n_pairs=200, seed=3)
    s1, l1 = random_word_prompts(opts)
    s2, _ = random_word_prompts(opts)
    s3, _ = random_word_prompts(RandomWordOptions(n_pairs=200, seed=4))
    assert s1 == s2 and s1 != s3
    assert l1 == [0, 1] * 200 and len(s1) == 400
    ps = get_prompt_set("winclip")
    n_states, a_states = ps.normal_states, ps.anomalous_states
    same = 0
    for normal, anomalous in zip(s1[::2], s1[1::2], strict=True):
        a, b = set(normal.rstrip(".").split()), set(anomalous.rstrip(".").split())
        state_words = {w for s in (*n_states, *a_states) for w in s.format("").split()}
        same += (a - state_words) == (b - state_words)
    assert same == 200  # the two sentences of a pair share every word except the state words
    words = {w for s in s1 for w in s.rstrip(".").split()}
    vocab = set(vocabulary_words())
    assert len(words & vocab) > 50 and any(w not in vocab and re.fullmatch("[a-z]{3,10}", w) for w in words)


def test_vocabulary_is_clip_whole_words() -> None:
    v = vocabulary_words()
    assert len(v) > 20_000 and all(re.fullmatch("[a-z]{3,12}", w) for w in v[:1000])
    assert "bottle" in v and "screw" in v


def test_generator_options_are_checked() -> None:
    with pytest.raises(ZsadInputError, match="word_source"):
        RandomWordOptions(word_source="greek")
    with pytest.raises(ZsadInputError, match="min_words"):
        RandomWordOptions(min_words=3, max_words=1)
    known = RandomWordOptions(n_pairs=50, objects=("screw",), random_object_rate=0.0)
    assert all("screw" in s for s in random_word_prompts(known)[0])


@pytest.fixture(scope="module")
def b16() -> ClipBackbone:
    return ClipBackbone.from_pretrained("ViT-B-16-plus-240", "none", seed=0)


@pytest.mark.slow
def test_classifier_separates_heldout_prompts_on_random_b16(b16: ClipBackbone, tmp_path: Path) -> None:
    """Held-out prompts (another generator seed) are classified well above chance by the text-only classifier."""
    m = create_method("rwda", b16, n_pairs=400, epochs=10, cache_dir=str(tmp_path))
    record = m.train_classifier(None)
    assert record["heldout_sentences"] == 160 and record["num_sentences"] == 800
    print(f"held-out accuracy on random ViT-B-16-plus-240: {record['heldout_accuracy']:.3f}")
    assert record["heldout_accuracy"] > 0.75
    assert record["history"][-1]["loss"] < record["history"][0]["loss"]


class _Poison(str):
    """A class name that fails if anything reads it."""

    def _boom(self, *a: object, **k: object) -> str:
        raise AssertionError("the class name was read")

    __str__ = __format__ = replace = lower = split = strip = encode = __iter__ = __len__ = _boom  # type: ignore[assignment]


@pytest.fixture(scope="module")
def tiny() -> ClipBackbone:
    return ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)


def test_category_agnostic_mode_never_reads_the_class_name(tiny: ClipBackbone, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    from zsad.runs import prepare_method

    kw = {"n_pairs": 200, "epochs": 2, "cache_dir": str(tmp_path)}
    alone = create_method("rwda", tiny, **kw)
    alone.setup("bottle")  # a method trains in memory and writes nothing: caching is the run layer's
    assert list(tmp_path.iterdir()) == [] and alone.new_training is not None
    a = create_method("rwda", tiny, **kw)
    prepare_method(a, _Poison("screw"))
    b = create_method("rwda", tiny, **kw)
    prepare_method(b, "bottle")  # loaded from the cache a filled, not trained again
    record = a.training_manifest["training"]
    assert b.new_training is None and b.training_manifest["training"] == json.loads(json.dumps(record, default=str))
    torch.testing.assert_close(a.predict(x).anomaly_map, b.predict(x).anomaly_map)
    torch.testing.assert_close(a.predict(x).anomaly_map, alone.predict(x).anomaly_map)  # seeded: the same classifier
    assert len(list(tmp_path.iterdir())) == 1  # one cached classifier serves every class
    known = create_method("rwda", tiny, object_mode="known", **kw)
    prepare_method(known, "bottle")
    assert "bottle" in json.dumps(known.training_manifest["training"]["generator"]["objects"])
    assert len(list(tmp_path.iterdir())) == 2


def test_known_object_set_is_category_agnostic(tiny: ClipBackbone, tmp_path: Path) -> None:
    """objects=[...] (the paper's category-agnostic known-object setting): prompts name those products only, one
    classifier serves them all, and the test image's class name is still never read."""
    kw = {"n_pairs": 200, "epochs": 2, "cache_dir": str(tmp_path), "random_object_rate": 0.0}
    m = create_method("rwda", tiny, objects=["bottle", "screw"], **kw)
    m.setup(_Poison("cable"))
    gen = m.training_manifest["training"]["generator"]
    assert list(gen["objects"]) == ["bottle", "screw"]
    sentences, _ = random_word_prompts(m.config.generator(None))
    assert all("bottle" in t or "screw" in t for t in sentences)  # every prompt names one of the products
    assert create_method("rwda", tiny, **kw).cache_key(None) != m.cache_key(None)
    again = create_method("rwda", tiny, objects=("bottle", "screw"), **kw)  # JSON list or tuple: one cache
    assert again.cache_key(None) == m.cache_key(None)
    with pytest.raises(ZsadInputError, match="objects is for object_mode=unknown"):
        create_method("rwda", tiny, object_mode="known", objects=["bottle"])


def test_rwda_plus_clip_is_the_mean_of_both(tiny: ClipBackbone, tmp_path: Path) -> None:
    from zsad.methods.winclip import class_scores

    kw = {"n_pairs": 200, "epochs": 2, "cache_dir": str(tmp_path)}
    plain = create_method("rwda", tiny, **kw)
    plain.setup(None)
    both = create_method("rwda", tiny, combine="rwda+clip", **kw)
    both.setup(None)
    e = torch.randn(3, tiny.embed_dim, generator=torch.Generator().manual_seed(1))
    clip = class_scores(e, both.text, both.config.temperature)
    torch.testing.assert_close(both._zero_shot_prob(e), (plain._zero_shot_prob(e) + clip) / 2)


def test_cli_detect_without_class_name_trains_once_then_uses_the_cache(tmp_path: Path) -> None:
    from zsad.data import make_sample_images

    imgs = make_sample_images(tmp_path / "imgs", n_normal=2, n_anomalous=2, size=96, seed=0)
    opts = ["-o", "n_pairs=200", "-o", "epochs=2", "-o", f"cache_dir={tmp_path / 'cache'}"]
    args = ["detect", str(imgs / "good"), str(imgs / "defect"), "--method", "rwda", *opts, "--no-overlays", *TINY]
    first = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o1")], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "training the text-only classifier" in first.output
    second = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o2")], catch_exceptions=False)
    assert second.exit_code == 0 and "training the text-only classifier" not in second.output
    rows = [list(csv.DictReader((tmp_path / o / "predictions.csv").open())) for o in ("o1", "o2")]
    assert [r["pred_score"] for r in rows[0]] == [r["pred_score"] for r in rows[1]] and len(rows[0]) == 4


def _heldout_accuracy(ckpt: Path) -> float:
    """Accuracy of a saved RWDA classifier on its held-out prompts (the generator's next seed), recomputed here."""
    import torch.nn.functional as F
    from sklearn.metrics import accuracy_score

    manifest = json.loads((ckpt / "manifest.json").read_text())
    bb_info, training = manifest["backbone"], manifest["training"]
    bb = ClipBackbone.from_pretrained(
        bb_info["model_name"], bb_info["pretrained"], image_size=bb_info["image_size"], seed=bb_info["seed"]
    )
    m = create_method("rwda", bb, checkpoint=str(ckpt))
    assert m.config.modality_gap == "normalize"  # unit embeddings in, no centring
    gen = training["generator"]
    held = RandomWordOptions(**{**gen, "objects": tuple(gen["objects"]), "seed": gen["seed"] + 1, "n_pairs": 40})
    sentences, labels = random_word_prompts(held)
    assert len(sentences) == training["heldout_sentences"] == 80
    with torch.no_grad():
        emb = F.normalize(bb.encode_text(sentences, cache=False).float(), dim=-1)
        pred = m.classifier(emb).argmax(-1)
    return float(accuracy_score(labels, pred.cpu().numpy()))


def test_cli_train_rwda_text_only_and_refuses_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    opts = ["-o", "n_pairs=200"]
    res = CliRunner().invoke(
        app, ["train", "--method", "rwda", "--epochs", "2", "--out", str(out), *opts, *TINY], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "rwda" and manifest["training"]["num_sentences"] == 400
    assert manifest["training"]["train_config"]["epochs"] == 2
    # the recorded held-out accuracy equals scikit-learn's on the saved classifier's predictions of held-out prompts
    assert manifest["training"]["heldout_accuracy"] == pytest.approx(_heldout_accuracy(out), abs=1e-6)
    bad = CliRunner().invoke(
        app,
        ["train", "--method", "rwda", "--dataset", "folder", "--root", str(tmp_path), "--out", str(out), *TINY],
        catch_exceptions=False,
    )
    assert bad.exit_code == 2 and "text only" in bad.output
