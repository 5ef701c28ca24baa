"""One rule, one place: each rule is stated once and read the same way through every front end.

* every invalid setting gives the same sentence through the library and the command
  line (the CLI only writes parameter names as its flags);
* no library message names a command-line flag;
* the layers of ``ARCHITECTURE.md`` hold: no module imports from a layer above it;
* what a front end shows is derived: the CLI's options and defaults from the config
  dataclasses, the history and the study schema from one declaration;
* the installed distribution has no top-level ``cli`` module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from odenet.errors import ConfigError, python_name
from odenet.experiment import ModelConfig, RunConfig, history_dataset
from odenet.studies import KINDS, StabilityStudy
from odenet.studies.schema import variables
from odenet.train import HISTORY, History, TrainConfig
from odenet_cli.main import main
from odenet_cli.run import FLAGS, KNOBS

ROOT = Path(__file__).resolve().parents[1]

# (library call, the same setting on the command line): every rule of a model or a run.
INVALID = [
    (lambda: RunConfig(ModelConfig(depth=21)), ["--depth", "21"]),
    (lambda: RunConfig(ModelConfig(depth=21, block="bottleneck")), ["--depth", "21", "--block", "bottleneck"]),
    (lambda: ModelConfig(depth=0), ["--depth", "0"]),
    (lambda: ModelConfig(solver="rk5"), ["--solver", "rk5"]),
    (lambda: ModelConfig(step_size=0.0), ["--step-size", "0"]),
    (lambda: ModelConfig(step_size=-1.0), ["--step-size", "-1"]),
    (lambda: ModelConfig(step_size=float("nan")), ["--step-size", "nan"]),
    (lambda: ModelConfig(step_size=float("inf")), ["--step-size", "inf"]),
    (lambda: ModelConfig(rtol=0.0), ["--rtol", "0"]),
    (lambda: ModelConfig(atol=float("nan")), ["--atol", "nan"]),
    (lambda: ModelConfig(block="basic", solver="rk4"), ["--block", "basic", "--solver", "rk4"]),
    (lambda: ModelConfig(residual=False, solver="dopri5"), ["--plain", "--solver", "dopri5"]),
    (lambda: ModelConfig(adjoint=True, residual=False), ["--adjoint", "--plain"]),
    (lambda: ModelConfig(memory="checkpoint", solver="dopri5"), ["--memory", "checkpoint", "--solver", "dopri5"]),
    (lambda: ModelConfig(memory="adjoint", block="basic"), ["--memory", "adjoint", "--block", "basic"]),
    (lambda: ModelConfig(memory="checkpoint", adjoint=True), ["--memory", "checkpoint", "--adjoint"]),
    (lambda: ModelConfig(width=0), ["--width", "0"]),
    (lambda: RunConfig(ModelConfig(activation="tanh")), ["--activation", "tanh"]),
    (lambda: RunConfig(dataset="imagenet"), ["--dataset", "imagenet"]),
    (lambda: TrainConfig(epochs=0), ["--epochs", "0"]),
    (lambda: TrainConfig(batch_size=0), ["--batch-size", "0"]),
    (lambda: TrainConfig(lr=0.0), ["--lr", "0"]),
    (lambda: TrainConfig(lr=float("inf")), ["--lr", "inf"]),
    (lambda: TrainConfig(momentum=float("nan")), ["--momentum", "nan"]),
    (lambda: TrainConfig(weight_decay=-1.0), ["--weight-decay", "-1"]),
    (lambda: TrainConfig(seed=-1), ["--seed", "-1"]),
]


@pytest.mark.parametrize(("library", "args"), INVALID, ids=[" ".join(a) for _, a in INVALID])
def test_every_rule_reads_the_same_through_the_library_and_the_cli(library, args):
    with pytest.raises(ConfigError) as info:
        library()
    err = info.value
    # The library speaks Python: the sentence with each parameter as name=value …
    assert str(err) == err.render(python_name) and "--" not in str(err)
    # … and the command line the same sentence with each parameter as its flag.
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {err.render(FLAGS)}"], result.output
    # The two differ only where a parameter is written: remove every rendering, same text.
    assert _skeleton(err, python_name) == _skeleton(err, FLAGS)


def _skeleton(err: ConfigError, name) -> str:
    text = err.render(name)
    for param, value in err.mentions.items():
        text = text.replace(name(param, value), "□")
    return text


def test_study_grids_read_the_same_through_the_library_and_the_cli(tmp_path):
    cases = [
        (lambda: StabilityStudy(step_sizes=(-1.0,)), ["stability", "--step-sizes", "-1"]),
        (
            lambda: StabilityStudy(step_sizes=(0.1,), horizon=2.0),
            ["stability", "--step-sizes", "0.1", "--horizon", "2"],
        ),
        (lambda: StabilityStudy(depths=(21,)), ["stability", "--depths", "21"]),
        (lambda: StabilityStudy(seeds=(-1,)), ["stability", "--seeds", "-1,2"]),
    ]
    from odenet_cli.options import Flags
    from odenet_cli.study import EXECUTION, EXTRA_FLAGS, _study_knobs

    flags = Flags([*_study_knobs(StabilityStudy), *EXECUTION], EXTRA_FLAGS)
    for library, args in cases:
        with pytest.raises(ConfigError) as info:
            library()
        result = CliRunner().invoke(main, ["study", *args, "--out", str(tmp_path / "x.nc")])
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and errors == [f"Error: {info.value.render(flags)}"], result.output


# A flag in a message: two dashes and a word, not preceded by a word character or a dash.
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def test_no_library_message_names_a_command_line_flag():
    offenders = []
    for path in sorted((ROOT / "odenet").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for const in ast.walk(node.exc):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str) and FLAG.search(const.value):
                        offenders.append(f"{path.relative_to(ROOT)}:{const.lineno}: {const.value!r}")
    assert not offenders, "\n".join(offenders)


# ARCHITECTURE.md's layers, bottom to top; a module may import only from its own layer or below.
LAYERS = {
    "errors": 0, "labels": 0, "knobs": 0, "files": 0,
    "tableaus": 1, "data": 1,
    "adaptive": 2, "adjoint": 2, "solvers": 2,
    "fields": 3, "depth": 3, "norms": 3,
    "blocks": 4,
    "models": 5,
    "train": 6,
    "experiment": 7, "probes": 7, "memory": 7, "landscape": 7, "lesions": 7, "shattered": 7,
    "studies": 8,
    "plots": 9,
}  # fmt: skip


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "odenet" or len(parts) < 2:
        return None
    return LAYERS[parts[1]]


def test_no_module_imports_from_a_layer_above_it():
    violations = []
    for path in sorted((ROOT / "odenet").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts)
        if module in ("odenet.__init__", "odenet"):
            continue  # the package re-exports the public names of every layer
        own = _layer(module.removesuffix(".__init__"))
        assert own is not None, f"{module} has no layer in LAYERS"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] in ("click", "odenet_cli", "cli"):
                    violations.append(f"{module} imports {name}: the library never reads CLI state")
                target = _layer(name)
                if target is not None and target > own:
                    violations.append(f"{module} (layer {own}) imports {name} (layer {target})")
    assert not violations, "\n".join(violations)


def test_cli_options_and_defaults_come_from_the_dataclasses():
    defaults = RunConfig()
    by_path = {k.path: k for k in KNOBS}
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        for f in fields(cls):
            knob = by_path[(section, f.name)]
            assert knob.option.help and knob.option.help.startswith(f.metadata["help"])
            if not knob.option.is_flag or knob.option.secondary_opts:
                assert knob.option.default == getattr(getattr(defaults, section), f.name), f.name
    assert list(by_path[("model", "block")].option.type.choices) == ["basic", "preact", "bottleneck"]
    assert by_path[("model", "residual")].option.opts + by_path[("model", "residual")].option.secondary_opts == [
        "--residual",
        "--plain",
    ]
    # One default per knob: a study's command shows its dataclass's default.
    command = click.Context(main).command.get_command(click.Context(main), "study")
    stability = command.get_command(click.Context(command), "stability")
    step_sizes = next(p for p in stability.params if p.name == "step_sizes")
    assert StabilityStudy().grid_step_sizes == (0.03, 0.1, 0.3, 1.0, 3.0)
    assert "0.03,0.1,0.3,1,3" in step_sizes.help


def test_every_command_line_kind_is_a_registered_kind():
    command = click.Context(main).command.get_command(click.Context(main), "study")
    listed = set(command.list_commands(click.Context(command))) - {"run"}
    assert listed == {k for k, cls in KINDS.items() if cls.command}


def test_the_history_is_declared_once():
    names = [v.name for v in HISTORY]
    assert list(History().series) == names
    for kind in ("depth", "stability", "convergence", "compare"):
        schema = {v.name: v for v in variables(kind)}
        assert all(schema[v.name] is v for v in HISTORY)

    class Result:
        history = History()
        config = RunConfig()
        parameters, data, device, model = 0, "", "", __import__("torch").nn.Linear(1, 1)

    Result.history.append(**{n: 1.0 for n in names})
    ds = history_dataset(Result)  # type: ignore[arg-type]
    assert [str(v) for v in ds.data_vars] == names
    assert all(ds[v.name].attrs == v.attrs for v in HISTORY)


@pytest.mark.slow
def test_the_wheel_installs_the_cli_as_odenet_cli_not_as_a_top_level_cli(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("odenet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("cli/")]
    assert "odenet_cli/main.py" in names and "odenet/studies/kinds/depth.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "odenet = odenet_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
