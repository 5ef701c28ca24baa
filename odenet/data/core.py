"""Datasets held as tensors, and a batch iterator that never leaves the device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from odenet.errors import ConfigError

__all__ = ["DataError", "TensorData", "augment_crop_flip", "batches"]


class DataError(ConfigError):
    """A dataset that cannot be loaded (missing files, bad folder, unknown name)."""


@dataclass(frozen=True)
class TensorData:
    """A classification dataset as four tensors, and how to read features from them.

    x_train: (n_train, C, H, W) images or (n_train, features) vectors, stored either as
    float features already normalised with the training set's statistics, or as raw
    uint8 pixels (0–255) with ``mean`` and ``std``: the training set's per-channel
    statistics in pixel units, (1, C, 1, 1) float. Raw pixels take a quarter of the
    memory of float32 and are normalised per batch on the device by ``features``, the
    one way to read float features from either kind. y_train: (n_train,) int64 labels;
    likewise for the test split. ``augment`` names the training-time augmentation
    (``"crop_flip"``: 4-pixel pad, random crop and horizontal flip, the standard CIFAR
    recipe).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    augment: Literal["none", "crop_flip"] = "none"
    mean: Tensor | None = None
    std: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std come together: give both or neither")
        if self.mean is None or self.std is None:
            if not (self.x_train.is_floating_point() and self.x_test.is_floating_point()):
                raise ValueError(f"{self.x_train.dtype} pixels need the mean and std that normalise them")
            return
        shape = (1, self.x_train.shape[1], 1, 1)
        if self.x_train.dim() != 4 or self.mean.shape != shape or self.std.shape != shape:
            raise ValueError(f"per-channel statistics of these images are {shape}, not {tuple(self.mean.shape)}")

    @property
    def kind(self) -> Literal["image", "vector"]:
        return "image" if self.x_train.dim() == 4 else "vector"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def features(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Float features of stored examples ``x`` (a slice of x_train or x_test), on x's device.

        Raw pixels become ``(x - mean) / std`` in ``dtype`` (default: the statistics'
        dtype, which ``to`` sets), computed elementwise: a batch gets exactly the values
        it would have in the whole set normalised at once. Float features are returned
        as they are (cast to ``dtype`` if given). x: (batch, …) → (batch, …).
        """
        if self.mean is None or self.std is None:
            return x if dtype is None else x.to(dtype)
        dtype = dtype or self.mean.dtype
        mean = self.mean.to(device=x.device, dtype=dtype)
        std = self.std.to(device=x.device, dtype=dtype)
        return (x.to(dtype) - mean) / std

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TensorData:
        """The same data on ``device``, its features read as ``dtype`` if given.

        Float features are cast to ``dtype``; raw uint8 pixels stay uint8 (a quarter of
        the bytes to hold and index) and their statistics are cast instead, so
        ``features`` returns ``dtype`` either way.
        """

        def move(x: Tensor, cast: bool) -> Tensor:
            return x.to(device=device, dtype=dtype if cast and dtype is not None else x.dtype)

        raw = self.mean is not None and self.std is not None
        return replace(
            self,
            x_train=move(self.x_train, not raw),
            y_train=move(self.y_train, False),
            x_test=move(self.x_test, not raw),
            y_test=move(self.y_test, False),
            mean=move(self.mean, True) if self.mean is not None else None,
            std=move(self.std, True) if self.std is not None else None,
        )

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape)
        return f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test, {shape}, {self.num_classes} classes"


def batches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches by indexing device tensors (no DataLoader, no host round trips).

    The permutation is drawn once per epoch on the generator's device (the data's
    device without one): give a generator on the data's device and the order never
    crosses to the host. On the CPU a seed gives the order it always has; a CUDA
    generator with the same seed gives a different order (another random-number
    stream), reproducible on CUDA.
    """
    n = len(y)
    order = None
    if shuffle:
        device = x.device if generator is None else generator.device
        order = torch.randperm(n, generator=generator, device=device).to(x.device)
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x.index_select(0, idx), y.index_select(0, idx)


def augment_crop_flip(x: Tensor, generator: torch.Generator | None = None, pad: int = 4) -> Tensor:
    """Pad by ``pad`` pixels (zeros), crop back at a random offset, flip half horizontally.

    The CIFAR augmentation of He et al. (2015), done for the whole batch at once on its
    device. Offsets and flips are drawn on the generator's device (x's without one): a
    generator on x's device keeps the batch loop free of host traffic; on the CPU a seed
    gives the crops it always has, on CUDA different ones (reproducible there). On
    normalised features (as training applies it) a zero pad is the channel mean.
    x: (batch, C, H, W) → same shape.
    """
    b, _, h, w = x.shape
    device = x.device if generator is None else generator.device
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=device).to(x.device)
    flips = (torch.rand(b, generator=generator, device=device) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=x.device)[None, :] + offsets[0][:, None])[:, None, :, None]
    cols = torch.arange(w, device=x.device)[None, :]
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[1][:, None]
    cols = cols[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]
