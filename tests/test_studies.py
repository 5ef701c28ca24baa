"""The study library: validation, layouts, the resumable store, the runner (serial and Dask),
and what cells measure (the convergence order of a smooth trained field, divergence as a result)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

import odenet.studies.base as base_mod
import odenet.studies.runner as runner_mod
from odenet.experiment import ModelConfig
from odenet.studies import (
    CompareStudy,
    ConvergenceStudy,
    DepthStudy,
    ProbeConfig,
    StabilityStudy,
    StoreError,
    Variant,
    run_study,
)
from odenet.studies.schema import OUTCOMES, variables
from odenet.studies.specfile import load_study
from odenet.train import History, TrainConfig

TINY_TRAIN = TrainConfig(epochs=1, batch_size=256)
TINY_MODEL = ModelConfig(depth=8, width=4)


def tiny_depth(**kw) -> DepthStudy:
    args = dict(model=TINY_MODEL, train=TINY_TRAIN, depths=(8, 14), archs=("residual", "plain"), seeds=(0,))
    return DepthStudy(**(args | kw))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: DepthStudy(depths=(21,)), "depth=21, arch=residual, seed=0: depth=21 is not 6n+2"),
        (lambda: DepthStudy(depths=()), "depths: the list is empty"),
        (lambda: DepthStudy(depths=(20, 20)), "repeats"),
        (lambda: DepthStudy(solvers=("nope",)), "solvers: 'nope' is not a known solver"),
        (lambda: DepthStudy(solvers=("dopri5",)), "arch=plain, seed=0: residual=False (the plain twin) drops"),
        (lambda: DepthStudy(archs=("wide",)), "'wide' is not residual or plain"),
        (lambda: DepthStudy(seeds=()), "seeds: the list is empty"),
        (lambda: StabilityStudy(step_sizes=(-1.0,)), "step_sizes: -1.0 is not a positive step size"),
        (lambda: StabilityStudy(step_sizes=(math.inf,)), "not a positive step size"),
        (lambda: StabilityStudy(solvers=("dopri5",)), "needs fixed-step solvers"),
        (lambda: StabilityStudy(horizon=2.0, step_sizes=(0.1,)), "give either step_sizes or a horizon"),
        (lambda: ConvergenceStudy(reference="rk4"), "give an adaptive solver"),
        (lambda: ConvergenceStudy(reference_tol=0.1), "reference_tol"),
        (lambda: ConvergenceStudy(depths=(21,)), "depth=21, seed=0: depth=21 is not 6n+2"),
        (lambda: ConvergenceStudy(refinements=(0.5, 1.0)), "steps across the boundaries of per-step weights"),
        (lambda: StabilityStudy(norms=("batch", "weird")), "norm=weird, shortcut=A, seed=0: norm='weird' is not known"),
        (
            lambda: StabilityStudy(norms=("batch",), model=ModelConfig(depth=20, norm="group")),
            "give either norm='group' (one value) or norms (an axis), not both",
        ),
        (lambda: CompareStudy(), "models: the list is empty"),
    ],
)
def test_bad_grids_are_refused_with_a_message_naming_the_fix(make, fragment):
    with pytest.raises(ValueError, match=None) as info:
        make()
    assert fragment in str(info.value)


def test_mlp_depths_are_block_counts():
    study = DepthStudy(dataset="spirals", depths=(3, 7))
    assert study.blocks(7) == 7 and study.layout().inner["block"] == list(range(7))


def test_layouts_have_the_documented_dimensions():
    assert tiny_depth().layout().cell_dims == ("solver", "depth", "arch", "seed")
    stab = StabilityStudy(depths=(8, 14))
    assert stab.layout().cell_dims == ("solver", "step_size", "depth", "norm", "shortcut", "seed")
    assert stab.layout().inner["select"] == ["modulus", "real_part"]
    fixed = StabilityStudy(depths=(8, 14, 20), step_sizes=(), horizon=3.0, shortcuts=("A", "B"))
    layout = fixed.layout()
    assert layout.cell_dims == ("solver", "depth", "norm", "shortcut", "seed")
    assert tuple(layout.cells["shortcut"]) == ("A", "B") and tuple(layout.cells["norm"]) == ("auto",)
    assert layout.extra_coords["step_size"] == ("depth", [3.0, 1.5, 1.0])  # h = T / blocks per stage
    assert {c.model.step_size for c in fixed.cells()} == {3.0, 1.5, 1.0}
    assert ConvergenceStudy().layout().cell_dims == ("train_solver", "step_size", "depth", "seed")
    at_horizon = ConvergenceStudy(horizon=3.0, depths=(14, 20)).layout()
    assert at_horizon.cell_dims == ("train_solver", "depth", "seed")
    assert at_horizon.extra_coords["step_size"] == ("depth", [1.5, 1.0])
    compare = CompareStudy(models=(Variant("a", ModelConfig(depth=8)), Variant("b", ModelConfig(depth=14))))
    assert compare.layout().cell_dims == ("model", "learning_rate", "seed")
    assert tuple(compare.layout().cells["learning_rate"]) == (compare.train.lr,)
    for kind in ("depth", "stability", "convergence", "compare"):
        assert all(v.long_name and v.units is not None for v in variables(kind))


def test_study_runs_resume_after_an_interruption_without_recomputing(tmp_path, monkeypatch):
    study = tiny_depth()
    straight = run_study(study, tmp_path / "straight.nc", progress=False).dataset
    assert straight is not None and int(straight.done.sum()) == 4

    calls = []
    real = runner_mod.run_cell
    monkeypatch.setattr(runner_mod, "run_cell", lambda s, c, *a: calls.append(c.labels) or real(s, c, *a))

    def interrupt_after_two(cell, result):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the study is killed after its second cell was written

    out = tmp_path / "killed.nc"
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, progress=False, on_cell=interrupt_after_two)
    assert not out.exists() and (tmp_path / "killed.nc.zarr").exists()
    with pytest.raises(StoreError, match="pass resume=True to continue it"):
        run_study(study, out, progress=False)

    calls.clear()
    report = run_study(study, out, resume=True, progress=False)
    assert (report.skipped, report.computed, len(calls)) == (2, 2, 2)
    assert not (tmp_path / "killed.nc.zarr").exists()
    resumed = xr.open_dataset(out)
    # Same seeds, same cells: the interrupted-and-resumed dataset equals the straight one.
    for name in ("train_loss", "test_accuracy", "final_test_accuracy", "block_grad_norm", "parameters"):
        xr.testing.assert_allclose(resumed[name], straight[name])

    # Resuming a finished result computes nothing; a different config is refused.
    again = run_study(study, out, resume=True, progress=False)
    assert (again.skipped, again.computed) == (4, 0)
    with pytest.raises(StoreError, match=r"different depth study config .*epochs: 1 → 2"):
        run_study(tiny_depth(train=TrainConfig(epochs=2, batch_size=256)), out, resume=True, progress=False)
    with pytest.raises(StoreError, match="exists; choose another out, or pass resume=True"):
        run_study(study, out, progress=False)


def test_a_failing_cell_is_reported_and_retried_on_resume(tmp_path, monkeypatch):
    study = tiny_depth(depths=(8,))
    real = runner_mod.run_cell

    def flaky(s, cell, *args):
        if cell.labels[2] == "plain":
            raise MemoryError("out of memory")
        return real(s, cell, *args)

    monkeypatch.setattr(runner_mod, "run_cell", flaky)
    out = tmp_path / "d.nc"
    report = run_study(study, out, progress=False)
    assert report.computed == 1 and report.failures[0][0] == ("euler", 8, "plain", 0)
    assert "MemoryError: out of memory" in report.failures[0][1]
    partial = xr.open_dataset(out)
    assert partial.done.sel(arch="plain").item() == 0 and np.isnan(partial.final_test_accuracy.sel(arch="plain")).all()
    monkeypatch.setattr(runner_mod, "run_cell", real)
    report = run_study(study, out, resume=True, progress=False)
    assert (report.skipped, report.computed, report.failures) == (1, 1, [])
    assert int(xr.open_dataset(out).done.sum()) == 2


def test_dask_workers_give_the_same_dataset_as_one_process_bit_for_bit(tmp_path):
    """A cell runs on its config's thread count, so neither the workers nor the thread count
    of the process that started the study change a single bit (issue 13: before, a serial
    run on 2 threads and Dask workers on 1 differed by up to 10 points of accuracy)."""
    study = tiny_depth(depths=(8, 14), train=TrainConfig(epochs=2, batch_size=64, threads=1))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serial = run_study(study, tmp_path / "serial.nc", progress=False).dataset
        assert torch.get_num_threads() == 2  # the caller's setting is restored after each cell
    finally:
        torch.set_num_threads(before)
    report = run_study(study, tmp_path / "dask.nc", workers=2, progress=False)
    assert report.computed == 4 and not report.failures
    for name in ("train_loss", "test_accuracy", "final_test_accuracy", "block_grad_norm", "state_grad_norm"):
        xr.testing.assert_equal(report.dataset[name], serial[name])
    assert serial.attrs["torch_threads"] == 1 and "1 thread)" in serial.attrs["device"]


def test_a_study_runs_its_cells_on_a_fixed_thread_count():
    assert DepthStudy().train.threads == 1
    assert tiny_depth(train=TrainConfig(epochs=1)).train.threads == 1  # None becomes 1, in the stored config
    assert json.loads(tiny_depth().to_json())["train"]["threads"] == 1
    assert tiny_depth(train=TrainConfig(epochs=1, threads=2)).cells()[0].train.threads == 2


def test_stability_cells_store_spectra_consistent_with_r(tmp_path):
    study = StabilityStudy(
        model=TINY_MODEL, train=TINY_TRAIN, solvers=("euler", "rk4"), step_sizes=(0.5,), depths=(8,), seeds=(0,)
    )
    ds = run_study(study, tmp_path / "s.nc", progress=False).dataset
    assert ds is not None
    from odenet import get_method

    for solver in ("euler", "rk4"):
        cell = ds.sel(solver=solver, step_size=0.5, depth=8, seed=0)
        cell = cell.squeeze(["norm", "shortcut"])
        lam = cell.eig_real.values + 1j * cell.eig_imag.values  # (when, block, select, eig)
        r = np.abs(get_method(solver).tableau.stability_function(0.5 * lam))
        steps = np.isfinite(cell.max_abs_R.values)
        assert steps.sum() == 2  # depth 8: one step and two transitions, at init and final
        assert np.allclose(np.nanmax(r, axis=(-2, -1))[steps], cell.max_abs_R.values[steps])
        # ARPACK (512 unknowns) converged in both selections, residuals within its tolerance.
        assert np.all(cell.eig_converged.values[steps] >= 1)
        assert np.nanmax(cell.eig_residual.values[steps]) < study.probe.tol
        assert float(cell.arpack_tol) == study.probe.tol
        assert np.all(np.isfinite(cell.step_radius.values[steps]))
        assert np.all(np.isfinite(cell.activation_rms.values)) and np.all(cell.amplification.values > 0)


def test_divergence_is_a_recorded_result_not_a_crash(tmp_path):
    study = StabilityStudy(
        model=TINY_MODEL, train=TrainConfig(epochs=2, batch_size=256, lr=1e30), step_sizes=(0.5,), solvers=("euler",),
        depths=(8,), seeds=(0,),
    )  # fmt: skip
    report = run_study(study, tmp_path / "s.nc", progress=False)
    ds = report.dataset.squeeze()
    assert report.computed == 1 and not report.failures
    assert int(ds.diverged) == 1 and OUTCOMES[int(ds.outcome)] == "diverged" and int(ds.diverged_epoch) == 1
    assert np.isnan(float(ds.final_test_accuracy))
    assert np.isnan(ds.max_abs_R.sel(when="final")).all() and np.isfinite(ds.max_abs_R.sel(when="init")).any()


def test_solver_failure_is_recorded_as_its_own_outcome(monkeypatch):
    def failing_train(model, data, config, progress=None):
        h = History()
        h.diverged, h.diverged_epoch, h.reason = True, 1, "solver failed: dopri5 needed more than max_steps"
        return h

    monkeypatch.setattr(base_mod, "train", failing_train)
    study = CompareStudy(train=TINY_TRAIN, models=(Variant("ode", ModelConfig(depth=8, solver="dopri5")),))
    values = base_mod.run_cell(study, study.cells()[0])
    assert OUTCOMES[values["outcome"]] == "solver_failed" and values["diverged"] == 1
    assert math.isnan(values["nfe_forward_final"]) and math.isnan(values["final_test_accuracy"])


def test_convergence_study_measures_the_orders_of_a_smooth_trained_field(tmp_path):
    """A tanh MLP field is smooth, so re-evaluating the trained weights refines like the ODE:
    euler, midpoint and rk4 show orders 1, 2 and 4 against the dopri5 reference."""
    study = ConvergenceStudy(
        dataset="spirals", model=ModelConfig(depth=4, width=16, activation="tanh"),
        train=TrainConfig(epochs=2), solvers=("euler",), step_sizes=(0.5,), seeds=(0,),
    )  # fmt: skip
    ds = run_study(study, tmp_path / "c.nc", progress=False).dataset
    assert ds is not None
    order = ds.order.sel(train_solver="euler", step_size=0.5, seed=0, stage=0)
    assert order.sel(eval_solver="euler").item() == pytest.approx(1.0, abs=0.1)
    assert order.sel(eval_solver="midpoint").item() == pytest.approx(2.0, abs=0.1)
    assert order.sel(eval_solver="rk4").item() == pytest.approx(4.0, abs=0.15)
    error = ds.error.sel(train_solver="euler", step_size=0.5, seed=0, stage=0)
    # Evaluating with the training solver at the training steps is the trained network itself.
    assert error.sel(eval_solver="euler", refinement=1.0).item() > 0
    assert ds.eval_accuracy.sel(eval_solver="euler", refinement=1.0).item() == pytest.approx(
        ds.final_test_accuracy.item(), abs=1e-9
    )
    assert 0 < ds.reference_nfe.item() and 0 <= ds.reference_accuracy.item() <= 1


def test_spec_files_parse_and_reject_unknown_keys(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('kind = "depth"\nout = "r/x.nc"\nseeds = 2\ndepths = [8, 14]\n[train]\nepochs = 3\n')
    parsed = load_study(spec)
    assert isinstance(parsed.study, DepthStudy) and parsed.study.seeds == (0, 1)
    assert parsed.study.train.epochs == 3 and parsed.out == tmp_path / "r" / "x.nc"
    assert json.loads(parsed.study.to_json())["kind"] == "depth"
    spec.write_text('kind = "depth"\ndepth = [8]\n')
    with pytest.raises(ValueError, match="unknown key 'depth' for a depth study"):
        load_study(spec)
    spec.write_text('kind = "depth"\n[train]\nepoch = 3\n')
    with pytest.raises(ValueError, match=r"unknown key 'epoch' in \[train\]"):
        load_study(spec)
    spec.write_text('kind = "sweep"\n')
    with pytest.raises(ValueError, match="set kind to one of"):
        load_study(spec)
    spec.write_text("kind = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_study(spec)


def test_the_canonical_specs_are_valid():
    from pathlib import Path

    specs = sorted((Path(__file__).parents[1] / "studies").glob("*.toml"))
    assert {p.stem for p in specs} >= {"degradation", "step-size-stability", "solver-convergence", "resnet-vs-odenet"}
    for path in specs:
        parsed = load_study(path)
        assert parsed.out.parent.name == "results" and parsed.study.cells()


def test_the_probe_config_sets_the_gradient_batch(monkeypatch):
    import odenet.studies.kinds.stability as stability_mod

    seen = []
    real = stability_mod.gradient_norms

    def recording(model, x, y):
        seen.append(len(x))
        return real(model, x, y)

    monkeypatch.setattr(stability_mod, "gradient_norms", recording)
    study = StabilityStudy(
        model=TINY_MODEL, train=TINY_TRAIN, solvers=("euler",), step_sizes=(1.0,), depths=(8,),
        probe=ProbeConfig(samples=2, eigenvalues=1, grad_samples=16),
    )  # fmt: skip
    base_mod.run_cell(study, study.cells()[0])
    assert seen == [16, 16]  # at initialisation and after training
