"""The field's benchmark datasets by name, each read in the layout its owners publish (and the common re-packs).

Why one registry instead of a class per dataset: every benchmark reduces to the same thing, per category a list
of test ``Sample`` rows (image, label, mask or none) and the normal images few-shot methods may use as references.
What differs is only how a root is laid out, so each dataset is a reader function plus its facts (domain, label
type, licence, owners' page) that ``zsad benchmark`` and ``docs/datasets.md`` show.

Rules shared by every reader:
- masks are paired with images by file name, never by sorted position (a missing file would shift every pair);
  an anomalous image of a pixel-labelled set without its mask is a one-line error naming both;
- image-level datasets (BrainMRI, HeadCT, Br35H, ELPV) have no masks, so no pixel metrics are computed;
- sets whose test images are all anomalous (ISIC and the polyp sets) have no image AUROC (one class): only
  pixel metrics are reported for them, as the papers do;
- every reader also accepts the AdaCLIP/AnomalyCLIP re-pack ``<root>/<class>/{train,test}/<type>`` +
  ``ground_truth/<type>`` with ``good`` normal (the "generic" layout).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsad.data.datasets import AnomalyDataset, Sample, Visa
from zsad.data.files import MaskIndex, list_images
from zsad.data.io import load_mask
from zsad.errors import ZsadInputError

# Suffixes masks carry after the image stem across the benchmarks (MVTec _mask, DAGM _label, ISIC _Segmentation,
# KSDD2 _GT, none for BTAD/MVTec 3D/polyp packs).
MASK_SUFFIXES = ("_mask", "", "_label", "_Segmentation", "_GT", "_gt", "_segmentation")
# ELPV publishes defect probabilities 0, 1/3, 2/3, 1: a cell is defective from this value on (2/3 and 1).
ELPV_DEFECT_PROBABILITY = 0.5


@dataclass
class Layout:
    """What a root holds: test samples and normal references per category, the layout's name, notes."""

    name: str
    test: dict[str, list[Sample]]
    references: dict[str, list[Sample]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Reader = Callable[[Path, Sequence[str]], Layout]


@dataclass(frozen=True)
class BenchmarkInfo:
    """A dataset's facts: what ``zsad benchmark`` prints and the docs list."""

    name: str
    title: str
    domain: str  # industrial | medical
    labels: str  # pixel | image
    licence: str
    url: str
    folders: tuple[str, ...]  # names its root usually has under a DATA_ROOT (first match wins)
    reader: Reader


# ------------------------------------------------------------------------------------------------ helpers
def _dirs(folder: Path) -> list[Path]:
    return (
        sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        if folder.is_dir()
        else []
    )


def _images(folder: Path) -> list[Path]:
    return list_images(folder) if folder.is_dir() else []


def _need_mask(image: Path, mask: Path | None, where: Path) -> Path:
    if mask is None:
        raise ZsadInputError(f"{image}: anomalous image without a mask in {where} (masks are paired by file name)")
    return mask


def _filter(cats: list[str], wanted: Sequence[str], root: Path, what: str) -> list[str]:
    if not wanted:
        return cats
    missing = [c for c in wanted if c not in cats]
    if missing:
        raise ZsadInputError(f"{root}: no {what} category {missing[0]!r} (available: {', '.join(cats) or 'none'})")
    return list(wanted)


def mvtec_style(
    root: Path,
    wanted: Sequence[str],
    what: str,
    *,
    normal: Sequence[str] = ("good",),
    pixel: bool = True,
    layout: str = "mvtec-style",
) -> Layout:
    """``<cat>/{train,test}/<type>/*`` + ``<cat>/ground_truth/<type>/<stem>[suffix].*``; ``normal`` types are good.

    The one reader of this layout (MVTec AD, VisA re-organised, MPDD, BTAD, DTD-Synthetic, the re-packs). An
    anomalous image without its mask stops the listing with one line naming the image and the mask folder: every
    pixel-labelled set of this layout ships a mask for each anomalous image, so a missing one is a broken copy,
    and scoring on would silently drop or mis-score it. ``pixel=False`` (image-level sets re-packed this way) reads
    no masks. References are the ``normal`` images of ``train/``.
    """
    cats = _filter([c.name for c in _dirs(root) if (c / "test").is_dir()], wanted, root, what)
    if not cats:
        raise ZsadInputError(f"{root}: no {what} category folders with a test/ folder found")
    test: dict[str, list[Sample]] = {}
    refs: dict[str, list[Sample]] = {}
    for cat in cats:
        base = root / cat
        rows = []
        for tdir in _dirs(base / "test"):
            good = tdir.name in normal
            masks = MaskIndex(base / "ground_truth" / tdir.name, MASK_SUFFIXES)
            for img in _images(tdir):
                mask = None if good or not pixel else _need_mask(img, masks.find(img), masks.folder)
                rows.append(Sample(img, 0 if good else 1, mask, cat, "test", "good" if good else tdir.name))
        test[cat] = rows
        refs[cat] = [Sample(p, 0, None, cat, "train", "good") for n in normal for p in _images(base / "train" / n)]
    return Layout(layout, test, refs)


def _descend(root: Path, names: Sequence[str]) -> Path:
    """The first of ``root/<name>`` that exists (archives often add one folder level), else ``root``."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root


def _generic_or(root: Path, wanted: Sequence[str], what: str, pixel: bool, why: str) -> Layout:
    """The AdaCLIP/AnomalyCLIP re-pack, or a one-line error saying which published layout was expected."""
    if any((c / "test").is_dir() for c in _dirs(root)):
        return mvtec_style(root, wanted, what, pixel=pixel, layout="generic (re-packed <class>/test/<type>)")
    raise ZsadInputError(f"{root}: not a {what} root ({why})")


def _single(root: Path, wanted: Sequence[str], cat: str, what: str) -> None:
    if wanted and list(wanted) != [cat]:
        raise ZsadInputError(f"{root}: {what} has one category, {cat!r} (asked for {', '.join(wanted)})")


# ------------------------------------------------------------------------------------------------ readers
def read_mvtec(root: Path, wanted: Sequence[str]) -> Layout:
    """MVTec AD as published: the one MVTec-layout reader (``mvtec_style``), so a missing mask is the same error."""
    return mvtec_style(root, wanted, "MVTec AD", layout="mvtec")


def read_visa(root: Path, wanted: Sequence[str]) -> Layout:
    """VisA from ``split_csv/1cls.csv`` (as published), or the ``visa_pytorch`` MVTec-style reorganisation."""
    if (root / "split_csv" / "1cls.csv").is_file():
        cats = list(wanted) or Visa.list_categories(root)
        test = {c: Visa(root, c, "test").samples for c in cats}
        trained = {r["object"] for _, r in Visa._rows(Visa._csv_path(root)) if r["split"] == "train"}
        refs = {c: Visa(root, c, "train").samples if c in trained else [] for c in cats}
        return Layout("split_csv/1cls.csv", test, refs)
    base = _descend(root, ("visa_pytorch", "VisA_pytorch/1cls", "1cls"))
    return mvtec_style(base, wanted, "VisA", layout="visa_pytorch (MVTec-style, ground_truth/bad)")


def _mvtec_like(what: str) -> Reader:
    def read(root: Path, wanted: Sequence[str]) -> Layout:
        return mvtec_style(root, wanted, what)

    read.__doc__ = f"{what}: MVTec AD's layout (masks by file name, with or without a suffix)."
    return read


def read_btad(root: Path, wanted: Sequence[str]) -> Layout:
    """BTAD: ``BTech_Dataset_transformed/<01|02|03>/{train,test}/{ok,ko}``, masks ``ground_truth/ko/<stem>.png|bmp``."""
    base = _descend(root, ("BTech_Dataset_transformed",))
    return mvtec_style(base, wanted, "BTAD", normal=("ok", "good"), layout="BTech_Dataset_transformed (ok/ko)")


def read_ksdd2(root: Path, wanted: Sequence[str]) -> Layout:
    """KolektorSDD2: ``{train,test}/<id>.png`` + ``<id>_GT.png``; an image is defective iff its mask is not empty."""
    base = _descend(root, ("KolektorSDD2", "KSDD2", "ksdd2"))
    if not list(base.glob("test/*_GT.png")):
        return _generic_or(base, wanted, "KolektorSDD2", True, "expected test/<id>.png with test/<id>_GT.png")
    _single(root, wanted, "ksdd2", "KolektorSDD2")

    def split(name: str, normal_only: bool) -> list[Sample]:
        rows = []
        for img in _images(base / name):
            if img.stem.endswith("_GT"):
                continue
            gt = img.with_name(f"{img.stem}_GT.png")
            if not gt.is_file():
                raise ZsadInputError(f"{img}: no ground-truth file {gt.name} beside it (KolektorSDD2 has one each)")
            bad = bool(np.asarray(load_mask(gt)).any())
            if not (normal_only and bad):
                rows.append(Sample(img, int(bad), gt, "ksdd2", name, "defect" if bad else "good"))
        return rows

    return Layout("KolektorSDD2 (train/test with _GT masks)", {"ksdd2": split("test", False)},
                  {"ksdd2": split("train", True)})  # fmt: skip


def read_dagm(root: Path, wanted: Sequence[str]) -> Layout:
    """DAGM 2007: ``ClassN/{Train,Test}/*.PNG`` + ``Label/<stem>_label.PNG`` for the defective ones (weak ellipses)."""
    classes = [c for c in _dirs(root) if re.fullmatch(r"Class\d+", c.name)]
    if not classes:
        return _generic_or(root, wanted, "DAGM 2007", True, "expected Class1..Class10 with Train/ and Test/")
    cats = _filter(sorted((c.name for c in classes), key=lambda n: int(n[5:])), wanted, root, "DAGM 2007")
    test: dict[str, list[Sample]] = {}
    refs: dict[str, list[Sample]] = {}
    for cat in cats:
        base = _descend(root / cat, (cat,))  # Kaggle extracts nest ClassN/ClassN
        if not (base / "Test").is_dir():
            return _generic_or(root, wanted, "DAGM 2007", True, f"{base / 'Test'} not found")

        def rows(split: str, cat: str = cat, base: Path = base) -> list[Sample]:
            masks = MaskIndex(base / split / "Label", ("_label",))
            out = []
            for img in _images(base / split):
                mask = masks.find(img)
                out.append(Sample(img, int(mask is not None), mask, cat, split.lower(), "defect" if mask else "good"))
            return out

        test[cat] = rows("Test")
        refs[cat] = [s for s in rows("Train") if s.label == 0] if (base / "Train").is_dir() else []
    weak = "DAGM masks are weak labels (ellipses around the defect): pixel metrics are indicative only"
    return Layout("ClassN/{Train,Test} with Label/", test, refs, [weak])


def read_mvtec3d(root: Path, wanted: Sequence[str]) -> Layout:
    """MVTec 3D-AD, RGB only: ``<cat>/test/<type>/rgb/<n>.png`` with ``gt/<n>.png``; depth (``xyz``) is ignored."""
    cats = _filter([c.name for c in _dirs(root) if list((c / "test").glob("*/rgb"))], wanted, root, "MVTec 3D-AD")
    if not cats:
        raise ZsadInputError(f"{root}: not an MVTec 3D-AD root (expected <category>/test/<type>/rgb/)")
    test, refs = {}, {}
    for cat in cats:
        rows = []
        for tdir in _dirs(root / cat / "test"):
            good = tdir.name == "good"
            for img in _images(tdir / "rgb"):
                gt = tdir / "gt" / img.name
                mask = None if good else _need_mask(img, gt if gt.is_file() else None, tdir / "gt")
                rows.append(Sample(img, 0 if good else 1, mask, cat, "test", tdir.name))
        test[cat] = rows
        refs[cat] = [Sample(p, 0, None, cat, "train", "good") for p in _images(root / cat / "train" / "good" / "rgb")]
    return Layout("<cat>/test/<type>/rgb + gt", test, refs)


def read_mvtec_loco(root: Path, wanted: Sequence[str]) -> Layout:
    """MVTec LOCO AD: masks are folders ``ground_truth/<type>/<stem>/*.png`` (their union is the defect)."""
    cats = _filter([c.name for c in _dirs(root) if (c / "test").is_dir()], wanted, root, "MVTec LOCO AD")
    if not cats:
        raise ZsadInputError(f"{root}: not an MVTec LOCO AD root (expected <category>/test/)")
    test, refs = {}, {}
    for cat in cats:
        rows = []
        for tdir in _dirs(root / cat / "test"):
            good = tdir.name == "good"
            for img in _images(tdir):
                folder = root / cat / "ground_truth" / tdir.name / img.stem
                mask = None if good else _need_mask(img, folder if _images(folder) else None, folder.parent)
                rows.append(Sample(img, 0 if good else 1, mask, cat, "test", tdir.name))
        test[cat] = rows
        refs[cat] = [Sample(p, 0, None, cat, "train", "good") for p in _images(root / cat / "train" / "good")]
    logical = "logical anomalies are included; their masks mark regions, so pixel AUROC means less there"
    return Layout("<cat>/test + ground_truth/<type>/<stem>/ (mask folders)", test, refs, [logical])


def _yes_no(base: Path, cat: str) -> Layout:
    rows = [Sample(p, 1, None, cat, "test", "yes") for p in _images(base / "yes")]
    rows += [Sample(p, 0, None, cat, "test", "no") for p in _images(base / "no")]
    return Layout(f"{base.name}/yes + no (image labels)", {cat: sorted(rows, key=lambda s: str(s.image_path))})


def read_brainmri(root: Path, wanted: Sequence[str]) -> Layout:
    """Brain MRI (Kaggle): ``brain_tumor_dataset/{yes,no}`` (or the duplicate top-level copy, never both)."""
    base = _descend(root, ("brain_tumor_dataset",))
    if (base / "yes").is_dir() and (base / "no").is_dir():
        _single(root, wanted, "brain", "BrainMRI")
        return _yes_no(base, "brain")
    return _generic_or(root, wanted, "BrainMRI", False, "expected brain_tumor_dataset/yes and no")


def read_br35h(root: Path, wanted: Sequence[str]) -> Layout:
    """Br35H: ``yes/`` and ``no/`` only (the unlabelled ``pred/`` and any other folder are ignored)."""
    if (root / "yes").is_dir() and (root / "no").is_dir():
        _single(root, wanted, "brain", "Br35H")
        return _yes_no(root, "brain")
    return _generic_or(root, wanted, "Br35H", False, "expected yes/ and no/")


def read_headct(root: Path, wanted: Sequence[str]) -> Layout:
    """Head CT: ``labels.csv`` (id, hemorrhage) + ``head_ct/<id:03d>.png`` (the folder may be nested once)."""
    if not (root / "labels.csv").is_file():
        return _generic_or(root, wanted, "HeadCT", False, "expected labels.csv beside head_ct/")
    _single(root, wanted, "brain", "HeadCT")
    folder = _descend(root / "head_ct", ("head_ct",))
    rows = []
    with (root / "labels.csv").open(newline="", encoding="utf-8-sig") as f:
        for line, rec in enumerate(csv.reader(f), start=1):
            if line == 1 or not any(v.strip() for v in rec):
                continue
            try:
                ident, label = int(rec[0]), int(rec[1])
            except (ValueError, IndexError):
                raise ZsadInputError(
                    f"{root / 'labels.csv'}: line {line}: expected 'id, hemorrhage' integers"
                ) from None
            img = next((folder / f"{ident:03d}{e}" for e in (".png", ".jpg") if (folder / f"{ident:03d}{e}").is_file()),
                       folder / f"{ident:03d}.png")  # fmt: skip
            rows.append(Sample(img, label, None, "brain", "test", "hemorrhage" if label else "good"))
    return Layout("labels.csv + head_ct/", {"brain": rows})


def _paired(images: Path, masks: Path, cat: str, suffixes: Sequence[str] = MASK_SUFFIXES) -> list[Sample]:
    """Every image anomalous, its mask by file name in ``masks`` (the polyp and lesion sets)."""
    index = MaskIndex(masks, suffixes)
    return [Sample(p, 1, _need_mask(p, index.find(p), masks), cat, "test", "lesion") for p in _images(images)]


def read_isic(root: Path, wanted: Sequence[str]) -> Layout:
    """ISIC 2016 Part 1: ``*_Part1_Test_Data/ISIC_n.jpg`` + ``*_Part1_Test_GroundTruth/ISIC_n_Segmentation.png``."""
    for base in (root, root / "skin"):
        data = sorted(base.glob("*Part1_Test_Data")) or sorted(base.glob("*Part1_Training_Data"))
        if data:
            gt = data[0].with_name(data[0].name.replace("_Data", "_GroundTruth"))
            _single(root, wanted, "skin", "ISIC")
            return Layout(f"{data[0].name} + {gt.name}", {"skin": _paired(data[0], gt, "skin", ("_Segmentation",))})
    return _generic_or(root, wanted, "ISIC 2016", True, "expected ISBI2016_ISIC_Part1_Test_Data/ and _GroundTruth/")


def _pack(name: str, cat: str, owners: Callable[[Path], Layout | None] | None = None) -> Reader:
    """A polyp/lesion set: the owners' layout (``owners``), the ``images/`` + ``masks/`` pack, or the re-pack."""

    def read(root: Path, wanted: Sequence[str]) -> Layout:
        got = owners(root) if owners else None
        if got is None and (root / "images").is_dir() and (root / "masks").is_dir():
            got = Layout("images/ + masks/", {cat: _paired(root / "images", root / "masks", cat)})
        if got is None:
            return _generic_or(root, wanted, name, True, "expected images/ and masks/")
        _single(root, wanted, cat, name)
        n = len(got.test[cat])
        got.notes.append(f"{name}: {n} images, all anomalous: image AUROC is undefined, pixel metrics only")
        return got

    read.__doc__ = f"{name}: every image anomalous, masks paired by file name."
    return read


def _clinicdb_owners(root: Path) -> Layout | None:
    if (root / "Original").is_dir() and (root / "Ground Truth").is_dir():
        return Layout(
            "Original/ + Ground Truth/", {"colon": _paired(root / "Original", root / "Ground Truth", "colon")}
        )
    return None


def _endo_owners(root: Path) -> Layout | None:
    if not (root / "masks").is_dir() or (root / "images").is_dir():
        return None
    others = [d for d in _dirs(root) if d.name != "masks"]
    if len(others) != 1:
        return None
    return Layout(f"{others[0].name}/ + masks/", {"colon": _paired(others[0], root / "masks", "colon")})


def elpv_root() -> Path | None:
    """The data folder of the installed ``elpv-dataset`` package (``pip install elpv-dataset``), if any."""
    import importlib.util

    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if (folder / "labels.csv").is_file() else None


def read_elpv(root: Path, wanted: Sequence[str]) -> Layout:
    """ELPV: ``labels.csv`` rows ``images/cellNNNN.png <probability> <mono|poly>``; categories are the cell types."""
    path = root / "labels.csv"
    if not path.is_file():
        raise ZsadInputError(f"{root}: not an ELPV root (expected labels.csv; pip install elpv-dataset provides one)")
    test: dict[str, list[Sample]] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = text.split()
        if not parts:
            continue
        try:
            rel, prob, kind = parts[0], float(parts[1]), parts[2]
        except (ValueError, IndexError):
            raise ZsadInputError(f"{path}: line {line}: expected 'images/cellNNNN.png probability type'") from None
        label = int(prob >= ELPV_DEFECT_PROBABILITY)
        test.setdefault(kind, []).append(Sample(root / rel, label, None, kind, "test", f"p={prob:.2f}"))
    cats = _filter(sorted(test), wanted, root, "ELPV")
    note = f"ELPV: defective = probability >= {ELPV_DEFECT_PROBABILITY} (2/3 and 1); 1/3 counts as functional"
    return Layout("labels.csv + images/", {c: test[c] for c in cats}, notes=[note])


# ------------------------------------------------------------------------------------------------ registry
_NC = "CC BY-NC-SA 4.0"
BENCHMARKS: dict[str, BenchmarkInfo] = {
    b.name: b
    for b in (
        BenchmarkInfo(
            "mvtec",
            "MVTec AD",
            "industrial",
            "pixel",
            _NC,
            "https://www.mvtec.com/company/research/datasets/mvtec-ad",
            ("mvtec", "mvtec_anomaly_detection", "MVTec-AD", "mvtec_ad", "MVTec"),
            read_mvtec,
        ),
        BenchmarkInfo(
            "visa",
            "VisA",
            "industrial",
            "pixel",
            "CC BY 4.0",
            "https://github.com/amazon-science/spot-diff",
            ("visa", "VisA_20220922", "VisA", "visa_pytorch"),
            read_visa,
        ),
        BenchmarkInfo(
            "mpdd",
            "MPDD",
            "industrial",
            "pixel",
            "not stated by the owners",
            "https://github.com/stepanje/MPDD",
            ("mpdd", "MPDD"),
            _mvtec_like("MPDD"),
        ),
        BenchmarkInfo(
            "btad",
            "BTAD",
            "industrial",
            "pixel",
            "CC BY-SA 4.0",
            "https://github.com/pankajmishra000/VT-ADL",
            ("btad", "BTAD", "BTech_Dataset_transformed"),
            read_btad,
        ),
        BenchmarkInfo(
            "ksdd2",
            "KolektorSDD2",
            "industrial",
            "pixel",
            "CC BY-NC-SA 4.0 (per mirrors; see page)",
            "https://www.vicos.si/resources/kolektorsdd2/",
            ("ksdd2", "KolektorSDD2", "KSDD2"),
            read_ksdd2,
        ),
        BenchmarkInfo(
            "dagm",
            "DAGM 2007",
            "industrial",
            "pixel",
            "not stated",
            "https://hci.iwr.uni-heidelberg.de/node/3616",
            ("dagm", "DAGM", "DAGM_KaggleUpload", "DAGM2007"),
            read_dagm,
        ),
        BenchmarkInfo(
            "dtd",
            "DTD-Synthetic",
            "industrial",
            "pixel",
            "not stated",
            "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1",
            ("dtd", "DTD-Synthetic", "DTD_Synthetic", "dtd_synthetic"),
            _mvtec_like("DTD-Synthetic"),
        ),
        BenchmarkInfo(
            "mvtec3d",
            "MVTec 3D-AD (RGB)",
            "industrial",
            "pixel",
            _NC,
            "https://www.mvtec.com/company/research/datasets/mvtec-3d-ad",
            ("mvtec3d", "mvtec_3d_anomaly_detection", "MVTec3D-AD", "mvtec_3d"),
            read_mvtec3d,
        ),
        BenchmarkInfo(
            "mvtec_loco",
            "MVTec LOCO AD",
            "industrial",
            "pixel",
            _NC,
            "https://www.mvtec.com/company/research/datasets/mvtec-loco",
            ("mvtec_loco", "mvtec_loco_anomaly_detection", "MVTec-LOCO", "loco"),
            read_mvtec_loco,
        ),
        BenchmarkInfo(
            "elpv",
            "ELPV (solar cells)",
            "industrial",
            "image",
            "CC BY-NC-SA 4.0 (data)",
            "https://github.com/zae-bayern/elpv-dataset",
            ("elpv", "elpv-dataset", "elpv_dataset"),
            read_elpv,
        ),
        BenchmarkInfo(
            "brainmri",
            "BrainMRI",
            "medical",
            "image",
            "not stated (Kaggle)",
            "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
            ("brainmri", "BrainMRI", "brain_mri", "brain_tumor_dataset"),
            read_brainmri,
        ),
        BenchmarkInfo(
            "headct",
            "HeadCT",
            "medical",
            "image",
            "not stated (Kaggle)",
            "https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
            ("headct", "HeadCT", "head_ct", "HeadCT_anomaly_detection"),
            read_headct,
        ),
        BenchmarkInfo(
            "br35h",
            "Br35H",
            "medical",
            "image",
            "not stated (Kaggle)",
            "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
            ("br35h", "Br35H", "Br35h_anomaly_detection"),
            read_br35h,
        ),
        BenchmarkInfo(
            "isic",
            "ISIC 2016",
            "medical",
            "pixel",
            "CC0 (per mirrors; see page)",
            "https://challenge.isic-archive.com/landing/2016/37",
            ("isic", "ISIC", "ISBI"),
            read_isic,
        ),
        BenchmarkInfo(
            "colondb",
            "CVC-ColonDB",
            "medical",
            "pixel",
            "not stated",
            "http://mv.cvc.uab.es/projects/colon-qa/cvccolondb",
            ("colondb", "CVC-ColonDB", "ColonDB"),
            _pack("CVC-ColonDB", "colon"),
        ),
        BenchmarkInfo(
            "clinicdb",
            "CVC-ClinicDB",
            "medical",
            "pixel",
            "not stated",
            "https://polyp.grand-challenge.org/CVCClinicDB/",
            ("clinicdb", "CVC-ClinicDB", "ClinicDB"),
            _pack("CVC-ClinicDB", "colon", _clinicdb_owners),
        ),
        BenchmarkInfo(
            "kvasir",
            "Kvasir-SEG",
            "medical",
            "pixel",
            "see the owners' page",
            "https://datasets.simula.no/kvasir-seg/",
            ("kvasir", "Kvasir-SEG", "Kvasir"),
            _pack("Kvasir-SEG", "colon"),
        ),
        BenchmarkInfo(
            "endo",
            "EndoTect (Endo)",
            "medical",
            "pixel",
            "not stated",
            "https://endotect.com/",
            ("endo", "EndoTect", "EndoTect_2020_Segmentation_Test_Dataset"),
            _pack("EndoTect", "colon", _endo_owners),
        ),
    )  # fmt: skip
}

SUITES: dict[str, tuple[str, ...]] = {
    "industrial": ("mvtec", "visa", "mpdd", "btad", "ksdd2", "dagm", "dtd", "mvtec3d", "mvtec_loco", "elpv"),
    "medical": ("brainmri", "headct", "br35h", "isic", "colondb", "clinicdb", "kvasir", "endo"),
    # the datasets of AnomalyCLIP's zero-shot table that zsad reads (its COVID-19 and TN3K columns are not here)
    "anomalyclip17": (
        "mvtec",
        "visa",
        "mpdd",
        "btad",
        "ksdd2",
        "dagm",
        "dtd",
        "brainmri",
        "headct",
        "br35h",
        "isic",
        "colondb",
        "clinicdb",
        "kvasir",
        "endo",
    ),  # fmt: skip
}


def benchmark_info(name: str) -> BenchmarkInfo:
    """The registry entry of ``name`` (case-insensitive), or a one-line error listing the names."""
    info = BENCHMARKS.get(name.lower())
    if info is None:
        raise ZsadInputError(f"--dataset {name!r}: use one of {', '.join(BENCHMARKS)} or folder")
    return info


def read_benchmark(name: str, root: Path, categories: Sequence[str] = ()) -> Layout:
    """Test samples and references per category of dataset ``name`` under ``root`` (checked before models load)."""
    info = benchmark_info(name)
    if not root.is_dir():
        raise ZsadInputError(f"{root}: {info.title} root not found")
    layout = info.reader(root, list(categories))
    for cat, rows in layout.test.items():
        if not rows:
            raise ZsadInputError(f"{root}: {info.title} category {cat!r} has no test images")
    return layout


class BenchmarkDataset(AnomalyDataset):
    """One category of a named benchmark (``read_benchmark``) as a dataset; image-level sets carry no masks."""

    def __init__(self, samples: Sequence[Sample], info: BenchmarkInfo, source: str, **kw: object) -> None:
        self.info = info
        super().__init__(samples, masks_known=info.labels == "pixel", source=source, **kw)  # type: ignore[arg-type]
