"""Data layer: robust image I/O, square squash of image + mask, datasets with anomalib's names."""

from zsad.data.datasets import (
    AnomalyDataset,
    Folder,
    ImageList,
    MVTecAD,
    Sample,
    Visa,
    find_mask,
    load_meta_json,
    save_meta_json,
)
from zsad.data.io import IMAGE_EXTENSIONS, load_image, load_mask
from zsad.data.samples import make_sample_images
from zsad.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, denormalize, squash_image, squash_mask

__all__ = [
    "IMAGE_EXTENSIONS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "AnomalyDataset",
    "Folder",
    "ImageList",
    "MVTecAD",
    "Sample",
    "Visa",
    "denormalize",
    "find_mask",
    "load_image",
    "load_mask",
    "load_meta_json",
    "make_sample_images",
    "save_meta_json",
    "squash_image",
    "squash_mask",
]
