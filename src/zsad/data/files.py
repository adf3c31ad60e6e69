"""File-system helpers shared by the datasets: deterministic image listing and case-insensitive mask lookup."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Sequence
from pathlib import Path

from zsad.data.io import IMAGE_EXTENSIONS, is_image_file
from zsad.errors import ZsadInputError


def resolve_dir(root: Path, sub: str | Path | None, what: str) -> Path | None:
    """``sub`` relative to ``root`` (or absolute); a missing folder is a one-line error naming it."""
    if sub is None:
        return None
    path = Path(sub) if Path(sub).is_absolute() else root / sub
    if not path.is_dir():
        raise ZsadInputError(f"{path}: {what} folder not found")
    return path


def _matches(rel: str, name: str, pattern: str) -> bool:
    """Case-insensitive glob: on the file name, or on the relative path when the pattern has a slash."""
    target = rel if "/" in pattern else name
    return fnmatch.fnmatchcase(target.lower(), pattern.lower())


class Skipped:
    """Files a folder listing passed over, by reason, so a run can say how many and which (never silently)."""

    NOT_IMAGE = "not an image type"
    DANGLING = "dangling symlink"
    ZSAD_FOLDER = "inside a zsad output folder"

    def __init__(self) -> None:
        self.by_reason: dict[str, list[Path]] = {}

    def add(self, reason: str, path: Path) -> None:
        """Record one passed-over file (or folder)."""
        self.by_reason.setdefault(reason, []).append(path)

    def counts(self) -> dict[str, int]:
        """Reason -> how many."""
        return {k: len(v) for k, v in self.by_reason.items()}

    def __bool__(self) -> bool:
        return bool(self.by_reason)

    def summary(self) -> str:
        """One line such as ``2 not an image type (notes.txt, a.csv), 1 dangling symlink (x.png)``."""
        parts = []
        for reason, paths in self.by_reason.items():
            names = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            parts.append(f"{len(paths)} {reason} ({names})")
        return ", ".join(parts)


def _is_zsad_folder(folder: Path) -> bool:
    from zsad.outputs import is_zsad_folder

    return is_zsad_folder(folder)


def list_images(
    folder: Path,
    pattern: str = "*",
    recursive: bool = False,
    skipped: Skipped | None = None,
    exclude: Sequence[Path] = (),
) -> list[Path]:
    """Image files in ``folder`` matching ``pattern``, sorted by relative path so runs are reproducible.

    Hidden files are skipped: macOS ``._X.png`` companions have image extensions but are not images. A recursive
    listing does not enter folders zsad wrote (they carry its marker: overlays are results, not products) nor the
    ``exclude`` folders (this run's own output). Files matching ``pattern`` that are not images, and dangling
    symlinks, are recorded in ``skipped``.
    """
    found: list[tuple[str, Path]] = []
    excluded = {os.path.realpath(e) for e in exclude}

    def consider(path: Path, rel: str) -> None:
        name = path.name
        if name.startswith(".") or not _matches(rel, name, pattern):
            return
        if not is_image_file(path):
            if skipped is not None and not path.is_dir():
                skipped.add(Skipped.NOT_IMAGE, path)
            return
        if path.is_symlink() and not path.exists():
            if skipped is not None:
                skipped.add(Skipped.DANGLING, path)
            return
        if path.is_file():
            found.append((rel, path))

    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            base = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                sub = base / d
                if d.startswith("."):
                    continue
                if os.path.realpath(sub) in excluded or _is_zsad_folder(sub):
                    if skipped is not None:
                        skipped.add(Skipped.ZSAD_FOLDER, sub)
                    continue
                keep.append(d)
            dirnames[:] = keep
            for name in filenames:
                path = base / name
                consider(path, path.relative_to(folder).as_posix())
    else:
        for path in folder.iterdir():
            consider(path, path.name)
    return [p for _, p in sorted(found)]


class MaskIndex:
    """Masks of one folder, looked up by image stem in any extension and letter case.

    Listing the folder once per subfolder keeps lookups cheap for thousands of images.
    """

    def __init__(self, folder: Path, suffixes: Sequence[str] = ("_mask", "")) -> None:
        self.folder = folder
        self.suffixes = tuple(s.lower() for s in suffixes)  # after the image stem, tried in order
        self._cache: dict[Path, dict[str, Path]] = {}

    def _names(self, folder: Path) -> dict[str, Path]:
        if folder not in self._cache:
            names: dict[str, Path] = {}
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if p.is_file() and is_image_file(p):
                        names.setdefault(p.name.lower(), p)
            self._cache[folder] = names
        return self._cache[folder]

    def find(self, image: Path, rel_parent: Path = Path()) -> Path | None:
        """Mask for ``image``: ``<stem><suffix>.*`` per suffix, in ``rel_parent`` below the folder, then flat.

        Suffixes default to ``_mask``, then none. The image itself is never its own mask (masks may sit beside the
        images).
        """
        folders = [self.folder / rel_parent, self.folder] if rel_parent != Path() else [self.folder]
        stem = image.stem.lower()
        for folder in folders:
            names = self._names(folder)
            for candidate_stem in (stem + suffix for suffix in self.suffixes):
                for ext in IMAGE_EXTENSIONS:
                    hit = names.get(candidate_stem + ext)
                    if hit is not None and not _same_file(hit, image):
                        return hit
        return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def find_mask(image: str | Path, mask_dir: str | Path) -> Path | None:
    """The mask sharing the image's stem in ``mask_dir`` (``X.*`` or ``X_mask.*``), or None."""
    return MaskIndex(Path(mask_dir)).find(Path(image))


def collect_images(
    items: Sequence[str | Path],
    recursive: bool = False,
    image_glob: str | None = None,
    skipped: Skipped | None = None,
    exclude: Sequence[Path] = (),
) -> list[Path]:
    """Absolute image paths named by files, folders and glob patterns, in order, each file once (by real path).

    Folder listings record what they pass over in ``skipped`` and never enter ``exclude`` (see ``list_images``).
    """
    if not items:
        raise ZsadInputError("no input paths given")
    seen: dict[str, Path] = {}
    for raw in items:
        if isinstance(raw, str) and raw.startswith("file://"):
            raw = raw[len("file://") :]  # a local file URI is its path
        for f in _expand(raw, recursive, image_glob, skipped, exclude):
            absolute = Path(os.path.abspath(f))
            seen.setdefault(os.path.realpath(absolute), absolute)
    return list(seen.values())


def list_entry(entry: str, base: Path) -> str:
    """One path of a list file: absolute paths and URIs as written, relative ones from the list's folder ``base``."""
    return entry if os.path.isabs(entry) or "://" in entry else str(base / entry)


def read_list_file(path: str | Path) -> list[str]:
    """Image paths of a list file, one per line (``#`` comments and blank lines skipped).

    Relative paths are relative to the list file's folder, so a list moves with its images; URIs
    (``file://``, ``s3://``...) are kept as written.
    """
    p = Path(path)
    if not p.is_file():
        raise ZsadInputError(f"{p}: list file not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        raise ZsadInputError(f"{p}: cannot read list file: {why}") from None
    out = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            out.append(list_entry(entry, p.parent))
    if not out:
        raise ZsadInputError(f"{p}: list file names no images")
    return out


def _same_stem_check(folder: Path, found: Sequence[Path]) -> None:
    """Refuse a folder where one name exists with several image extensions (images with their masks beside)."""
    by_stem: dict[tuple[Path, str], Path] = {}
    for f in found:
        key = (f.parent, f.stem.lower())
        if key in by_stem:
            a, b = by_stem[key], f
            raise ZsadInputError(
                f"{folder}: holds {a.name} and {b.name} (same name, different image types: masks beside images?); "
                f"select the images with --image-glob '*{a.suffix}'"
            )
        by_stem[key] = f


def _expand(
    raw: str | Path,
    recursive: bool,
    image_glob: str | None = None,
    skipped: Skipped | None = None,
    exclude: Sequence[Path] = (),
) -> list[Path]:
    path = Path(raw)
    if path.is_dir():
        found = list_images(path, image_glob or "*", recursive, skipped, exclude)
        if not found:
            more = f" matching {image_glob!r}" if image_glob else ""
            raise ZsadInputError(f"{path}: no image files{more} in this folder")
        if image_glob is None:
            _same_stem_check(path, found)
        return found
    if path.is_file():
        return [path]
    if glob.has_magic(str(raw)):
        found = sorted(
            Path(m)
            for m in glob.glob(_ci_extension(str(raw)), recursive=True)
            if is_image_file(m) and Path(m).is_file()
        )
        if not found:
            raise ZsadInputError(f"{raw}: no image files match this pattern")
        return found
    raise ZsadInputError(f"{raw}: no such file or folder")


def _ci_extension(pattern: str) -> str:
    """``dir/*.jpg`` -> ``dir/*.[jJ][pP][gG]``: extensions match in any letter case, like folder listings."""
    head, sep, tail = pattern.rpartition("/")
    stem, dot, ext = tail.rpartition(".")
    if not dot or not ext.isalpha():
        return pattern
    return head + sep + stem + dot + "".join(f"[{c.lower()}{c.upper()}]" for c in ext)
