"""``odenet study …``: grids of runs stored as one xarray dataset (the CLI only parses and reports)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from cli.run import POSITIVE, writable_file
from odenet.data import DATASETS
from odenet.experiment import ModelConfig
from odenet.models.cifar import BLOCKS
from odenet.studies import (
    ConvergenceStudy,
    DepthStudy,
    ProbeConfig,
    StabilityStudy,
    StoreError,
    Study,
    StudyReport,
    run_study,
)
from odenet.studies.spec import Cell
from odenet.studies.specfile import load_study, seeds_from
from odenet.train import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, resolve_device


# -- list options ------------------------------------------------------------------------
def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    items = _split(value)
    if items is None:
        return None
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 20,32,56,110") from None


def float_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """``0.1,0.3,1`` or ``log:0.01:1:7`` (7 log-spaced values from 0.01 to 1)."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*log:([^:]+):([^:]+):(\d+)\s*", value)
    if match:
        try:
            lo, hi, n = float(match[1]), float(match[2]), int(match[3])
        except ValueError:
            raise click.BadParameter(f"{value!r}: write log:START:STOP:COUNT, e.g. log:0.01:1:7") from None
        if not (lo > 0 and hi > 0 and n >= 1):
            raise click.BadParameter(f"{value!r}: log-spaced values need START, STOP > 0 and COUNT ≥ 1")
        if n == 1:
            return (lo,)
        return tuple(float(f"{lo * (hi / lo) ** (i / (n - 1)):.6g}") for i in range(n))
    try:
        return tuple(float(item) for item in _split(value) or [])
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0.1,0.3,1") from None


def str_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    items = _split(value)
    return None if items is None else tuple(item.lower() for item in items)


def seed_count(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """``3`` → seeds 0, 1, 2; ``0,5,7`` → those seeds."""
    if value is None:
        return None
    items = _split(value) or []
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a count (3 → seeds 0,1,2) or a list such as 0,5,7") from None
    if len(numbers) == 1:
        try:
            return seeds_from(numbers[0])
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return tuple(numbers)


# -- shared options ----------------------------------------------------------------------
def _apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


COMMON = _apply(
    [
        click.option("--dataset", type=click.Choice(DATASETS), default="digits", help="Embedded or torchvision."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Folder of image datasets."),
        click.option("--seeds", callback=seed_count, default="1", help="A count (3 → seeds 0,1,2) or a list."),
        click.option("--block", type=click.Choice(list(BLOCKS)), default="preact", help="Residual function."),
        click.option("--shortcut", type=click.Choice(["A", "B"]), default="A", help="Stage-transition shortcut."),
        click.option(
            "--weights",
            type=click.Choice(["per_step", "shared", "interpolated"]),
            default="per_step",
            help="One weight set per block, one shared, or interpolated in depth.",
        ),
        click.option("--width", type=click.IntRange(min=1), default=None, help="Base width (16 conv, 64 MLP)."),
        click.option("--epochs", type=click.IntRange(min=1), default=15, help="Training epochs per cell."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Mini-batch size."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", help="Optimiser."),
        click.option("--lr", type=POSITIVE, default=0.1, help="(Peak) learning rate."),
        click.option("--momentum", type=click.FloatRange(min=0), default=0.9, help="SGD momentum."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, help="L2 weight decay."),
        click.option("--schedule", type=click.Choice(SCHEDULES), default="onecycle", help="LR schedule."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto = CUDA."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", help="Training precision."),
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            required=True,
            callback=writable_file,
            help="Result file (netCDF); partial results live in OUT.zarr while the study runs.",
        ),
    ]
)

EXECUTION = _apply(
    [
        click.option("--resume", is_flag=True, help="Continue a killed or failed study: finished cells are kept."),
        click.option("--workers", type=click.IntRange(min=1), default=1, help="Local worker processes (Dask)."),
        click.option("--scheduler-address", default=None, help="Run cells on this Dask cluster (tcp://host:8786)."),
        click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."),
    ]
)


def _base(opts: dict[str, Any]) -> dict[str, Any]:
    model = ModelConfig(
        depth=20, block=opts["block"], shortcut=opts["shortcut"], width=opts["width"], weights=opts["weights"],
        rtol=opts.get("rtol", 1e-3), atol=opts.get("atol", 1e-4), adjoint=opts.get("adjoint", False),
    )  # fmt: skip
    train = TrainConfig(
        epochs=opts["epochs"], batch_size=opts["batch_size"], optimizer=opts["optimizer"], lr=opts["lr"],
        momentum=opts["momentum"], weight_decay=opts["weight_decay"], schedule=opts["schedule"],
        device=opts["device"], precision=opts["precision"],
    )  # fmt: skip
    data_dir = None if opts["data_dir"] is None else str(opts["data_dir"])
    return {"dataset": opts["dataset"], "data_dir": data_dir, "model": model, "train": train, "seeds": opts["seeds"]}


def _usage(err: ValueError) -> click.UsageError:
    """A library message such as ``step_sizes: …`` names the option: ``--step-sizes: …``."""
    msg = str(err)
    match = re.match(r"(\w+): ", msg)
    if match and match[1] in {"depths", "solvers", "arch", "seeds", "step_sizes", "eval_solvers", "refinements",
                              "horizon", "depth", "reference"}:  # fmt: skip
        option = "--archs" if match[1] == "arch" else f"--{match[1].replace('_', '-')}"
        msg = f"{option}: {msg[match.end() :]}"
    return click.UsageError(msg)


def _build(factory: Callable[..., Study], **kwargs: Any) -> Study:
    try:
        study = factory(**kwargs)
        resolve_device(study.train.device)
    except ValueError as err:
        raise _usage(err) from None
    return study


def _execute(study: Study, out: Path, opts: dict[str, Any]) -> None:
    cells = study.cells()
    click.echo(f"{study.kind} study: {len(cells)} cells → {out}")

    def on_cell(cell: Cell, result: Any) -> None:
        label = " ".join(str(x) for x in cell.labels)
        if isinstance(result, BaseException):
            click.echo(f"  {label}: FAILED ({type(result).__name__}: {result})")
            return
        acc = result.get("final_test_accuracy", math.nan)
        state = "diverged" if result.get("diverged") else f"test accuracy {acc:.2%}"
        click.echo(f"  {label}: {state} ({result.get('train_time', math.nan):.0f} s)")

    try:
        report = run_study(
            study,
            out,
            resume=opts["resume"],
            workers=opts["workers"],
            scheduler_address=opts["scheduler_address"],
            progress=opts["progress"],
            on_cell=on_cell,
        )
    except StoreError as err:
        raise click.UsageError(str(err)) from None
    except OSError as err:  # e.g. an unreachable --scheduler-address
        raise click.UsageError(f"{err}; check --scheduler-address or the output path") from None
    _report(report)


def _report(report: StudyReport) -> None:
    skipped = f", {report.skipped} already done" if report.skipped else ""
    click.echo(f"{report.computed} cells computed{skipped} in {report.seconds:.0f} s; dataset written to {report.path}")
    if report.failures:
        first = report.failures[0]
        raise click.ClickException(
            f"{len(report.failures)} cell(s) failed, first {' '.join(map(str, first[0]))}: {first[1]}; "
            "fix the cause and rerun with --resume to compute only those"
        )


# -- commands ----------------------------------------------------------------------------
@click.group()
def study() -> None:
    """Grids of runs: accuracy vs depth, step-size stability, convergence in depth."""


@study.command(context_settings={"show_default": True})
@click.option("--solvers", callback=str_list, default="euler", help="Comma-separated solvers, e.g. euler,rk4.")
@click.option("--depths", callback=int_list, default="20,32,56,110", help="Comma-separated depths (6n+2 for conv).")
@click.option("--archs", "--arch", "archs", callback=str_list, default="residual,plain", help="residual and/or plain.")
@click.option("--step-size", type=POSITIVE, default=1.0, help="Step size h of every block.")
@click.option("--rtol", type=POSITIVE, default=1e-3, help="Adaptive solvers' relative tolerance.")
@click.option("--atol", type=POSITIVE, default=1e-4, help="Adaptive solvers' absolute tolerance.")
@click.option("--adjoint", is_flag=True, help="Adaptive solvers: adjoint gradients.")
@COMMON
@EXECUTION
def depth(**opts: Any) -> None:
    """Accuracy versus depth: solvers × depths × residual/plain × seeds.

    \b
    Example: odenet study depth --depths 20,32,56,110 --solvers euler --seeds 3 --out depth.nc
    """
    base = _base(opts)
    base["model"] = replace(base["model"], step_size=opts["step_size"])
    study_ = _build(DepthStudy, **base, solvers=opts["solvers"], depths=opts["depths"], archs=opts["archs"])
    _execute(study_, opts["out"], opts)


@study.command(context_settings={"show_default": True})
@click.option("--solvers", callback=str_list, default="euler,midpoint,rk4", help="Fixed-step solvers.")
@click.option("--step-sizes", callback=float_list, default=None,
              help="Step sizes: 0.1,0.3,1 or log:0.01:3:8 (log-spaced). Default log:0.03:3:5.")  # fmt: skip
@click.option("--depths", callback=int_list, default="20", help="One or several depths.")
@click.option("--horizon", type=POSITIVE, default=None, help="Fix T = n·h instead: h = T / blocks per stage.")
@click.option("--eigenvalues", type=click.IntRange(min=1), default=4, help="Leading eigenvalues per block.")
@click.option("--probe-samples", type=click.IntRange(min=1), default=4, help="Inputs whose Jacobians are probed.")
@COMMON
@EXECUTION
def stability(**opts: Any) -> None:
    """Step-size stability: solvers × step sizes × depths × seeds, probed before and after training.

    \b
    Example: odenet study stability --solvers euler,rk4 --step-sizes log:0.03:3:5 --out stability.nc
    """
    base = _base(opts)
    steps = opts["step_sizes"]
    if steps is None:
        steps = () if opts["horizon"] is not None else (0.03, 0.0949, 0.3, 0.949, 3.0)
    probe = ProbeConfig(samples=opts["probe_samples"], eigenvalues=opts["eigenvalues"])
    study_ = _build(StabilityStudy, **base, solvers=opts["solvers"], step_sizes=steps, depths=opts["depths"],
                    horizon=opts["horizon"], probe=probe)  # fmt: skip
    _execute(study_, opts["out"], opts)


@study.command(context_settings={"show_default": True})
@click.option("--solvers", callback=str_list, default="euler,rk4", help="Solvers to train with.")
@click.option("--step-sizes", callback=float_list, default="1", help="Training step sizes (list or log:…).")
@click.option("--depth", "depth_", type=int, default=20, help="Depth of the trained network.")
@click.option("--eval-solvers", callback=str_list, default="euler,midpoint,rk4", help="Solvers to evaluate with.")
@click.option("--refinements", callback=float_list, default="0.5,1,2,4,8", help="Evaluation steps / training steps.")
@click.option("--reference", default="dopri5", help="Adaptive reference solver.")
@click.option("--reference-tol", type=POSITIVE, default=1e-9, help="Its rtol = atol (float64).")
@COMMON
@EXECUTION
def convergence(**opts: Any) -> None:
    """Is the trained net an ODE? Train once, evaluate at n/2 … 8n steps against a tight reference.

    \b
    Example: odenet study convergence --solvers euler,rk4 --out convergence.nc
    """
    base = _base(opts)
    base["model"] = replace(base["model"], depth=opts["depth_"])
    study_ = _build(ConvergenceStudy, **base, solvers=opts["solvers"], step_sizes=opts["step_sizes"],
                    eval_solvers=opts["eval_solvers"], refinements=opts["refinements"],
                    reference=opts["reference"].lower(), reference_tol=opts["reference_tol"])  # fmt: skip
    _execute(study_, opts["out"], opts)


@study.command(name="run")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=None, callback=writable_file,
              help="Override the spec's result path.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the spec's epochs (quick trials).")
@EXECUTION
def run_spec(spec: Path, **opts: Any) -> None:
    """Run a study from a TOML spec, e.g. odenet study run studies/degradation.toml."""
    if not spec.is_file():
        raise click.BadParameter(f"{spec} does not exist; give a .toml spec such as studies/degradation.toml")
    try:
        parsed = load_study(spec)
        study_ = parsed.study
        if opts["epochs"] is not None:
            study_ = replace(study_, train=replace(study_.train, epochs=opts["epochs"]))
        resolve_device(study_.train.device)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    out = opts["out"] or parsed.out
    if opts["out"] is None:
        writable_file(click.get_current_context(), None, out)  # type: ignore[arg-type]
    if opts["workers"] == 1 and parsed.workers > 1 and opts["scheduler_address"] is None:
        opts["workers"] = parsed.workers
    _execute(study_, out, opts)
