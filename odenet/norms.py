"""Normalisation inside residual fields: the kinds, the default rule, batch-norm statistics.

Kinds (``NORMS``)
    ``"batch"``         BatchNorm: batch statistics in training, running averages in eval.
    ``"frozen_batch"``  BatchNorm whose statistics are *frozen*: every forward pass, in
                        training too, normalises with the stored statistics, so the field
                        is a fixed function of the state (a true ODE right-hand side). The
                        statistics are computed on training data by ``calibrate_batchnorm``
                        (training does so before every epoch) and never by a field call.
    ``"group"``         GroupNorm with min(32, C) groups (Wu & He 2018): per sample, no
                        running statistics (Chen et al. 2018's choice for ODE-Nets).
    ``"none"``          no normalisation.
    ``"auto"``          the default, resolved by ``resolve_norm``.

Why batch norm and ODE fields do not mix. In training mode a ``BatchNorm`` layer updates
its running statistics on *every* call. A fixed-step block calls its field a known number
of times per forward pass, all on the forward trajectory. An adaptive solver calls it as
often as its error control decides (dopri5: 6 calls per attempted step, rejected ones
included), and the adjoint method calls it again on states of the *backward* solve, so the
running statistics that eval mode uses come from the last few of those calls, not from the
forward trajectory. A shared-weight (autonomous) field sees states from every time of the
stage through one set of statistics. Hence ``resolve_norm``: GroupNorm inside adaptive and
shared-weight fields unless batch norm is asked for explicitly; ``frozen_batch`` is the
batch-norm variant whose field stays one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CALIBRATION_SAMPLES",
    "NORMS",
    "FrozenBatchNorm",
    "Norm",
    "calibrate_batchnorm",
    "make_norm",
    "resolve_norm",
    "running_stats_kept",
]

Norm = Literal["auto", "batch", "frozen_batch", "group", "none"]
NORMS: tuple[str, ...] = ("auto", "batch", "frozen_batch", "group", "none")

# Training examples whose average statistics a calibration gathers.
CALIBRATION_SAMPLES = 1024


def resolve_norm(norm: str, *, adaptive: bool, autonomous: bool, adjoint: bool = False, default: str = "batch") -> str:
    """The normalisation a field gets: ``norm`` itself unless it is ``"auto"``.

    ``"auto"`` is ``default`` (batch for conv nets, none for MLPs), except that batch norm
    becomes GroupNorm inside adaptive, shared-weight (autonomous) or adjoint-solved
    fields, where its running statistics are not those of the forward trajectory (see
    the module docstring; the adjoint's backward solve calls the field in training mode).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    if norm != "auto":
        return norm
    return "group" if default == "batch" and (adaptive or autonomous or adjoint) else default


class FrozenBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm that always normalises with its stored statistics (train mode too).

    Its affine weight and bias train; its statistics change only under
    ``calibrate_batchnorm``. Input (batch, C) or (batch, C, …).
    """

    calibrating: bool = False

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input (batch, channels, …), got {input.dim()}-d")

    def forward(self, input: Tensor) -> Tensor:
        if self.calibrating:
            return super().forward(input)
        self._check_input_dim(input)
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """A normalisation layer over ``channels`` for 2-d images (dims=2) or vectors (dims=1).

    ``kind`` is resolved already (not ``"auto"``: see ``resolve_norm``).
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "frozen_batch":
        return FrozenBatchNorm(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of: {', '.join(n for n in NORMS if n != 'auto')}")


@torch.no_grad()
@contextmanager
def running_stats_kept(modules: Iterable[nn.Module]) -> Iterator[None]:
    """The batch norms inside ``modules`` keep, on exit, the running statistics they had on entry.

    Inside, they normalise as usual (with batch statistics in training mode) and update
    running_mean/var and num_batches_tracked; on exit those are copied back. Checkpointed
    blocks recompute a segment this way in the backward pass: the recomputation saves the
    same tensors as the forward pass did, and the statistics are updated once, not twice.
    """
    saved = [
        (buffer, buffer.clone())
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def calibrate_batchnorm(
    model: nn.Module, x: Tensor, batch_size: int = 256, only: type[nn.Module] = nn.modules.batchnorm._BatchNorm
) -> nn.Module:
    """Set the batch norms' statistics (frozen ones too) to the exact averages over ``x``, in place.

    The network runs in train mode on ``x`` with cumulative averaging (``momentum=None``),
    so the statistics are those of the network's own forward trajectory under its current
    solver and weights. Uses: an untrained network (statistics 0 and 1) before eval-mode
    probes; a trained network re-solved with another solver or step count
    (``ResidualNetwork.with_solver``); frozen batch norm before every epoch.
    ``only``: calibrate just the norms of this type (``FrozenBatchNorm``); the others keep
    their statistics untouched. Returns ``model``.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not any(isinstance(m, only) for m in norms):
        return model
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        if isinstance(m, only):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
            if isinstance(m, FrozenBatchNorm):
                m.calibrating = True
        else:
            m.momentum = 0.0  # running ← running: a norm left out keeps its statistics
    model.train()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            if isinstance(m, FrozenBatchNorm):
                m.calibrating = False
        model.train(was_training)
    return model
