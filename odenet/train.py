"""One training run: a frozen config in, a per-epoch history out.

The loop keeps everything on the device: batches are index slices of device tensors,
running sums of loss, accuracy and gradient norm are device tensors, and the host reads
them once per epoch (plus a few progress-bar refreshes when a terminal is attached). A
non-finite loss, or an adaptive solver that gives up, ends the run and is recorded as
``diverged`` — a result, not an exception.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odenet.blocks import SolverError, ode_blocks
from odenet.data.core import TensorData, augment_crop_flip, batches

__all__ = [
    "HISTORY_VARIABLES",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "History",
    "TrainConfig",
    "evaluate",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "train",
]

# The per-epoch history as labelled data: name → (long_name, units), CF style.
HISTORY_VARIABLES: dict[str, tuple[str, str]] = {
    # name: (long_name, units)
    "train_loss": ("mean training cross-entropy", "nat"),
    "train_accuracy": ("training accuracy", "1"),
    "test_loss": ("mean test cross-entropy", "nat"),
    "test_accuracy": ("test accuracy", "1"),
    "lr": ("learning rate at the start of the epoch", "1"),
    "wall_time": ("wall-clock time since training started", "s"),
    "nfe_forward": ("ODE-block function evaluations per training batch, forward", "1"),
    "nfe_backward": ("ODE-block function evaluations per training batch, backward", "1"),
    "grad_norm": ("mean global gradient 2-norm per batch", "1"),
}

SCHEDULES = ("onecycle", "cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp64")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults train a ResNet-110 on ``digits`` to ≥ 98.5% in minutes.

    schedule: ``"onecycle"`` (Smith & Topin 2019: warm up to ``lr``, anneal to ~0),
        ``"cosine"``, ``"step"`` (He et al. 2015: ÷10 at 50% and 75% of training) or
        ``"constant"``; all stepped per batch.
    device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    precision: ``"fp32"``; ``"bf16"`` autocast (CUDA only); ``"fp64"`` for numerical work.
    """

    epochs: int = 15
    batch_size: int = 64
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp64"] = "fp32"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("momentum and weight_decay must be ≥ 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass
class History:
    """Per-epoch measurements of one run (lists indexed by epoch − 1).

    nfe_forward / nfe_backward: mean function evaluations of the ODE blocks per training
    batch. grad_norm: mean global gradient 2-norm per batch. ``diverged`` with
    ``diverged_epoch`` (1-based) and ``reason`` when the run stopped early.
    """

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    nfe_forward: list[float] = field(default_factory=list)
    nfe_backward: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    diverged: bool = False
    diverged_epoch: int | None = None
    reason: str = ""

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(device)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norm parameters and biases (1-d tensors), as in most CIFAR recipes.
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def _scheduler(opt: torch.optim.Optimizer, config: TrainConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2, (3 * total) // 4], gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512, precision: str = "fp32"
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode; one host read at the end."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    try:
        for xb, yb in batches(x, y, batch_size, shuffle=False):
            with _autocast(x.device, precision):
                logits = model(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
    finally:
        model.train(was_training)
    n = max(len(y), 1)
    return loss_sum.item() / n, correct.item() / n


def train(
    model: nn.Module,
    data: TensorData,
    config: TrainConfig,
    progress: bool | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
) -> History:
    """Train ``model`` on ``data`` (moved to the config's device) and return its history.

    progress: a tqdm bar per epoch; ``None`` shows it only on a terminal.
    on_epoch: called after every epoch with (epoch, history), e.g. to checkpoint.
    """
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    dtype = torch.float64 if config.precision == "fp64" else torch.float32
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device=device, dtype=dtype)
    data = data.to(device, dtype=dtype)
    if device.type == "cuda" and data.kind == "image":
        model.to(memory_format=torch.channels_last)

    n_batches = math.ceil(len(data.y_train) / config.batch_size)
    opt = _optimizer(model, config)
    sched = _scheduler(opt, config, config.epochs * n_batches)
    blocks = list(ode_blocks(model))
    params = [p for p in model.parameters() if p.requires_grad]
    history = History()
    start = time.perf_counter()
    refresh = max(1, n_batches // 10)

    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        grad_sum = torch.zeros((), device=device, dtype=torch.float64)
        nfe_f = nfe_b = 0
        lr = opt.param_groups[0]["lr"]
        # disable=None: tqdm shows the bar only when stderr is a terminal.
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, unit="batch",
                   disable=None if progress is None else not progress)  # fmt: skip
        shown = not bar.disable  # tqdm sets disable on close()
        try:
            for step, (xb, yb) in enumerate(batches(data.x_train, data.y_train, config.batch_size, generator), 1):
                if data.augment == "crop_flip":
                    xb = augment_crop_flip(xb, generator)
                if device.type == "cuda" and xb.dim() == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with _autocast(device, config.precision):
                    logits = model(xb)
                    loss = F.cross_entropy(logits.float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_sum += torch.nn.utils.clip_grad_norm_(params, math.inf).double()
                opt.step()
                sched.step()
                loss_sum += loss.detach().double() * len(yb)
                correct += (logits.detach().argmax(dim=1) == yb).sum()
                nfe_f += sum(b.nfe_forward for b in blocks)
                nfe_b += sum(b.nfe_backward for b in blocks)
                bar.update()
                if shown and step % refresh == 0:  # a host read only for the display
                    seen = min(step * config.batch_size, len(data.y_train))
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        except SolverError as err:
            _diverge(history, epoch, f"solver failed: {err}")
            break
        finally:
            bar.close()
        train_loss = loss_sum.item() / len(data.y_train)
        if not math.isfinite(train_loss):
            _diverge(history, epoch, "non-finite training loss")
            break
        try:
            test_loss, test_acc = evaluate(model, data.x_test, data.y_test, precision=config.precision)
        except SolverError as err:
            _diverge(history, epoch, f"solver failed during evaluation: {err}")
            break
        history.train_loss.append(train_loss)
        history.train_accuracy.append(correct.item() / len(data.y_train))
        history.test_loss.append(test_loss)
        history.test_accuracy.append(test_acc)
        history.lr.append(lr)
        history.wall_time.append(time.perf_counter() - start)
        history.nfe_forward.append(nfe_f / n_batches)
        history.nfe_backward.append(nfe_b / n_batches)
        history.grad_norm.append(grad_sum.item() / n_batches)
        if shown:
            tqdm.write(
                f"epoch {epoch:>3}: train loss {train_loss:.4f} acc {history.train_accuracy[-1]:.4f} | "
                f"test loss {test_loss:.4f} acc {test_acc:.4f}"
            )
        if on_epoch is not None:
            on_epoch(epoch, history)
    return history


def _diverge(history: History, epoch: int, reason: str) -> None:
    history.diverged = True
    history.diverged_epoch = epoch
    history.reason = reason


def save_checkpoint(path: str | Path, model: nn.Module, config: dict[str, Any], epoch: int) -> None:
    """Weights, the run's config (plain types) and the epoch, loadable with weights_only."""
    torch.save({"model": model.state_dict(), "config": config, "epoch": epoch}, Path(path))


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint without executing code in it (``torch.load(weights_only=True)``).

    With ``model``, its weights are loaded in place. Returns the checkpoint dict.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if model is not None:
        model.load_state_dict(state["model"])
    return state
