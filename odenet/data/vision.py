"""torchvision datasets read from a local folder: CIFAR-10/100, MNIST, Fashion-MNIST.

torchvision reads the files; odenet keeps the images as uint8 tensors with the training
set's per-channel statistics, so training indexes device memory (a quarter of the bytes
of float32) instead of running a DataLoader and normalises each batch on the device.
Nothing is downloaded unless ``download=True`` (for machines with network access).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from odenet.data.core import DataError, TensorData
from odenet.errors import NAME_ONLY, literal

__all__ = ["VISION", "load_vision", "pixel_statistics"]

# name: (torchvision class name, classes, expected layout under the data folder)
VISION: dict[str, tuple[str, int, str]] = {
    "cifar10": (
        "CIFAR10", 10,
        "DIR/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} "
        "(the CIFAR-10 'python version' archive, unpacked)",
    ),
    "cifar100": (
        "CIFAR100", 100,
        "DIR/cifar-100-python/{train, test, meta} (the CIFAR-100 'python version' archive, unpacked)",
    ),
    "mnist": (
        "MNIST", 10,
        "DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (the four MNIST files, gunzipped)",
    ),
    "fashion-mnist": (
        "FashionMNIST", 10,
        "DIR/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (the four files, gunzipped)",
    ),
}  # fmt: skip


def _dataset_class(name: str) -> type:
    import torchvision.datasets as tvd

    cls = getattr(tvd, VISION[name][0])
    if name.startswith("cifar"):
        # torchvision verifies each CIFAR file against the md5 of the full release, which
        # refuses any subset (and the small files our tests write). odenet checks the
        # files are present and readable; the pickles' contents are parsed by torchvision.
        class Present(cls):  # type: ignore[misc, valid-type]
            def _check_integrity(self) -> bool:
                root = Path(self.root) / self.base_folder
                return all((root / entry[0]).is_file() for entry in (*self.train_list, *self.test_list))

            def _load_meta(self) -> None:
                # Class names are not used by odenet; the file must exist like the others.
                if not (Path(self.root) / self.base_folder / self.meta["filename"]).is_file():
                    raise RuntimeError("metadata file not found")

        return Present
    return cls


def load_vision(name: str, data_dir: str | Path | None, download: bool = False) -> TensorData:
    """Read a torchvision dataset from ``data_dir`` into tensors.

    Images are kept as (N, C, H, W) uint8 pixels with the training split's per-channel
    mean and std (pixel units), which ``TensorData.features`` applies per batch; CIFAR
    gets the crop-and-flip augmentation at training time.
    """
    if name not in VISION:
        raise DataError("{dataset} is not a vision dataset; choose one of: " + ", ".join(VISION), dataset=name)
    _, num_classes, layout = VISION[name]
    if data_dir is None:
        raise DataError(
            "{dataset} is read from a local folder: set {data_dir} to a folder DIR with " + literal(layout),
            dataset=name,
            data_dir=NAME_ONLY,
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir() and not download:
        raise DataError(
            "{data_dir} is not a folder; {dataset} expects " + literal(layout), data_dir=str(root), dataset=name
        )
    cls = _dataset_class(name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        hint = "" if download else " (or set {download} on a machine with network access)"
        raise DataError(
            "no {dataset} under {data_dir}: expected " + literal(layout) + hint,
            dataset=name,
            data_dir=str(root),
            **_mention_download(download),
        ) from err
    except Exception as err:  # a truncated or foreign file: unpickling/parsing errors
        raise DataError(
            "the {dataset} files under {data_dir} could not be read (" + literal(f"{type(err).__name__}: {err}") + ")",
            dataset=name,
            data_dir=str(root),
        ) from err
    x_train, y_train = _as_tensors(train.data, train.targets)
    x_test, y_test = _as_tensors(test.data, test.targets)
    mean, std = pixel_statistics(x_train)
    return TensorData(
        name,
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes,
        augment="crop_flip" if name.startswith("cifar") else "none",
        mean=mean,
        std=std,
    )


def _mention_download(download: bool) -> dict[str, Any]:
    return {} if download else {"download": True}


def pixel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (n − 1) of uint8 images, in pixel units, each (1, C, 1, 1) float32.

    Counted from each channel's histogram of the 256 pixel values, so the sums are exact
    in float64 and need no float copy of the images. x: (N, C, H, W) uint8.
    """
    values = torch.arange(256, dtype=torch.float64)
    mean, std = torch.empty(x.shape[1], dtype=torch.float64), torch.empty(x.shape[1], dtype=torch.float64)
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        mean[c] = (counts * values).sum() / n
        std[c] = ((counts * (values - mean[c]) ** 2).sum() / (n - 1)).sqrt()
    shape = (1, -1, 1, 1)
    return mean.float().reshape(shape), std.clamp_min(1e-8).float().reshape(shape)


def _as_tensors(data: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's raw arrays → (N, C, H, W) uint8 pixels and int64 labels."""
    x = torch.as_tensor(np.asarray(data))
    if x.dim() == 3:  # MNIST-like: (N, H, W)
        x = x[:, None]
    else:  # CIFAR: (N, H, W, C)
        x = x.permute(0, 3, 1, 2)
    return x.to(torch.uint8).contiguous(), torch.as_tensor(np.asarray(targets), dtype=torch.int64)
