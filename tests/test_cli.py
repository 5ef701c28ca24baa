"""The odenet command line (this layer only parses, calls the library and reports)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from odenet import __version__
from odenet.solvers import METHODS
from odenet_cli.main import main


def test_solvers_lists_every_method_with_order_stages_and_kind():
    result = CliRunner().invoke(main, ["solvers"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert set(lines) == set(METHODS)
    for name, method in METHODS.items():
        assert int(lines[name][1]) == method.order
        assert int(lines[name][2]) == method.stages
        assert lines[name][3] == ("yes" if method.adaptive else "no")


def test_solvers_filter():
    result = CliRunner().invoke(main, ["solvers", "--adaptive"])
    names = {line.split()[0] for line in result.output.splitlines()[1:]}
    assert names == {m.name for m in METHODS.values() if m.adaptive}


def test_version_and_help():
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "solvers" in result.output


def test_unknown_command_is_a_usage_error_without_traceback():
    result = CliRunner().invoke(main, ["sovlers"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "No such command" in result.output


def test_console_script_is_installed_as_python_module_entry():
    # `python -m odenet_cli.main` is the same application as the `odenet` console script.
    out = subprocess.run(
        [sys.executable, "-m", "odenet_cli.main", "--version"], capture_output=True, text=True, check=True
    )
    assert "odenet" in out.stdout
