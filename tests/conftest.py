"""Shared fixtures: deterministic seeds and small exact problems."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class LinearField(nn.Module):
    """F(t, x) = M x for a fixed matrix M (parameter-free): the linear test equation."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)

    def forward(self, t, x):
        return x @ self.matrix.T


class BurdenFaires(nn.Module):
    """x' = x − t² + 1, x(0) = 1/2; exact x(t) = (t + 1)² − eᵗ/2 (Burden & Faires, §5.2).

    Non-autonomous, so a tableau whose nodes c are wrong fails the order test.
    """

    x0 = 0.5

    @staticmethod
    def exact(t: float) -> float:
        return (t + 1.0) ** 2 - 0.5 * math.exp(t)

    def forward(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype)
        return x - t**2 + 1


class Riccati(nn.Module):
    """x' = −2t·x², x(0) = 1; exact x(t) = 1/(1 + t²). Nonlinear in x."""

    x0 = 1.0

    @staticmethod
    def exact(t: float) -> float:
        return 1.0 / (1.0 + t * t)

    def forward(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype)
        return -2 * t * x * x


def rotation_scaling(lam: complex) -> torch.Tensor:
    """The real 2×2 matrix acting on (Re z, Im z) as multiplication by λ."""
    return torch.tensor([[lam.real, -lam.imag], [lam.imag, lam.real]], dtype=torch.float64)
