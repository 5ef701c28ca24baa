"""The canonical studies' numbers do not move when the code is restructured.

``tests/data/canonical-cells.json`` holds every stored value of one small cell of each
canonical study kind (the TOML specs in ``studies/``, trained for one epoch, on one
torch thread, as every study cell now runs), computed by the code as it was at commit bf578a7, before the structure
refactor (issue 8). This test recomputes the same cells with the current code and
compares them: training histories, outcomes, gradient norms, Jacobian spectra, |R(hλ)|,
convergence errors and orders, NFE. Timings are left out (they are not results).

On one thread and the same machine kind the values are reproduced to rounding; the
tolerance (1e-6 relative) only absorbs a different BLAS summation order elsewhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from odenet.studies import load_study, run_cell

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests" / "data" / "canonical-cells.json").read_text())

# spec → (overrides of the spec, applied with epochs = 1)
CASES = {
    "degradation": {"seeds": (0, 1)},
    "step-size-stability": {"step_sizes": (0.3,), "solvers": ("rk4",)},
    "solver-convergence": {"step_sizes": (1.0,), "solvers": ("euler",)},
    "resnet-vs-odenet": {"seeds": (0,)},
}


def _cases() -> list[tuple[str, str]]:
    return [(key.split(":")[0], key) for key in REFERENCE]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "key"), _cases(), ids=[k for _, k in _cases()])
def test_a_canonical_cell_gives_the_numbers_it_gave_before_the_refactor(spec, key):
    study = load_study(ROOT / "studies" / f"{spec}.toml").study
    study = replace(study, train=replace(study.train, epochs=1), **CASES[spec])
    labels = key.split(":", 1)[1]
    cell = next(c for c in study.cells() if "/".join(map(str, c.labels)) == labels)
    values = run_cell(study, cell)
    expected = REFERENCE[key]
    names = {k for k in expected if not k.endswith("@shape")}
    assert names == set(values) - {"train_time", "wall_time"}
    for name in sorted(names):
        got = np.asarray(values[name], dtype=float)
        assert list(got.shape) == expected[name + "@shape"], name
        want = np.array([math.nan if v is None else v for v in expected[name]], dtype=float).reshape(got.shape)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, equal_nan=True, err_msg=name)
