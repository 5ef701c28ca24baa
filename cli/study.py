"""``odenet study …``: grids of runs stored as one xarray dataset (the CLI only parses and reports).

One command per registered study kind (``odenet.studies.KINDS``), generated from the
kind's class: its grid fields, the base model and training (minus what the grid sets),
and the execution knobs of ``run_study``. ``odenet study run SPEC`` runs a TOML spec.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from odenet.errors import ConfigError
from odenet.studies import KINDS, Execution, Study, StudyReport, load_study, run_study
from odenet.studies.base import Cell
from odenet.studies.runner import WorkersLostError
from odenet.studies.specfile import toml_name
from odenet.train import resolve_device
from odenet_cli.options import Flags, Knob, build, knobs_of
from odenet_cli.run import writable_file

OUT = click.Option(
    ["--out"],
    type=click.Path(path_type=Path),
    required=True,
    callback=writable_file,
    help="Result file (netCDF); partial results live in OUT.zarr while the study runs.",
)
PROGRESS = click.Option(["--progress/--no-progress"], default=None, help="Progress bar (default: on a terminal).")
EXECUTION = knobs_of(Execution)
# Parameters of the library that are options of every study command but no knob.
EXTRA_FLAGS = {"out": "--out"}


def _study_knobs(cls: type[Study]) -> list[Knob]:
    """The kind's own grid fields first, then data, seeds, model and training."""
    exclude = [f"model.{name}" for name in cls.sets] + ["train.seed"]
    knobs = knobs_of(cls, exclude=exclude)
    common = set(Study.__dataclass_fields__)
    return [k for k in knobs if k.path[0] not in common] + [k for k in knobs if k.path[0] in common]


def _execute(study: Study, out: Path, execution: Execution, progress: bool | None, flags: Flags) -> None:
    cells = study.cells()
    click.echo(f"{study.kind} study: {len(cells)} cells → {out}")

    def on_cell(cell: Cell, result: Any) -> None:
        label = " ".join(str(x) for x in cell.labels)
        if isinstance(result, BaseException):
            click.echo(f"  {label}: FAILED ({type(result).__name__}: {result})")
            return
        acc = float(result.get("final_test_accuracy", math.nan))
        state = "diverged" if int(result.get("diverged", 0)) else f"test accuracy {acc:.2%}"
        click.echo(f"  {label}: {state} ({float(result.get('train_time', math.nan)):.0f} s)")

    try:
        report = run_study(
            study,
            out,
            resume=execution.resume,
            workers=execution.workers,
            scheduler_address=execution.scheduler_address,
            worker_timeout=execution.worker_timeout,
            progress=progress,
            on_cell=on_cell,
        )
    except ConfigError as err:
        raise flags.usage(err) from None
    except WorkersLostError as err:
        raise click.ClickException(str(err).replace("with resume", "with --resume")) from None
    _report(report)


def _report(report: StudyReport) -> None:
    for labels, name, what in report.repaired:
        click.echo(f"  {' '.join(map(str, labels))}: stored {name} was damaged ({what}); computed again")
    skipped = f", {report.skipped} already done" if report.skipped else ""
    click.echo(f"{report.computed} cells computed{skipped} in {report.seconds:.0f} s; dataset written to {report.path}")
    if report.failures:
        first = report.failures[0]
        raise click.ClickException(
            f"{len(report.failures)} cell(s) failed, first {' '.join(map(str, first[0]))}: {first[1]}; "
            "fix the cause and rerun with --resume to compute only those"
        )


def kind_command(cls: type[Study]) -> click.Command:
    """``odenet study KIND``, generated from the kind's class."""
    knobs = _study_knobs(cls)
    flags = Flags([*knobs, *EXECUTION], EXTRA_FLAGS)

    def callback(**opts: Any) -> None:
        try:
            study = build(cls, cls(), knobs, opts)
            resolve_device(study.train.device)
            execution = build(Execution, Execution(), EXECUTION, opts)
        except ConfigError as err:
            raise flags.usage(err) from None
        _execute(study, opts["out"], execution, opts["progress"], flags)

    summary = inspect.cleandoc(cls.__doc__ or cls.kind).split("\n\n")[0].replace("\n", " ").replace("``", "")
    return click.Command(
        cls.kind,
        callback=callback,
        params=[k.option for k in knobs] + [OUT] + [k.option for k in EXECUTION] + [PROGRESS],
        help=summary,
        short_help=summary,
        context_settings={"show_default": True},
    )


def _run_spec(spec: Path, **opts: Any) -> None:
    if not spec.is_file():
        raise click.BadParameter(f"{spec} does not exist; give a .toml spec such as studies/degradation.toml")
    flags = Flags(EXECUTION, EXTRA_FLAGS)
    try:
        parsed = load_study(spec)
    except ConfigError as err:  # the spec's own keys, written as the spec writes them
        raise click.UsageError(err.render(toml_name)) from None
    try:
        study = parsed.study
        if opts["epochs"] is not None:
            study = replace(study, train=replace(study.train, epochs=opts["epochs"]))
        resolve_device(study.train.device)
        execution = build(Execution, Execution(workers=parsed.workers), EXECUTION, opts)
    except ConfigError as err:
        raise flags.usage(err) from None
    out = opts["out"] or parsed.out
    if opts["out"] is None:
        writable_file(None, None, out)
    _execute(study, out, execution, opts["progress"], flags)


run_spec = click.Command(
    "run",
    callback=_run_spec,
    params=[
        click.Argument(["spec"], type=click.Path(path_type=Path, dir_okay=False)),
        click.Option(
            ["--out"],
            type=click.Path(path_type=Path),
            default=None,
            callback=writable_file,
            help="Override the spec's result path.",
        ),
        click.Option(
            ["--epochs"], type=click.IntRange(min=1), default=None, help="Override the spec's epochs (quick trials)."
        ),
        *[k.option for k in EXECUTION],
        PROGRESS,
    ],
    help="Run a study from a TOML spec, e.g. odenet study run studies/degradation.toml.",
    short_help="Run a study from a TOML spec.",
)


class StudyGroup(click.Group):
    """The kinds are read from the registry when asked for, so every registered kind has a command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*sorted(k for k, cls in KINDS.items() if cls.command), "run"]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "run":
            return run_spec
        cls = KINDS.get(name)
        return kind_command(cls) if cls is not None and cls.command else None


study = StudyGroup(
    "study",
    help="Grids of runs: accuracy vs depth, step-size stability, convergence in depth, and any registered kind.",
)
