"""Data layer: robust image I/O, square squash of image and mask, datasets with anomalib's names.

Names load on first use, so the torch-free parts (``zsad.data.io``) can be imported without torch.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zsad.data.datasets import AnomalyDataset, ImageList, MVTecAD, Sample, Visa
    from zsad.data.files import find_mask, list_images
    from zsad.data.folder import Folder, ImageLabels
    from zsad.data.io import IMAGE_EXTENSIONS, decode_image, is_image_file, load_image, load_mask
    from zsad.data.meta import load_meta_json, save_meta_json
    from zsad.data.samples import make_sample_images
    from zsad.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, denormalize, squash_image, squash_mask

_WHERE = {
    **dict.fromkeys(["AnomalyDataset", "ImageList", "MVTecAD", "Sample", "Visa"], "datasets"),
    **dict.fromkeys(["find_mask", "list_images"], "files"),
    **dict.fromkeys(["Folder", "ImageLabels"], "folder"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "decode_image", "is_image_file", "load_image", "load_mask"], "io"),
    **dict.fromkeys(["load_meta_json", "save_meta_json"], "meta"),
    "make_sample_images": "samples",
    **dict.fromkeys(
        ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "denormalize", "squash_image", "squash_mask"], "transforms"
    ),
}

__all__ = [
    "IMAGE_EXTENSIONS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "AnomalyDataset",
    "Folder",
    "ImageLabels",
    "ImageList",
    "MVTecAD",
    "Sample",
    "Visa",
    "denormalize",
    "find_mask",
    "is_image_file",
    "list_images",
    "decode_image",
    "load_image",
    "load_mask",
    "load_meta_json",
    "make_sample_images",
    "save_meta_json",
    "squash_image",
    "squash_mask",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"zsad.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'zsad.data' has no attribute {name!r}")
