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
    """A classification dataset as four tensors.

    x_train: (n_train, C, H, W) images or (n_train, features) vectors, float, normalised
    with the training set's statistics; y_train: (n_train,) int64 labels; likewise for
    the test split. ``augment`` names the training-time augmentation (``"crop_flip"``:
    4-pixel pad, random crop and horizontal flip, the standard CIFAR recipe).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    augment: Literal["none", "crop_flip"] = "none"

    @property
    def kind(self) -> Literal["image", "vector"]:
        return "image" if self.x_train.dim() == 4 else "vector"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TensorData:
        """The same data on ``device`` (features cast to ``dtype`` if given)."""

        def move(x: Tensor, features: bool) -> Tensor:
            return x.to(device=device, dtype=dtype if features and dtype is not None else x.dtype)

        return replace(
            self,
            x_train=move(self.x_train, True),
            y_train=move(self.y_train, False),
            x_test=move(self.x_test, True),
            y_test=move(self.y_test, False),
        )

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape)
        return f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test, {shape}, {self.num_classes} classes"


def batches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches by indexing device tensors (no DataLoader, no host round trips).

    The permutation is drawn on the CPU from ``generator`` (so a seed gives the same
    order on every device) and moved to the data's device once per epoch.
    """
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def augment_crop_flip(x: Tensor, generator: torch.Generator | None = None, pad: int = 4) -> Tensor:
    """Pad by ``pad`` pixels (zeros), crop back at a random offset, flip half horizontally.

    The CIFAR augmentation of He et al. (2015), done for the whole batch at once on its
    device. x: (batch, C, H, W) → same shape.
    """
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=x.device)[None, :] + offsets[0][:, None])[:, None, :, None]
    cols = torch.arange(w, device=x.device)[None, :]
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[1][:, None]
    cols = cols[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channels, rows, cols]
