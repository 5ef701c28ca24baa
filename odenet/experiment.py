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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import xarray as xr
from torch import nn

from odenet.blocks import ode_blocks
from odenet.data import TensorData, load_dataset
from odenet.models import cifar_resnet, mlp_resnet
from odenet.solvers import get_method
from odenet.train import HISTORY_VARIABLES, History, TrainConfig, resolve_device, train

__all__ = [
    "ModelConfig",
    "RunConfig",
    "RunResult",
    "build_model",
    "device_name",
    "environment",
    "history_dataset",
    "run_experiment",
]


@dataclass(frozen=True)
class ModelConfig:
    """The network. Image data gets ``cifar_resnet`` (depth 6n+2 / 9n+2); vector data an
    ``mlp_resnet`` with ``depth`` residual blocks of width ``width`` (default 64)."""

    depth: int = 110
    solver: str = "euler"
    block: Literal["basic", "preact", "bottleneck"] = "preact"
    residual: bool = True
    step_size: float = 1.0
    shortcut: Literal["A", "B"] = "A"
    width: int | None = None
    weights: Literal["per_step", "shared", "interpolated"] = "per_step"
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: bool = False
    time: bool = False  # condition every field on t (ConcatConv / ConcatLinear, Chen et al. 2018)
    activation: str = "relu"  # MLP fields only: relu, tanh, softplus or gelu (smooth fields keep RK orders)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)

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


def build_model(config: ModelConfig, data: TensorData) -> nn.Module:
    """The network for ``data``'s shape and classes."""
    common = dict(
        solver=config.solver, residual=config.residual, step_size=config.step_size,
        weights=config.weights, rtol=config.rtol, atol=config.atol, adjoint=config.adjoint,
        time=config.time,
    )  # fmt: skip
    if data.kind == "image":
        if config.activation != "relu":
            raise ValueError(
                f"activation {config.activation!r} applies to MLP fields (vector data); conv fields use relu"
            )
        return cifar_resnet(
            config.depth, block=config.block, shortcut=config.shortcut, num_classes=data.num_classes,
            in_channels=data.input_shape[0], width=config.width or 16, **common,  # type: ignore[arg-type]
        )  # fmt: skip
    return mlp_resnet(
        data.input_shape[0],
        data.num_classes,
        depth=config.depth,
        width=config.width or 64,
        activation=config.activation,
        **common,  # type: ignore[arg-type]
    )


def run_experiment(config: RunConfig, progress: bool | None = None) -> RunResult:
    """Load the data, build the model, train it; divergence is recorded in the history."""
    get_method(config.model.solver)  # fail on a bad name before loading data
    device = resolve_device(config.train.device)
    data = load_dataset(config.dataset, config.data_dir, config.download, seed=config.train.seed)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, data)
    n_params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    history = train(model, data, config.train, progress=progress)
    return RunResult(
        config, history, model, n_params, data.describe(), device_name(device), time.perf_counter() - start
    )


def device_name(device: torch.device) -> str:
    """The device as provenance records it: the CUDA card's name, or the CPU and its threads."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
    for name, (long_name, units) in HISTORY_VARIABLES.items():
        ds[name] = xr.DataArray(getattr(h, name), dims="epoch", attrs={"long_name": long_name, "units": units})
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
    """Write ``history_dataset(result)`` as netCDF-4 (h5netcdf engine)."""
    history_dataset(result).to_netcdf(Path(path), engine="h5netcdf")
