"""Datasets that need no network: digits, MNIST-1D, concentric spheres, spirals.

Splits are fixed by a seed, so the same seed gives the same train/test sets everywhere.
Features are standardised with the training split's statistics.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from odenet.data.core import DataError, TensorData

__all__ = ["digits", "mnist1d", "spheres", "spirals"]


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """A stratified split: the same fraction of every class goes to the test set."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(len(members) * test_fraction)]] = True
    return x[~test], y[~test], x[test], y[test]


def _standardise(x_train: Tensor, x_test: Tensor, per_channel: bool) -> tuple[Tensor, Tensor]:
    dims = (0, 2, 3) if per_channel else tuple(range(x_train.dim()))
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return (x_train - mean) / std, (x_test - mean) / std


def _tensors(name: str, parts: tuple[np.ndarray, ...], num_classes: int, image: bool) -> TensorData:
    x_tr, y_tr, x_te, y_te = parts
    xt, xs = torch.as_tensor(x_tr, dtype=torch.float32), torch.as_tensor(x_te, dtype=torch.float32)
    xt, xs = _standardise(xt, xs, per_channel=image)
    return TensorData(
        name,
        xt.contiguous(),
        torch.as_tensor(y_tr, dtype=torch.int64),
        xs.contiguous(),
        torch.as_tensor(y_te, dtype=torch.int64),
        num_classes,
    )


def digits(seed: int = 0, test_fraction: float = 0.2) -> TensorData:
    """scikit-learn's handwritten digits (UCI ML; 1,797 real 8×8 images, 10 classes).

    Shipped inside scikit-learn, so no download. Images (N, 1, 8, 8); a stratified
    80/20 split: 1,437 train / 360 test with the defaults.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    return _tensors("digits", _split(x, bunch.target, test_fraction, seed), 10, image=True)


def mnist1d(seed: int = 42) -> TensorData:
    """MNIST-1D (Greydanus 2020), generated procedurally by ``mnist1d.data.make_dataset``.

    The standard 5,000 samples of length 40, split 4,000 train / 1,000 test; ``seed`` is
    the generator's (42 is the published dataset). Vectors (N, 40), 10 classes.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise DataError("{dataset} needs the 'mnist1d' package: pip install mnist1d", dataset="mnist1d") from err
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    parts = (data["x"], data["y"], data["x_test"], data["y_test"])
    return _tensors("mnist1d", parts, 10, image=False)


def spheres(
    dim: int = 2, n: int = 2000, seed: int = 0, test_fraction: float = 0.2, inner: float = 0.5,
    outer: tuple[float, float] = (1.0, 1.5),
) -> TensorData:  # fmt: skip
    """Concentric spheres of Dupont et al. (2019), "Augmented Neural ODEs".

    Class 0: points with radius uniform in [0, inner]; class 1: radius uniform in
    [outer₀, outer₁]; directions uniform on the sphere in ``dim`` dimensions. A flow
    (a homeomorphism) cannot separate them linearly in the same dimension, which is
    what makes them a test of ODE-Nets versus ResNets.
    """
    if dim < 1:
        raise DataError("{dim} is not a dimension for spheres: give dim ≥ 1", dim=dim)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    directions = rng.normal(size=(n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = np.where(labels == 0, rng.uniform(0, inner, n), rng.uniform(outer[0], outer[1], n))
    x = (directions * radii[:, None]).astype(np.float32)
    parts = _split(x, labels, test_fraction, seed)
    # Keep the geometry (radius is the label): no standardisation.
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(p) for p in parts)
    return TensorData(f"spheres{dim}d", x_tr.float(), y_tr.long(), x_te.float(), y_te.long(), 2)


def spirals(
    n: int = 2000, turns: float = 2.0, noise: float = 0.05, seed: int = 0, test_fraction: float = 0.2
) -> TensorData:
    """Two interleaved spirals in the plane (Lang & Witbrock 1988), 2 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    r = rng.uniform(0.05, 1.0, n)
    theta = 2 * math.pi * turns * r + math.pi * labels
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1) + noise * rng.normal(size=(n, 2))
    parts = _split(x.astype(np.float32), labels, test_fraction, seed)
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(p) for p in parts)
    return TensorData("spirals", x_tr.float(), y_tr.long(), x_te.float(), y_te.long(), 2)
