"""``odenet``: the command-line entry point.

Each command parses and validates its options, calls one library function and reports.
No numerics live here.
"""

from __future__ import annotations

import warnings
from typing import Any

import click

from odenet import __version__
from odenet.solvers import METHODS
from odenet.train import CompileNotice
from odenet_cli.plot import plot
from odenet_cli.run import run
from odenet_cli.study import study


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="odenet")
def main() -> None:
    """Deep residual networks as discretised ODEs.

    A residual block is one step of an ODE solver: x_{k+1} = x_k + h·F_k(x_k).
    """
    warnings.showwarning = _notices_as_lines(warnings.showwarning)


def _notices_as_lines(show: Any) -> Any:
    """Library notices (``CompileNotice``) as one ``note:`` line on stderr; other warnings as before."""
    if getattr(show, "odenet_notes", False):
        return show

    def showwarning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, CompileNotice):
            click.echo(f"note: {message}", err=True)
        else:
            show(message, category, *args, **kwargs)

    showwarning.odenet_notes = True  # type: ignore[attr-defined]
    return showwarning


@main.command()
@click.option("--adaptive/--fixed", default=None, help="Show only adaptive or only fixed-step methods.")
def solvers(adaptive: bool | None) -> None:
    """List every integration method: order, stages, and whether it is adaptive."""
    rows = [m for m in METHODS.values() if adaptive is None or m.adaptive == adaptive]
    click.echo(f"{'solver':<14} {'order':>5} {'stages':>6}  {'adaptive':<8}  description")
    for m in rows:
        click.echo(
            f"{m.name:<14} {m.order:>5} {m.stages:>6}  {'yes' if m.adaptive else 'no':<8}  "
            f"{m.description.split('.')[0]}"
        )


main.add_command(run)
main.add_command(study)
main.add_command(plot)

if __name__ == "__main__":  # pragma: no cover
    main()
