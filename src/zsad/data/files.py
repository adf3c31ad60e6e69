"""File-system helpers shared by the datasets: deterministic image listing and case-insensitive mask lookup."""

from __future__ import annotations

import fnmatch
import os
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


def list_images(folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` matching ``pattern``, sorted by relative path so runs are reproducible.

    Hidden files are skipped: macOS ``._X.png`` companions have image extensions but are not images.
    """
    found: list[tuple[str, Path]] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath)
            for name in filenames:
                path = base / name
                rel = path.relative_to(folder).as_posix()
                if not name.startswith(".") and is_image_file(path) and _matches(rel, name, pattern):
                    found.append((rel, path))
    else:
        for path in folder.iterdir():
            name = path.name
            if not name.startswith(".") and path.is_file() and is_image_file(path) and _matches(name, name, pattern):
                found.append((name, path))
    return [p for _, p in sorted(found)]


class MaskIndex:
    """Masks of one folder, looked up by image stem in any extension and letter case.

    Listing the folder once per subfolder keeps lookups cheap for thousands of images.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
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
        """Mask for ``image``: ``<stem>_mask.*`` then ``<stem>.*``, in ``rel_parent`` below the folder, then flat.

        The image itself is never its own mask (masks may sit beside the images).
        """
        folders = [self.folder / rel_parent, self.folder] if rel_parent != Path() else [self.folder]
        stem = image.stem.lower()
        for folder in folders:
            names = self._names(folder)
            for candidate_stem in (f"{stem}_mask", stem):
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
