"""``odenet run``: train one network and report (the CLI only parses and reports).

Its options are generated from ``RunConfig`` (model, data, training) by
``odenet_cli.options``; only where the results go (--out, --checkpoint) and the progress
bar are the command's own.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import click

from odenet.errors import ConfigError
from odenet.experiment import RunConfig, run_experiment, save_history
from odenet.files import deferred_interrupts
from odenet.solvers import get_method
from odenet.train import resolve_device, save_checkpoint
from odenet_cli.options import Flags, build, knobs_of

KNOBS = knobs_of(RunConfig)
FLAGS = Flags(KNOBS)


def writable_file(ctx: click.Context | None, param: click.Parameter | None, value: Path | None) -> Path | None:
    """Refuse an output path that cannot be written *before* any training is done.

    The folder is tried for real (a file is created there and removed): permission bits
    say nothing about /proc, read-only mounts or full disks.
    """
    if value is None:
        return None
    value = value.expanduser()
    if value.is_dir():
        raise click.BadParameter(f"{value} is a directory; give a file name such as {value / 'run.nc'}")
    parent = value.parent if str(value.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"directory {parent} does not exist; create it or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".odenet-", suffix=".probe"):
            pass
    except OSError as err:
        raise click.BadParameter(f"cannot write to {parent} ({err.strerror}); choose a path you can write to") from None
    if value.exists() and not os.access(value, os.W_OK):
        raise click.BadParameter(f"cannot write to {value}; choose a path you can write to")
    return value


OUTPUTS = [
    click.Option(
        ["--out"],
        type=click.Path(path_type=Path),
        default=None,
        callback=writable_file,
        help="Write the per-epoch history as a netCDF dataset here.",
    ),
    click.Option(
        ["--checkpoint"],
        type=click.Path(path_type=Path),
        default=None,
        callback=writable_file,
        help="Save the trained weights here (read back with torch.load(weights_only=True)).",
    ),
    click.Option(["--force"], is_flag=True, help="Overwrite an existing --out or --checkpoint file."),
    click.Option(["--progress/--no-progress"], default=None, help="Progress bars (default: only on a terminal)."),
]


def config_from(values: dict[str, Any]) -> RunConfig:
    """The run's config from the command line; every library error is a usage error (exit 2)."""
    try:
        config = build(RunConfig, RunConfig(), KNOBS, values)
        resolve_device(config.train.device)
    except ConfigError as err:
        raise FLAGS.usage(err) from None
    return config


def _run(**opts: Any) -> None:
    config = config_from(opts)
    for name in ("out", "checkpoint"):
        if opts[name] is not None and opts[name].exists() and not opts["force"]:
            raise click.UsageError(
                f"--{name} {opts[name]} exists; pass --force to overwrite it, or choose another path"
            )
    saved = [0]  # epochs whose history is on disk (the History object itself keeps growing)
    asked = [False]  # Ctrl-C seen: an interrupt raised inside a finaliser is dropped by Python

    def keep(result: Any) -> None:  # after every epoch: an interrupted run keeps what it finished
        epochs = result.history.epochs
        with deferred_interrupts():  # the file and the count of saved epochs agree
            if opts["out"] is not None:
                save_history(result, opts["out"])
            saved[0] = epochs
        if asked[0]:
            raise KeyboardInterrupt

    def on_interrupt(signum: int, frame: Any) -> None:
        asked[0] = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: keep Python's own handling
        previous = None
    try:
        result = run_experiment(config, progress=opts["progress"], on_epoch=keep)
    except ConfigError as err:  # e.g. missing dataset files
        raise FLAGS.usage(err) from None
    except KeyboardInterrupt:
        epochs = saved[0]
        where = f"; their history is in {opts['out']}" if opts["out"] is not None and epochs else ""
        click.echo(f"interrupted after {epochs} finished epoch{'s' * (epochs != 1)}{where}", err=True)
        raise SystemExit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
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


run = click.Command(
    "run",
    callback=_run,
    params=[k.option for k in KNOBS] + OUTPUTS,
    help="Train one network on one dataset and report its test accuracy.\n\n"
    "\b\nExample: odenet run --solver euler --depth 110",
    short_help="Train one network on one dataset and report its test accuracy.",
    context_settings={"show_default": True},
)
