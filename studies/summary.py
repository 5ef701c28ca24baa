"""Print the numbers that studies/README.md quotes, from the result files in studies/results.

Run from the repository root:  python studies/summary.py [NAME …]

Every table says what it averages over and n. Means are over seeds; spreads are the
sample standard deviation (ddof = 1). Nothing here trains or probes: it only reads the
netCDF files that `odenet study run studies/NAME.toml` wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

RESULTS = Path(__file__).resolve().parent / "results"


def mean_sd(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± sd (n)' over the finite values; sd with ddof = 1."""
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v)] * scale
    if v.size == 0:
        return "—"
    sd = f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else ""
    return f"{v.mean():.{digits}f}{sd} (n={v.size})"


def open_result(name: str) -> xr.Dataset | None:
    path = RESULTS / f"{name}.nc"
    if not path.exists():
        print(f"\n## {name}: no result file ({path.name}); run odenet study run studies/{name}.toml")
        return None
    ds = xr.open_dataset(path, engine="h5netcdf").load()
    print(f"\n## {name}  (commit {ds.attrs.get('git_commit', '?')}, {ds.attrs.get('device', '')})")
    return ds


def steps_only(da: xr.DataArray, ds: xr.Dataset) -> xr.DataArray:
    """Blocks that are ODE steps (transitions have no field Jacobian: NaN max_abs_R)."""
    return da.where(np.isfinite(ds["max_abs_R"]))


def stability(name: str) -> xr.Dataset | None:
    ds = open_result(name)
    if ds is None:
        return None
    h = ds["step_size"]
    print("final test accuracy, % (mean ± sd over seeds, n = seeds that completed); diverged / seeds")
    for solver in ds.solver.values:
        for norm in ds.norm.values:
            for shortcut in ds.shortcut.values:
                row = []
                for depth in ds.depth.values:
                    cell = ds.sel(solver=solver, depth=depth, norm=norm, shortcut=shortcut)
                    div = int(cell.diverged.sum())
                    row.append(f"h={float(h.sel(depth=depth)):.3g}: {mean_sd(cell.final_test_accuracy, 100, 1)} "
                               f"div {div}/{cell.sizes['seed']}")  # fmt: skip
                print(f"  {solver} {norm} {shortcut}: " + "; ".join(row))
    print("\nshare of ODE steps (blocks × seeds) above 1, init → final, for stage 1 / stages 2-3 (— : no steps):")
    print("  classical max|R(hλ)| | excess |R|/max(1,|e^{hλ}|) | step_excess ρ(Φ')/max(1,ρ(e^{hJ}))"
          " | share of largest-modulus eigenvalues with Re λ > 0 (final)")  # fmt: skip
    for solver in ds.solver.values:
        for norm in ds.norm.values:
            for shortcut in ds.shortcut.values:
                for depth in ds.depth.values:
                    cell = ds.sel(solver=solver, depth=depth, norm=norm, shortcut=shortcut)
                    n = (int(depth) - 2) // 6
                    stage = np.arange(ds.sizes["block"]) // max(n, 1)
                    parts = []
                    for var in ("max_abs_R", "excess_growth", "step_excess"):
                        shares = []
                        for stages in ((0,), (1, 2)):
                            pair = []
                            for when in ("init", "final"):
                                v = steps_only(cell[var].sel(when=when), cell.sel(when=when))
                                v = v.isel(block=np.isin(stage, stages)).values
                                v = v[np.isfinite(v)]
                                pair.append(f"{(v > 1 + 1e-9).mean():.2f}" if v.size else "—")
                            shares.append("→".join(pair))
                        parts.append(" / ".join(shares))
                    re = cell["eig_real"].sel(when="final", select="modulus").values
                    re = re[np.isfinite(re)]
                    parts.append(f"{(re > 0).mean():.2f}" if re.size else "—")
                    print(f"  {solver:8s} {norm} {shortcut} h={float(h.sel(depth=depth)):.3g}: " + " | ".join(parts))
    print("\nexact-flow growth per step, median over ODE steps and seeds (final): max|e^{hλ}|")
    for solver in ds.solver.values:
        row = []
        for depth in ds.depth.values:
            flow = np.nanmedian(ds["max_abs_flow"].sel(solver=solver, depth=depth, when="final").values)
            row.append(f"h={float(h.sel(depth=depth)):.3g}: {flow:.2f}")
        print(f"  {solver}: " + ", ".join(row))
    print(
        "\nstep-map radius vs max|R| over the computed eigenvalues (final): median ratio, share where ρ > max|R|·1.01"
    )
    for solver in ds.solver.values:
        r = (ds["step_radius"] / ds["max_abs_R"]).sel(solver=solver, when="final").values
        r = r[np.isfinite(r)]
        print(f"  {solver}: median ρ/max|R| {np.median(r):.3f}, share ρ > 1.01·max|R| {(r > 1.01).mean():.2f}")
    conv = ds["eig_converged"].values
    conv = conv[np.isfinite(conv)]
    res = ds["eig_residual"].values
    res = res[np.isfinite(res)]
    tol = float(np.nanmax(ds["arpack_tol"].values))
    p99 = np.percentile(res, 99)
    print(f"\nARPACK tol {tol:g}: converged per selection min {conv.min():.0f}, mean {conv.mean():.2f} "
          f"of {ds.sizes['eig']}; residual max {res.max():.2e}, 99th percentile {p99:.2e}")  # fmt: skip
    return ds


def controls(name: str) -> None:
    ds = stability(name)  # the same tables, then the per-stage |λ| against h
    if ds is None:
        return
    print("\n|λ|max (largest modulus) per stage against h: exponent p of |λ| ∝ h^p (log–log fit over h, seed means)")
    n_per_stage = {int(d): (int(d) - 2) // 6 for d in ds.depth.values}
    for when in ("init", "final"):
        for norm in ds.norm.values:
            for shortcut in ds.shortcut.values:
                exps = []
                for stage in range(3):
                    xs, ys = [], []
                    for depth in ds.depth.values:
                        n = n_per_stage[int(depth)]
                        blocks = [b for b in range(3 * n) if b // n == stage]
                        cell = ds.sel(depth=depth, norm=norm, shortcut=shortcut, when=when, select="modulus", eig=0)
                        lam = np.hypot(cell.eig_real, cell.eig_imag).isel(block=blocks).mean("block").mean("seed")
                        lam = float(lam.squeeze())
                        if np.isfinite(lam):
                            xs.append(float(ds.step_size.sel(depth=depth)))
                            ys.append(lam)
                    if len(xs) >= 2:
                        p = np.polyfit(np.log(xs), np.log(ys), 1)[0]
                        exps.append(f"stage {stage + 1}: {p:+.2f} ({', '.join(f'{y:.2g}' for y in ys)})")
                    else:
                        exps.append(f"stage {stage + 1}: —")
                print(f"  {when:5s} {norm:5s} {shortcut}: " + "; ".join(exps))


def convergence(name: str) -> None:
    ds = open_result(name)
    if ds is None:
        return
    design = "depth" if "depth" in ds.dims and ds.sizes["depth"] > 1 else "step_size"
    for solver in ds.train_solver.values:
        for depth in ds.depth.values:
            for h in np.atleast_1d(ds.step_size.values) if "step_size" in ds.dims else [None]:
                sel = {"train_solver": solver, "depth": depth}
                if h is not None:
                    sel["step_size"] = h
                cell = ds.sel(sel)
                hh = float(cell.step_size) if h is None else float(h)
                print(f"\ntrained with {solver}, depth {int(depth)}, h = {hh:.3g} ({design} design): "
                      f"training accuracy {mean_sd(cell.final_test_accuracy, 100, 1)} %")  # fmt: skip
                print(f"  reference dopri5: {mean_sd(cell.reference_accuracy, 100, 1)} %, recalibrated "
                      f"{mean_sd(cell.reference_accuracy_recalibrated, 100, 1)} %; reference error (max over stages) "
                      f"{mean_sd(cell.reference_error.max('stage'), 1, 10)}")  # fmt: skip
                for ev in ds.eval_solver.values:
                    rows = []
                    for r in ds.refinement.values:
                        c = cell.sel(eval_solver=ev, refinement=r)
                        if np.isfinite(c.eval_accuracy).any():
                            rows.append(f"r={r:g}: {mean_sd(c.eval_accuracy, 100, 1)} → "
                                        f"{mean_sd(c.eval_accuracy_recalibrated, 100, 1)}")  # fmt: skip
                    print(f"  {ev:8s} accuracy, training stats → recalibrated: " + "; ".join(rows))
                for ev in ds.eval_solver.values:
                    order = cell.order.sel(eval_solver=ev)
                    per_stage = [mean_sd(order.isel(stage=s), 1, 2) for s in range(ds.sizes["stage"])]
                    print(f"  {ev:8s} order per stage: " + ", ".join(per_stage))


def compare(name: str) -> None:
    from odenet.studies.kinds.compare import chosen_lr

    ds = open_result(name)
    if ds is None:
        return
    lr = chosen_lr(ds)
    print("per model at its chosen learning rate (lowest mean final training loss); mean ± sd over seeds")
    for model in ds.model.values:
        at = ds.sel(model=model, learning_rate=float(lr.sel(model=model)))
        mib = at.peak_saved_bytes / 2**20
        print(f"  {model}: lr {float(lr.sel(model=model)):g}; accuracy {mean_sd(at.final_test_accuracy, 100, 2)} %; "
              f"params {int(at.parameters.max())}; NFE fwd {mean_sd(at.nfe_forward_final, 1, 1)}, "
              f"bwd {mean_sd(at.nfe_backward_final, 1, 1)}; saved activations {mean_sd(mib, 1, 2)} MiB; "
              f"train time {mean_sd(at.train_time, 1, 0)} s; diverged {int(at.diverged.sum())}")  # fmt: skip
    print("every learning rate: accuracy % | final training loss")
    for model in ds.model.values:
        for rate in ds.learning_rate.values:
            at = ds.sel(model=model, learning_rate=rate)
            print(f"  {model} lr {rate:g}: {mean_sd(at.final_test_accuracy, 100, 2)} | "
                  f"{mean_sd(at.train_loss.isel(epoch=-1), 1, 3)}")  # fmt: skip


def depth(name: str) -> None:
    ds = open_result(name)
    if ds is None:
        return
    print("final test accuracy, % (mean ± sd over seeds) | final training loss")
    for solver in ds.solver.values:
        for d in ds.depth.values:
            row = []
            for arch in ds.arch.values:
                cell = ds.sel(solver=solver, depth=d, arch=arch)
                row.append(f"{arch} {mean_sd(cell.final_test_accuracy, 100, 2)} | "
                           f"{mean_sd(cell.train_loss.isel(epoch=-1), 1, 3)}")  # fmt: skip
            print(f"  {solver} depth {int(d)}: " + "; ".join(row))


def shattered(name: str) -> None:
    ds = open_result(name)
    if ds is None:
        return
    print("lag-1 autocorrelation | spectral slope of the input-gradient curves (mean over lines, then ± sd over seeds)")
    for when in ds.when.values:
        for d in ds.depth.values:
            row = []
            for arch in ds.arch.values:
                cell = ds.sel(solver=ds.solver.values[0], depth=d, arch=arch, when=when)
                row.append(f"{arch} {mean_sd(cell.grad_lag1.mean('line'), 1, 2)} | "
                           f"{mean_sd(cell.grad_spectral_slope.mean('line'), 1, 2)}")  # fmt: skip
            print(f"  {when} depth {int(d)}: " + "; ".join(row))
    print("final test accuracy, %")
    for d in ds.depth.values:
        acc = ds.final_test_accuracy.sel(depth=d).isel(solver=0)
        row = [f"{a} {mean_sd(acc.sel(arch=a), 100, 2)}" for a in ds.arch.values]
        print(f"  depth {int(d)}: " + "; ".join(row))


def lesions(name: str) -> None:
    ds = open_result(name)
    if ds is None:
        return
    print(
        "accuracy, % (± sd over seeds): intact | mean over single-step deletions | worst single step | "
        "k = 5 random steps deleted"
    )
    for solver in ds.solver.values:
        for d in ds.depth.values:
            for arch in ds.arch.values:
                cell = ds.sel(solver=solver, depth=d, arch=arch)
                steps = cell.lesion_accuracy.where(cell.is_transition == 0)
                k5 = cell.random_lesion_accuracy.sel(deleted=5) if 5 in ds.deleted.values else np.nan
                print(f"  {solver} {int(d)} {arch}: {mean_sd(cell.intact_accuracy, 100, 1)} | "
                      f"{mean_sd(steps.mean('block'), 100, 1)} | {mean_sd(steps.min('block'), 100, 1)} | "
                      f"{mean_sd(k5, 100, 1)}")  # fmt: skip
    trans = ds.transition_lesion_accuracy.where(ds.is_transition == 1)
    print("transition deleted (shortcut kept), residual nets, mean over transitions:")
    for solver in ds.solver.values:
        for d in ds.depth.values:
            t = trans.sel(solver=solver, depth=d, arch="residual").mean("block")
            print(f"  {solver} {int(d)}: {mean_sd(t, 100, 1)}")


def landscape(name: str) -> None:
    ds = open_result(name)
    if ds is None:
        return
    print(
        "negative-curvature fraction of the 2-D slice | |λmin/λmax| of the Hessian at the centre | "
        "centre loss | test accuracy %"
    )
    for solver in ds.solver.values:
        for d in ds.depth.values:
            for arch in ds.arch.values:
                cell = ds.sel(solver=solver, depth=d, arch=arch)
                print(f"  {solver} {int(d)} {arch}: {mean_sd(cell.negative_curvature_fraction, 1, 2)} | "
                      f"{mean_sd(cell.hessian_ratio, 1, 3)} | {mean_sd(cell.centre_loss, 1, 3)} | "
                      f"{mean_sd(cell.final_test_accuracy, 100, 1)}")  # fmt: skip


def width(name: str) -> None:
    ds = open_result(name)
    if ds is None:
        return
    print("test accuracy, % (± sd over seeds), per depth × widen, at each learning rate; parameters")
    for lr in ds.learning_rate.values:
        for d in ds.depth.values:
            row = []
            for k in ds.widen.values:
                cell = ds.sel(learning_rate=lr, depth=d, widen=k)
                row.append(f"k={int(k)} {mean_sd(cell.final_test_accuracy, 100, 2)} "
                           f"[{int(cell.parameters.max()):,}]")  # fmt: skip
            print(f"  lr {lr:g} depth {int(d)}: " + "; ".join(row))
    for response in ds.response.values:
        fit = ds.sel(response=response)
        print(f"fit of {response}: R² {float(fit.fit_r2):.3f}, n {int(fit.fit_n)}")
        for term in ds.term.values:
            c, e = float(fit.fit_coef.sel(term=term)), float(fit.fit_se.sel(term=term))
            print(f"  {term}: {c:+.4f} ± {e:.4f} (t = {c / e:+.1f})")


STUDIES = {
    "step-size-stability": stability,
    "step-size-controls": controls,
    "solver-convergence": convergence,
    "bn-recalibration": convergence,
    "resnet-vs-odenet": compare,
    "degradation": depth,
    "shattered-gradients": shattered,
    "lesions": lesions,
    "loss-landscape": landscape,
    "width": width,
}

if __name__ == "__main__":
    for study in sys.argv[1:] or list(STUDIES):
        STUDIES[study](study)
