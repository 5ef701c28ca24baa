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
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odenet.blocks import SolverError, ode_blocks
from odenet.data.core import TensorData, augment_crop_flip, batches
from odenet.errors import ConfigError
from odenet.knobs import check_choice, check_count, check_finite, knob
from odenet.labels import Variable
from odenet.norms import CALIBRATION_SAMPLES, FrozenBatchNorm, calibrate_batchnorm

__all__ = [
    "HISTORY",
    "HISTORY_VARIABLES",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "CompileNotice",
    "History",
    "TrainConfig",
    "compile_model",
    "evaluate",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "torch_threads",
    "train",
]

# The per-epoch history, defined once: ``History``, the ``odenet run`` dataset and every
# study schema are derived from these declarations.
HISTORY: tuple[Variable, ...] = (
    Variable("train_loss", ("epoch",), "mean training cross-entropy", "nat"),
    Variable("train_accuracy", ("epoch",), "training accuracy", "1"),
    Variable("test_loss", ("epoch",), "mean test cross-entropy", "nat"),
    Variable("test_accuracy", ("epoch",), "test accuracy", "1"),
    Variable("lr", ("epoch",), "learning rate at the start of the epoch", "1"),
    Variable("wall_time", ("epoch",), "wall-clock time since training started", "s"),
    Variable("nfe_forward", ("epoch",), "ODE-block function evaluations per training batch, forward", "1"),
    Variable("nfe_backward", ("epoch",), "ODE-block function evaluations per training batch, backward", "1"),
    Variable("grad_norm", ("epoch",), "mean global gradient 2-norm per batch", "1"),
)
# name → (long_name, units), for readers that want the labels only.
HISTORY_VARIABLES: dict[str, tuple[str, str]] = {v.name: (v.long_name, v.units) for v in HISTORY}

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

    epochs: int = knob(15, "Training epochs.")
    batch_size: int = knob(64, "Mini-batch size.")
    optimizer: Literal["sgd", "adam", "adamw"] = knob("sgd", "Optimiser (SGD with Nesterov momentum, Adam, AdamW).")
    lr: float = knob(0.1, "(Peak) learning rate.")
    momentum: float = knob(0.9, "SGD momentum (Nesterov).")
    weight_decay: float = knob(5e-4, "L2 weight decay (not on norms and biases).")
    schedule: Literal["onecycle", "cosine", "step", "constant"] = knob("onecycle", "Learning-rate schedule.")
    seed: int = knob(0, "Seed for weights, data split and batch order.")
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "auto = CUDA when present.")
    precision: Literal["fp32", "bf16", "fp64"] = knob("fp32", "bf16 autocast applies on CUDA only.")
    threads: int | None = knob(
        None,
        "CPU threads of torch's kernels (default: torch's own choice). Floating-point sums depend on it, so "
        "numbers repeat bit for bit only at the same count; studies fix it to 1 per cell.",
    )

    compile: bool = knob(
        False,
        "Compile every solver step with torch.compile (fixed-step solvers; adaptive and adjoint blocks run "
        "eagerly, with a one-line note). One graph per step shape, reused by every step and by later networks "
        "of that shape in the process.",
    )

    def __post_init__(self) -> None:
        check_count("epochs", self.epochs)
        check_count("batch_size", self.batch_size)
        check_finite("lr", self.lr)
        check_finite("momentum", self.momentum, strict=False)
        check_finite("weight_decay", self.weight_decay, strict=False)
        check_count("seed", self.seed, minimum=0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        if self.threads is not None:
            check_count("threads", self.threads)
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ConfigError("{device} is not a device; choose auto, cpu or cuda[:N]", device=self.device)


class History:
    """Per-epoch measurements of one run: a list per ``HISTORY`` variable (index epoch − 1).

    Read them as attributes (``history.test_accuracy``). nfe_forward / nfe_backward: mean
    function evaluations of the ODE blocks per training batch; grad_norm: mean global
    gradient 2-norm per batch. ``diverged`` with ``diverged_epoch`` (1-based) and
    ``reason`` when the run stopped early.
    """

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = {v.name: [] for v in HISTORY}
        self.diverged = False
        self.diverged_epoch: int | None = None
        self.reason = ""

    def __getattr__(self, name: str) -> list[float]:
        series = self.__dict__.get("series", {})
        if name in series:
            return series[name]
        raise AttributeError(f"History has no {name!r}; its series are {', '.join(series)}")

    def append(self, **values: float) -> None:
        """One epoch: a value for every history variable, nothing else."""
        if set(values) != set(self.series):
            raise KeyError(f"an epoch needs exactly {sorted(self.series)}, got {sorted(values)}")
        for name, value in values.items():
            self.series[name].append(value)

    @property
    def epochs(self) -> int:
        return len(self.series["train_loss"])

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: list(v) for k, v in self.series.items()},
            "diverged": self.diverged,
            "diverged_epoch": self.diverged_epoch,
            "reason": self.reason,
        }


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads`` (None: as it is).

    The count changes how reductions are split, hence the rounding of every sum: the
    same seed gives the same numbers only at the same count. The previous count is
    restored afterwards, so library callers keep their own setting.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("{device} was asked for but no CUDA device is available; use cpu or auto", device=device)
    return torch.device(device)


class CompileNotice(UserWarning):
    """``compile=True`` asked for a model that ``torch.compile`` cannot trace: it runs eagerly."""


def compile_model(model: nn.Module) -> nn.Module:
    """Compile every ODE block's step with ``torch.compile`` (``ODEBlock.compile_steps``); returns ``model``.

    Each fixed step becomes one graph, traced once per step shape and reused by every
    step, block and later network of that shape in the process (a study's next cell).
    Stem, transitions and head stay eager: in a deep network the steps are the work.
    An adaptive or adjoint block would break the graph at every step (its loop reads
    values back on the host), so a model with one runs eagerly, with a ``CompileNotice``.
    For a whole-network graph, ``torch.compile(model)`` works too; it traces the
    unrolled loop, so its compile time grows with depth.
    """
    blocks = list(ode_blocks(model))
    reasons = sorted({r for b in blocks if (r := b.compilable) is not None})
    if reasons:
        warnings.warn(f"--compile skipped, training eagerly: {'; '.join(reasons)}", CompileNotice, stacklevel=2)
        return model
    for block in blocks:
        block.compile_steps()
    return model


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
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 512,
    precision: str = "fp32",
    features: Callable[[Tensor], Tensor] | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode; one host read at the end.

    features: turns a batch of ``x`` into the model's input, e.g. ``TensorData.features``
    for uint8 pixels normalised per batch; ``None`` feeds ``x`` as it is.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    try:
        for xb, yb in batches(x, y, batch_size, shuffle=False):
            with _autocast(x.device, precision):
                logits = model(xb if features is None else features(xb))
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
    Runs on ``config.threads`` CPU threads when set.
    """
    with torch_threads(config.threads):
        return _train(model, data, config, progress, on_epoch)


def _train(
    model: nn.Module,
    data: TensorData,
    config: TrainConfig,
    progress: bool | None,
    on_epoch: Callable[[int, History], None] | None,
) -> History:
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    dtype = torch.float64 if config.precision == "fp64" else torch.float32
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # batch order and crops drawn on the device
    model.to(device=device, dtype=dtype)
    data = data.to(device, dtype=dtype)
    if device.type == "cuda" and data.kind == "image":
        model.to(memory_format=torch.channels_last)
    if config.compile:
        compile_model(model)

    n_batches = math.ceil(len(data.y_train) / config.batch_size)
    opt = _optimizer(model, config)
    sched = _scheduler(opt, config, config.epochs * n_batches)
    blocks = list(ode_blocks(model))
    params = [p for p in model.parameters() if p.requires_grad]
    history = History()
    start = time.perf_counter()
    refresh = max(1, n_batches // 10)

    frozen = any(isinstance(m, FrozenBatchNorm) for m in model.modules())
    for epoch in range(1, config.epochs + 1):
        if frozen:  # statistics of the current weights, fixed for the epoch: the field is one function
            try:
                calibrate_batchnorm(
                    model, data.features(data.x_train[:CALIBRATION_SAMPLES]), config.batch_size, FrozenBatchNorm
                )
            except SolverError as err:
                _diverge(history, epoch, f"solver failed: {err}")
                break
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
                xb = data.features(xb)  # uint8 pixels normalised here, before the pad (zeros = channel mean)
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
            test_loss, test_acc = evaluate(
                model, data.x_test, data.y_test, precision=config.precision, features=data.features
            )
        except SolverError as err:
            _diverge(history, epoch, f"solver failed during evaluation: {err}")
            break
        history.append(
            train_loss=train_loss,
            train_accuracy=correct.item() / len(data.y_train),
            test_loss=test_loss,
            test_accuracy=test_acc,
            lr=lr,
            wall_time=time.perf_counter() - start,
            nfe_forward=nfe_f / n_batches,
            nfe_backward=nfe_b / n_batches,
            grad_norm=grad_sum.item() / n_batches,
        )
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
