"""A study kind is one class: a toy kind defined here runs through every part of odenet.

``WidthStudy`` below is all a new kind needs — its grid field, its axes, its variables
with long_name and units, its coordinates and how to measure one cell. Nothing in
``odenet/`` or ``cli/`` knows about it, yet ``run_study`` stores it (and resumes it), the
spec reader reads it, ``odenet study toywidth`` exists with its options, and ``plot_study``
draws it. The store also refuses a variable the kind did not declare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from torch import nn

import odenet.studies.runner as runner_mod
from odenet.data import TensorData
from odenet.experiment import ModelConfig
from odenet.knobs import knob
from odenet.labels import Variable
from odenet.plots import plot_study
from odenet.studies import KINDS, Cell, StoreError, Study, load_study, run_study
from odenet.studies.base import Values, check_axis, train_cell
from odenet.studies.store import StudyStore
from odenet.train import TrainConfig
from odenet_cli.main import main

TINY = ModelConfig(depth=2)
ONE_EPOCH = TrainConfig(epochs=1, batch_size=256)


@pytest.fixture
def width_study():
    @dataclass(frozen=True)
    class WidthStudy(Study):
        """Accuracy versus width: widths × seeds (a kind defined in a test)."""

        kind: ClassVar[str] = "toywidth"
        variables: ClassVar[tuple[Variable, ...]] = (
            Variable("weight_norm", ("part",), "Frobenius norm of the part's weights after training", "1"),
        )
        coords: ClassVar[Mapping[str, tuple[str, str]]] = {
            "width": ("width of the residual blocks", "1"),
            "part": ("part of the network", ""),
        }
        sets: ClassVar[tuple[str, ...]] = ("width",)

        widths: tuple[int, ...] = knob((8, 16), "Widths of the MLP ResNet.")

        def check(self) -> None:
            check_axis("widths", self.widths)

        def axes(self) -> dict[str, Sequence[Any]]:
            return {"width": self.widths, "seed": self.seeds}

        def inner(self) -> dict[str, Sequence[Any]]:
            return {**super().inner(), "part": ["stem", "head"]}

        def measure(self, model: nn.Module, data: TensorData, cell: Cell) -> Values:
            values, _ = train_cell(model, data, cell)
            norms = [float(model.stem.weight.detach().norm()), float(model.head.weight.detach().norm())]  # type: ignore[union-attr]
            return {**values, "weight_norm": norms}

    yield WidthStudy
    KINDS.pop("toywidth", None)


def test_a_kind_defined_in_a_test_runs_resumes_and_plots(width_study, tmp_path, monkeypatch):
    study = width_study(dataset="spirals", model=TINY, train=ONE_EPOCH, widths=(8, 16), seeds=(0, 1))
    assert KINDS["toywidth"] is width_study and len(study.cells()) == 4

    straight = run_study(study, tmp_path / "straight.nc", progress=False).dataset
    assert straight is not None
    assert straight.weight_norm.dims == ("width", "seed", "part")
    assert straight.weight_norm.attrs == {
        "long_name": "Frobenius norm of the part's weights after training",
        "units": "1",
    }
    assert straight.width.attrs["long_name"] == "width of the residual blocks"
    assert list(straight.part.values) == ["stem", "head"] and straight.attrs["study"] == "toywidth"
    assert np.all(straight.weight_norm.values > 0) and int(straight.done.sum()) == 4

    # Killed after its first cell, resumed: only the other three are computed, same numbers.
    calls: list[tuple[Any, ...]] = []
    real = runner_mod.run_cell
    monkeypatch.setattr(runner_mod, "run_cell", lambda s, c, *a: calls.append(c.labels) or real(s, c, *a))

    def kill(cell: Cell, result: Any) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "resumed.nc"
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, progress=False, on_cell=kill)
    calls.clear()
    report = run_study(study, out, resume=True, progress=False)
    assert (report.skipped, report.computed, len(calls)) == (1, 3, 3)
    resumed = xr.open_dataset(out)
    for name in ("weight_norm", "final_test_accuracy", "train_loss", "parameters"):
        xr.testing.assert_allclose(resumed[name], straight[name])

    # Plotted without any figure of its own: the generic figures of its labelled data.
    written = plot_study(resumed, tmp_path / "figures")
    assert {p.stem for p in written} == {"toywidth-final", "toywidth-history"}
    assert all(p.stat().st_size > 0 for p in written)


def test_a_kind_defined_in_a_test_has_a_command_and_a_spec(width_study, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(main, ["study", "--help"]).output
    assert "toywidth" in help_text
    out = tmp_path / "cli.nc"
    args = ["study", "toywidth", "--widths", "8", "--dataset", "spirals", "--depth", "2", "--epochs", "1"]
    result = runner.invoke(main, [*args, "--batch-size", "256", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert xr.open_dataset(out).weight_norm.sizes == {"width": 1, "seed": 1, "part": 2}
    bad = runner.invoke(main, ["study", "toywidth", "--widths", "", "--out", str(tmp_path / "x.nc")])
    assert bad.exit_code == 2 and "Error: --widths: the list is empty" in bad.output

    spec = tmp_path / "toy.toml"
    spec.write_text('kind = "toywidth"\ndataset = "spirals"\nwidths = "4,8"\n[model]\ndepth = 2\n')
    parsed = load_study(spec)
    assert isinstance(parsed.study, width_study) and parsed.study.widths == (4, 8)


def test_the_store_refuses_a_variable_the_kind_did_not_declare(width_study, tmp_path):
    study = width_study(dataset="spirals", model=TINY, train=ONE_EPOCH, widths=(8,))
    store = StudyStore(tmp_path / "s.nc", study.layout())
    store.open({"study": "toywidth", "config": study.to_json()}, resume=False)
    with pytest.raises(StoreError, match="weight_nrom is not a variable of this study"):
        store.write((0, 0), {"weight_nrom": [1.0, 2.0]})
    with pytest.raises(StoreError, match=r"weight_norm has dimensions \('when',\)"):
        store.write((0, 0), {"weight_norm": xr.DataArray([1.0, 2.0], dims="when")})
    assert not store.done().any()  # nothing was marked done
