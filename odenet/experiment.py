"""One experiment end to end: config → data → model → training → labelled dataset.

``RunConfig`` gathers what the ``odenet run`` command sets (model, data, training);
``run_experiment`` executes it; ``history_dataset`` turns the outcome into an
``xarray.Dataset`` with units, long names and provenance.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import xarray as xr
from torch import nn

from odenet.blocks import Memory, check_solver_options, check_step_size, check_tolerances, ode_blocks
from odenet.data import DATASETS, TensorData, data_kind, load_dataset
from odenet.depth import WeightSharing
from odenet.errors import ConfigError
from odenet.fields import ACTIVATIONS, OUTPUTS
from odenet.files import write_atomically
from odenet.knobs import check_choice, check_count, knob
from odenet.models import cifar_resnet, mlp_resnet
from odenet.models.cifar import blocks_per_stage, check_block
from odenet.norms import NORMS
from odenet.solvers import get_method, method_names
from odenet.train import HISTORY, History, TrainConfig, resolve_device, train

__all__ = [
    "ModelConfig",
    "RunConfig",
    "RunResult",
    "build_model",
    "check_fits",
    "device_name",
    "environment",
    "history_dataset",
    "parameter_estimate",
    "run_experiment",
]


@dataclass(frozen=True)
class ModelConfig:
    """The network. Image data gets ``cifar_resnet`` (depth 6n+2 / 9n+2); vector data an
    ``mlp_resnet`` with ``depth`` residual blocks of width ``width`` (default 64).

    Validated on construction with the rules of the layers below (the block's, the
    model family's); what also depends on the data (the depth form, the activation) is
    checked by ``check_data`` once the data kind is known.
    """

    depth: int = knob(110, "Conv nets: 6n+2 (basic, preact) or 9n+2 (bottleneck) layers. Vector data: residual blocks.")
    solver: str = knob("euler", "Stepping rule of every block (`odenet solvers` lists them).", choices=method_names)
    block: Literal["basic", "preact", "bottleneck"] = knob(
        "preact", "Residual function: preact (exact Euler step), basic (ReLU after the sum; Euler only), bottleneck."
    )
    residual: bool = knob(True, "With skip connections, or the plain (no-skip) twin.", off="plain")
    step_size: float = knob(1.0, "Step size h of every block.")
    shortcut: Literal["A", "B"] = knob("A", "Stage transitions: A zero-pads the identity, B projects with a 1×1 conv.")
    norm: Literal["auto", "batch", "frozen_batch", "group", "none"] = knob(
        "auto",
        "Normalisation in the fields: auto is batch in discrete ResNets and group inside adaptive or "
        "shared-weight fields, where batch norm's running statistics come from every solver call (rejected "
        "steps, adjoint backward solves), not the forward trajectory; batch there only if asked for. "
        "frozen_batch: statistics frozen between calibrations on training data (a fixed field).",
    )
    width: int | None = knob(None, "Base width (default 16 for conv nets, 64 for MLPs).")
    widen: int = knob(
        1,
        "Widening factor k (Zagoruyko & Komodakis 2016): conv stages get k·width·(1, 2, 4) channels "
        "(the stem keeps width); an MLP's residual stream gets k·width features.",
    )
    branch_output: Literal["linear", "relu"] = knob(
        "linear", "Residual branch output: linear, x + h·F(x), or relu, x + h·ReLU(F(x)) (the state only grows)."
    )
    weights: Literal["per_step", "shared", "interpolated"] = knob(
        "per_step", "One weight set per block, one shared set (autonomous ODE), or interpolated in depth."
    )
    rtol: float = knob(1e-3, "Relative tolerance of adaptive solvers.")
    atol: float = knob(1e-4, "Absolute tolerance of adaptive solvers.")
    adjoint: bool = knob(False, "Gradients by the adjoint method: shorthand for memory=adjoint.")
    memory: Memory = knob(
        "backprop",
        "How ODE blocks pay for gradients: backprop stores every step; checkpoint recomputes segments "
        "(memory ~ sqrt(steps), the same gradient); adjoint solves the adjoint ODE backwards (memory not "
        "growing with steps for shared weights; the continuous problem's gradient, not the network's).",
    )
    time: bool = knob(False, "Condition every field on t (ConcatConv / ConcatLinear, Chen et al. 2018).")
    activation: Literal["relu", "tanh", "softplus", "gelu"] = knob(
        "relu", "MLP fields only: smooth activations (tanh, softplus) keep the RK orders."
    )

    def __post_init__(self) -> None:
        method = get_method(self.solver)
        object.__setattr__(self, "solver", method.name)  # "RK4" and "rk4" are one config
        check_count("depth", self.depth)
        check_block(self.block, method, self.shortcut)
        check_step_size(self.step_size)
        check_tolerances(self.rtol, self.atol)
        if self.adjoint and self.memory == "backprop":  # the older spelling of memory="adjoint"
            object.__setattr__(self, "memory", "adjoint")
        mode = check_solver_options(
            method, residual=self.residual, adjoint=self.adjoint, memory=self.memory, projected=self.block == "basic"
        )
        object.__setattr__(self, "adjoint", mode == "adjoint")
        if self.width is not None:
            check_count("width", self.width)
        check_count("widen", self.widen)
        check_choice("branch_output", self.branch_output, OUTPUTS)
        check_choice("weights", self.weights, get_args(WeightSharing))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("norm", self.norm, NORMS)

    def check_data(self, kind: str) -> None:
        """The rules that depend on the data: ``kind`` is ``"image"`` or ``"vector"``."""
        if kind == "image":
            blocks_per_stage(self.depth, self.block)
            if self.activation != "relu":
                raise ConfigError(
                    "{activation} applies to MLP fields (vector data); conv fields use relu",
                    activation=self.activation,
                )


@dataclass(frozen=True)
class RunConfig:
    """One ``odenet run``: the model, the data, the training."""

    model: ModelConfig = knob(default_factory=ModelConfig)
    dataset: str = knob("digits", "Embedded, or a torchvision folder given by data_dir.", choices=lambda: DATASETS)
    data_dir: str | None = knob(None, "Folder holding cifar10/cifar100/mnist/fashion-mnist files.")
    download: bool = knob(False, "Let torchvision download missing files (needs network).")
    train: TrainConfig = knob(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        self.model.check_data(data_kind(self.dataset))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class RunResult:
    config: RunConfig
    history: History
    model: nn.Module
    parameters: int
    data: str
    device: str
    wall_time: float


# Bytes per parameter while training: the weight, its gradient, the optimiser's state
# (momentum; Adam keeps two) and headroom for a float64 probe copy.
TRAINING_BYTES_PER_PARAMETER = 24


def parameter_estimate(config: ModelConfig, kind: str) -> int:
    """About how many parameters ``config`` has on ``kind`` data, without building it.

    Conv nets: three stages of n blocks at widths c = kw, 2kw, 4kw (k = ``widen``). A
    pre-activation or basic block has two 3×3 convolutions (18c² weights); the first
    block of a stage starts from the previous width c' (9c'c + 9c²; the first stage's
    c' is the stem's w). With k = 1 that is (378·n − 90)·w², within 1% of the exact
    count from ResNet-20 on, and WRN-28-10 comes out at 36.2M of 36.5M (norms, 1×1
    projections and the head are left out). A bottleneck block (1×1–3×3–1×1) has about
    17c² at its inner width c: 357·n·(kw)². MLPs: 2·(kw)² per block.
    """
    k = config.widen
    if kind == "image":
        n = blocks_per_stage(config.depth, config.block)
        w = config.width or 16
        if config.block == "bottleneck":
            return 357 * n * (k * w) ** 2
        total, previous = 0, w
        for c in (k * w, 2 * k * w, 4 * k * w):
            total += 9 * previous * c + 9 * c * c + (n - 1) * 18 * c * c
            previous = c
        return total
    w = (config.width or 64) * k
    return 2 * config.depth * w * w


def check_fits(config: ModelConfig, kind: str, available: int | None = None) -> None:
    """Refuse a network too large to train in this machine's available memory, with the estimate."""
    import psutil

    available = psutil.virtual_memory().available if available is None else available
    params = parameter_estimate(config, kind)
    need = params * TRAINING_BYTES_PER_PARAMETER
    if need > available:
        raise ConfigError(
            "{depth} makes a network of about "
            + f"{params:.3g} parameters, about {need / 2**30:.3g} GiB to train, and this machine has "
            + f"{available / 2**30:.3g} GiB available: choose a smaller depth or width",
            depth=config.depth,
        )


def build_model(config: ModelConfig, data: TensorData) -> nn.Module:
    """The network for ``data``'s shape and classes."""
    common = dict(
        solver=config.solver, residual=config.residual, step_size=config.step_size,
        weights=config.weights, rtol=config.rtol, atol=config.atol, memory=config.memory,
        time=config.time, norm=config.norm, output=config.branch_output,
    )  # fmt: skip
    config.check_data(data.kind)
    if data.kind == "image":
        return cifar_resnet(
            config.depth, block=config.block, shortcut=config.shortcut, num_classes=data.num_classes,
            in_channels=data.input_shape[0], width=config.width or 16, widen=config.widen,
            **common,  # type: ignore[arg-type]
        )  # fmt: skip
    return mlp_resnet(
        data.input_shape[0],
        data.num_classes,
        depth=config.depth,
        width=(config.width or 64) * config.widen,
        activation=config.activation,
        **common,  # type: ignore[arg-type]
    )


def run_experiment(
    config: RunConfig, progress: bool | None = None, on_epoch: Callable[[RunResult], None] | None = None
) -> RunResult:
    """Load the data, build the model, train it; divergence is recorded in the history.

    on_epoch: called with the result so far after every epoch (e.g. to write the history,
    so that an interrupted run keeps its finished epochs).
    """
    device = resolve_device(config.train.device)
    check_fits(config.model, data_kind(config.dataset))
    data = load_dataset(config.dataset, config.data_dir, config.download, seed=config.train.seed)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, data)
    n_params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()

    def result(history: History) -> RunResult:
        device_text = device_name(device, config.train.threads)
        return RunResult(config, history, model, n_params, data.describe(), device_text, time.perf_counter() - start)

    def each_epoch(epoch: int, history: History) -> None:
        if on_epoch is not None:
            on_epoch(result(history))

    return result(train(model, data, config.train, progress=progress, on_epoch=each_epoch))


def device_name(device: torch.device, threads: int | None = None) -> str:
    """The device as provenance records it: the CUDA card's name, or the CPU and the threads
    the work ran on (``threads``, or this process's current count)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    count = torch.get_num_threads() if threads is None else threads
    return f"cpu ({platform.processor() or platform.machine()}, {count} thread{'s' * (count != 1)})"


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)


def environment(device: str = "") -> dict[str, str]:
    """Provenance for ``attrs``: versions, git commit of the odenet source, device, host."""
    import odenet

    source = Path(odenet.__file__).parent
    try:
        commit = _git(source, "rev-parse", "HEAD").stdout.strip() or "unknown"
        # Uncommitted edits to tracked files make the commit alone an incomplete record.
        if commit != "unknown" and _git(source, "diff", "--quiet", "HEAD", "--", ".").returncode == 1:
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "odenet_version": odenet.__version__,
        "git_commit": commit,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass h5py rejects
        "python_version": platform.python_version(),
        "device": device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def history_dataset(result: RunResult) -> xr.Dataset:
    """The run's history as an ``xarray.Dataset`` with dimension ``epoch``."""
    h = result.history
    epochs = list(range(1, h.epochs + 1))
    ds = xr.Dataset(coords={"epoch": ("epoch", epochs, {"long_name": "epoch", "units": "1"})})
    for var in HISTORY:
        ds[var.name] = xr.DataArray(h.series[var.name], dims=var.dims, attrs=var.attrs)
    ds.attrs.update(
        {
            "title": "odenet run",
            "config": result.config.to_json(),
            "parameters": result.parameters,
            "data": result.data,
            "diverged": int(h.diverged),
            "diverged_epoch": h.diverged_epoch or 0,
            "diverged_reason": h.reason,
            "ode_blocks": len(list(ode_blocks(result.model))),
            **environment(result.device),
        }
    )
    return ds


def save_history(result: RunResult, path: str | Path) -> None:
    """Write ``history_dataset(result)`` as netCDF-4 (h5netcdf engine), atomically.

    The file is written beside ``path`` and moved into place with interrupts held back
    (``odenet.files.write_atomically``), so neither a reader nor a run interrupted while
    writing ever sees half a file.
    """
    dataset = history_dataset(result)
    write_atomically(path, lambda tmp: dataset.to_netcdf(tmp, engine="h5netcdf"))
