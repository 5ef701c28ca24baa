"""Datasets as tensors: embedded ones that need no network and torchvision's from a folder.

``load_dataset(name, …)`` is the one entry point; ``DATASETS`` lists the names.
"""

from __future__ import annotations

from pathlib import Path

from odenet.data.core import DataError, TensorData, augment_crop_flip, batches
from odenet.data.embedded import digits, mnist1d, spheres, spirals
from odenet.data.vision import VISION, load_vision

EMBEDDED = ("digits", "mnist1d", "spheres", "spirals")
DATASETS: tuple[str, ...] = (*EMBEDDED, *VISION)
IMAGE_DATASETS: tuple[str, ...] = ("digits", *VISION)

__all__ = [
    "DATASETS",
    "EMBEDDED",
    "IMAGE_DATASETS",
    "DataError",
    "TensorData",
    "augment_crop_flip",
    "batches",
    "data_kind",
    "digits",
    "load_dataset",
    "mnist1d",
    "spheres",
    "spirals",
]


def data_kind(name: str) -> str:
    """``"image"`` for image datasets (CIFAR ResNets), ``"vector"`` otherwise (MLP ResNets)."""
    return "image" if name in IMAGE_DATASETS else "vector"


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False, seed: int = 0) -> TensorData:
    """Load a dataset by name (see ``DATASETS``).

    Embedded datasets are generated or read from installed packages, with the split fixed
    by ``seed`` (mnist1d keeps its published generator seed, 42); torchvision datasets
    are read from ``data_dir``.
    """
    if name == "digits":
        return digits(seed=seed)
    if name == "mnist1d":
        return mnist1d()
    if name == "spheres":
        return spheres(seed=seed)
    if name == "spirals":
        return spirals(seed=seed)
    if name in VISION:
        return load_vision(name, data_dir, download)
    raise DataError("{dataset} is not known; choose one of: " + ", ".join(DATASETS), dataset=name)
