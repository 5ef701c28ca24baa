"""``odenet run``: train one network and report (the CLI only parses and reports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from odenet.data import DATASETS, IMAGE_DATASETS, DataError
from odenet.experiment import ModelConfig, RunConfig, run_experiment, save_history
from odenet.models.cifar import BLOCKS, blocks_per_stage
from odenet.solvers import get_method, method_names
from odenet.train import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, resolve_device, save_checkpoint

POSITIVE = click.FloatRange(min=0, min_open=True)


def writable_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse an output path that cannot be written *before* any training is done."""
    if value is None:
        return None
    value = value.expanduser()
    if value.is_dir():
        raise click.BadParameter(f"{value} is a directory; give a file name such as {value / 'run.nc'}")
    parent = value.parent if str(value.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"directory {parent} does not exist; create it or choose another path")
    if not os.access(parent, os.W_OK) or (value.exists() and not os.access(value, os.W_OK)):
        raise click.BadParameter(f"cannot write to {value}; choose a path you can write to")
    return value


@click.command(context_settings={"show_default": True})
@click.option(
    "--solver",
    type=click.Choice(method_names(), case_sensitive=False),
    default="euler",
    help="Stepping rule of every block (`odenet solvers` lists them).",
)
@click.option(
    "--depth",
    type=int,
    default=110,
    help="Conv nets: 6n+2 (basic, preact) or 9n+2 (bottleneck) layers. Vector data: residual blocks.",
)
@click.option(
    "--block",
    type=click.Choice(list(BLOCKS)),
    default="preact",
    help="Residual function: preact (exact Euler step), basic (ReLU after the sum; Euler only), bottleneck.",
)
@click.option("--step-size", "step_size", type=POSITIVE, default=1.0, help="Step size h of every block.")
@click.option("--residual/--plain", default=True, help="With skip connections, or the plain (no-skip) twin.")
@click.option(
    "--shortcut",
    type=click.Choice(["A", "B"]),
    default="A",
    help="Stage transitions: A zero-pads the identity, B projects with a 1×1 conv.",
)
@click.option(
    "--weights",
    type=click.Choice(["per_step", "shared", "interpolated"]),
    default="per_step",
    help="One weight set per block, one shared set (autonomous ODE), or interpolated in depth.",
)
@click.option(
    "--width", type=click.IntRange(min=1), default=None, help="Base width (default 16 for conv nets, 64 for MLPs)."
)
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", help="Embedded or a torchvision folder.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder holding cifar10/cifar100/mnist/fashion-mnist files.",
)
@click.option("--download", is_flag=True, help="Let torchvision download missing files (needs network).")
@click.option("--epochs", type=click.IntRange(min=1), default=15, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Mini-batch size.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", help="Optimiser.")
@click.option("--lr", type=POSITIVE, default=0.1, help="(Peak) learning rate.")
@click.option("--momentum", type=click.FloatRange(min=0), default=0.9, help="SGD momentum (Nesterov).")
@click.option(
    "--weight-decay", type=click.FloatRange(min=0), default=5e-4, help="L2 weight decay (not on norms, biases)."
)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="onecycle", help="Learning-rate schedule.")
@click.option("--seed", type=int, default=0, help="Seed for weights, data split and batch order.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto = CUDA when present.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", help="bf16 autocast applies on CUDA only.")
@click.option("--rtol", type=POSITIVE, default=1e-3, help="Relative tolerance of adaptive solvers.")
@click.option("--atol", type=POSITIVE, default=1e-4, help="Absolute tolerance of adaptive solvers.")
@click.option("--adjoint", is_flag=True, help="Adaptive solvers: gradients by the adjoint method.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    callback=writable_file,
    help="Write the per-epoch history as a netCDF dataset here.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    callback=writable_file,
    help="Save the trained weights here (read back with torch.load(weights_only=True)).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: only on a terminal).")
def run(**opts: Any) -> None:
    """Train one network on one dataset and report its test accuracy.

    \b
    Example: odenet run --solver euler --depth 110
    """
    config = _config(opts)
    try:
        result = run_experiment(config, progress=opts["progress"])
    except DataError as err:
        raise click.UsageError(str(err)) from None
    h = result.history
    if opts["out"] is not None:
        save_history(result, opts["out"])
    if opts["checkpoint"] is not None:
        save_checkpoint(opts["checkpoint"], result.model, {"config": config.to_json()}, h.epochs)
    method = get_method(config.model.solver)
    parts = [
        f"{config.model.solver} {'residual' if config.model.residual else 'plain'} depth {config.model.depth}",
        f"on {result.data}",
        f"{result.parameters:,} parameters",
    ]
    if h.epochs:
        parts.append(f"test accuracy {h.test_accuracy[-1]:.2%} after {h.epochs} epoch{'s' * (h.epochs != 1)}")
    if h.diverged:
        parts.append(f"DIVERGED at epoch {h.diverged_epoch} ({h.reason})")
    parts.append(f"{result.wall_time:.1f} s on {result.device}")
    if method.adaptive and h.epochs:
        parts.append(f"NFE/batch {h.nfe_forward[-1]:.0f} forward, {h.nfe_backward[-1]:.0f} backward")
    click.echo(" | ".join(parts))
    if opts["out"] is not None:
        click.echo(f"history written to {opts['out']}")


def _config(opts: dict[str, Any]) -> RunConfig:
    """Build and validate the config; every library ValueError becomes a usage error (exit 2)."""
    try:
        model = ModelConfig(
            depth=opts["depth"], solver=str(opts["solver"]).lower(), block=opts["block"],
            residual=opts["residual"], step_size=opts["step_size"], shortcut=opts["shortcut"],
            width=opts["width"], weights=opts["weights"], rtol=opts["rtol"], atol=opts["atol"],
            adjoint=opts["adjoint"],
        )  # fmt: skip
        train = TrainConfig(
            epochs=opts["epochs"], batch_size=opts["batch_size"], optimizer=opts["optimizer"],
            lr=opts["lr"], momentum=opts["momentum"], weight_decay=opts["weight_decay"],
            schedule=opts["schedule"], seed=opts["seed"], device=opts["device"],
            precision=opts["precision"],
        )  # fmt: skip
        config = RunConfig(model, str(opts["dataset"]), _str(opts["data_dir"]), bool(opts["download"]), train)
        # Checks that need no data, done before any loading or training.
        method = get_method(model.solver)
        if config.dataset in IMAGE_DATASETS:
            blocks_per_stage(model.depth, model.block)
            if model.block == "basic" and method.tableau.stages != 1:
                raise ValueError(
                    f"--block basic applies a ReLU after each sum (a projected Euler step) and works with "
                    f"--solver euler only, not {method.name}; use --block preact"
                )
        elif model.depth < 1:
            raise ValueError(f"--depth must be a positive number of residual blocks, got {model.depth}")
        if not model.residual and method.adaptive:
            raise ValueError(
                f"--plain drops the identity from fixed steps; {method.name} is adaptive: use a fixed-step solver"
            )
        if model.adjoint and not method.adaptive:
            raise ValueError(f"--adjoint needs an adaptive solver (dopri5, …), not {method.name}")
        resolve_device(train.device)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    return config


def _str(value: object) -> str | None:
    return None if value is None else str(value)
