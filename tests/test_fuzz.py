"""Property-based tests: every option of `run`, `study` and `plot` fed generated values.

Whatever a user types, the command answers with exit code 0, 1 or 2 and at most a
one-line message, never a traceback (issue 13). The expensive call behind each command
(training, a study, drawing) is replaced by a stub that records that validation passed,
so these tests exercise the parsing and validation paths only and stay fast.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odenet_cli.plot as plot_cli
import odenet_cli.run as run_cli
import odenet_cli.study as study_cli
from odenet_cli.main import main

ROOT = Path(__file__).resolve().parents[1]


class ReachedError(Exception):
    """Validation passed and the command called the library."""


SPECIAL = ["nan", "inf", "-inf", "", "0", "-1", "1e400", "1e-400", "x", "log:1:2:3", "log:0:1:5", "3,3", ",",
           "1,2,x", "dopri5", "euler", "-0", "99999999999999999999", "A", "basic", "/proc/x",
           "/nonexistent/dir/f.nc"]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


def _arguments(command: click.Command, draw: st.DrawFn) -> list[str]:
    args: list[str] = []
    for param in command.params:
        if not isinstance(param, click.Option) or not draw(st.booleans()):
            continue
        if param.is_flag:
            names = param.opts + param.secondary_opts
            args.append(draw(st.sampled_from(names)))
        else:
            args += [param.opts[0], draw(VALUES)]
    return args


OUTCOMES: list[str] = []  # what the examples ended in, for the coverage check below


def _assert_clean(result) -> None:
    exc = result.exception
    OUTCOMES.append("reached" if isinstance(exc, ReachedError) else f"exit {result.exit_code}")
    if isinstance(exc, ReachedError):
        return  # every check passed: the library was called
    assert exc is None or isinstance(exc, SystemExit), f"{type(exc).__name__}: {exc}\n{result.output}"
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) <= 1, result.output


def _stub(*args, **kwargs):
    raise ReachedError


FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.data())
def test_run_never_shows_a_traceback(data, monkeypatch, tmp_path):
    monkeypatch.setattr(run_cli, "run_experiment", _stub)
    args = _arguments(run_cli.run, data.draw)
    monkeypatch.chdir(tmp_path)
    _assert_clean(CliRunner().invoke(main, ["run", *args]))


@pytest.mark.parametrize("kind", ["depth", "stability", "convergence"])
@FUZZ
@given(data=st.data())
def test_study_commands_never_show_a_traceback(kind, data, monkeypatch, tmp_path):
    monkeypatch.setattr(study_cli, "run_study", _stub)
    command = study_cli.kind_command(study_cli.KINDS[kind])
    args = _arguments(command, data.draw)
    if "--out" not in args:
        args += ["--out", "result.nc"]
    monkeypatch.chdir(tmp_path)
    _assert_clean(CliRunner().invoke(main, ["study", kind, *args]))


@FUZZ
@given(data=st.data())
def test_study_run_and_plot_never_show_a_traceback(data, monkeypatch, tmp_path):
    monkeypatch.setattr(study_cli, "run_study", _stub)
    monkeypatch.setattr("odenet.plots.plot_study", _stub)
    spec = data.draw(st.sampled_from(["studies/degradation.toml", "nope.toml", "bad.toml", ""]))
    with CliRunner().isolated_filesystem(temp_dir=tmp_path) as cwd:
        with open(f"{cwd}/bad.toml", "w") as f:
            f.write(
                data.draw(st.sampled_from(['kind = "depth"\ndepths = ', 'kind = "x"', "[train]\nepochs = -1", "\x01"]))
            )
        root = __import__("pathlib").Path(__file__).resolve().parents[1]
        spec_path = str(root / spec) if spec.startswith("studies/") else spec
        args = _arguments(study_cli.run_spec, data.draw)
        _assert_clean(CliRunner().invoke(main, ["study", "run", spec_path, *args]))
        result = data.draw(
            st.sampled_from([str(root / "studies/results/step-size-stability.nc"), "missing.nc", "bad.toml", "."])
        )
        _assert_clean(CliRunner().invoke(main, ["plot", result, *_arguments(plot_cli.plot, data.draw)]))


def test_the_fuzzing_reaches_both_refusals_and_the_library():
    # Runs after the property tests in this module: both outcomes must have occurred, or
    # the generated values would test only one side of the validation.
    if not OUTCOMES:
        pytest.skip("run together with the property tests of this module")
    assert "reached" in OUTCOMES and "exit 2" in OUTCOMES, sorted(set(OUTCOMES))
