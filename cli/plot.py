"""``odenet plot``: draw the paper figures of a study result (the CLI only parses and reports)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

# Kept in step with odenet.plots.FORMATS; not imported from there so that `odenet --help`
# works, and stays fast, without matplotlib.
FORMATS = ("png", "svg", "pdf")


def result_path(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """Refuse a result path that does not exist before matplotlib is even imported."""
    value = value.expanduser()
    if not value.exists():
        raise click.BadParameter(f"{value} does not exist; give the .nc file or .zarr folder that `odenet study` wrote")
    return value


def output_dir(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """Refuse an --out that is a file or cannot be created/written (it is created if missing)."""
    value = value.expanduser()
    if value.exists() and not value.is_dir():
        raise click.BadParameter(f"{value} is a file; give a directory for the figures (it is created if missing)")
    try:  # tried for real: permission bits say nothing about /proc or read-only mounts
        value.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=value, prefix=".odenet-", suffix=".probe"):
            pass
    except OSError as err:
        raise click.BadParameter(
            f"cannot write to {value} ({err.strerror}); choose a directory you can write to"
        ) from None
    return value


@click.command(context_settings={"show_default": True})
@click.argument("result", type=click.Path(path_type=Path), callback=result_path)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    callback=output_dir,
    help="Directory for the figures (created if missing).",
)
@click.option(
    "--format",
    "-f",
    "formats",
    type=click.Choice(FORMATS, case_sensitive=False),
    multiple=True,
    default=("png",),
    help="File format; repeat for several (--format png --format svg).",
)
@click.option("--dpi", type=click.IntRange(min=50, max=1200), default=200, help="Resolution of PNG files.")
def plot(result: Path, out: Path, formats: tuple[str, ...], dpi: int) -> None:
    """Draw the figures of a study RESULT (netCDF file or .zarr store) into --out.

    The figures depend on the study kind (those registered with odenet.plots.figures_for,
    or generic ones drawn from the labelled data);
    unfinished cells of a running study are left out. Prints each file written.

    \b
    Example: odenet plot studies/depth.nc --out figures/ --format png --format svg
    """
    try:
        from odenet.plots import PlotError, open_result, plot_study
    except ModuleNotFoundError as err:  # matplotlib is needed only here
        if not (err.name or "").startswith("matplotlib"):
            raise
        raise click.UsageError("plotting needs matplotlib; install it with `pip install matplotlib`") from None
    try:
        ds = open_result(result)
        written = plot_study(ds, out, formats=tuple(dict.fromkeys(f.lower() for f in formats)), dpi=dpi)
    except PlotError as err:
        raise click.UsageError(str(err)) from None
    for path in written:
        click.echo(str(path))
