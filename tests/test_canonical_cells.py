"""The canonical studies' numbers do not move when the code is restructured.

``tests/data/canonical-cells.json`` holds every stored value of one small cell of each
canonical study (the TOML specs in ``studies/``, trained for one epoch, on one torch
thread, as every study cell runs). This test recomputes the same cells with the current
code and compares them: training histories, outcomes, gradient norms, Jacobian spectra,
|R(hλ)| and the step-map radii, convergence errors and orders, NFE, memory. Timings are
left out (they are not results).

History of the reference values. The degradation cells are those computed at commit
bf578a7, before the structure refactor (issue 8), and still reproduced. The other cells
were recomputed at issue 9, whose changes alter them by design: the specs moved to fixed
horizons and five seeds, the probes gained eigenvalue selections and step-map radii, the
convergence study validates its reference and recalibrates batch norm, the compare study
has a learning-rate axis and the adaptive models use GroupNorm. Regenerate a cell only
for such a deliberate change (``python tests/test_canonical_cells.py KEY…``) and say why
in the commit.

On one thread and the same machine kind the values are reproduced to rounding; the
tolerance (1e-6 relative) only absorbs a different BLAS summation order elsewhere.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from odenet.studies import load_study, run_cell

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests" / "data" / "canonical-cells.json").read_text())

# spec → (overrides of the spec, applied with epochs = 1)
CASES = {
    "degradation": {"seeds": (0, 1)},
    "step-size-stability": {"depths": (14,), "solvers": ("rk4",), "seeds": (0,)},
    "step-size-controls": {"depths": (8,), "norms": ("group",), "shortcuts": ("B",), "seeds": (0,)},
    "solver-convergence": {"depths": (14,), "solvers": ("euler",), "seeds": (0,), "refinements": (1.0, 2.0, 4.0),
                           "accuracy_up_to": 2.0},
    "resnet-vs-odenet": {"seeds": (0,), "lrs": (0.1,)},
}  # fmt: skip


def _cases() -> list[tuple[str, str]]:
    return [(key.split(":")[0], key) for key in REFERENCE]


def _compute(key: str) -> dict[str, Any]:
    spec, labels = key.split(":", 1)
    study = load_study(ROOT / "studies" / f"{spec}.toml").study
    study = replace(study, train=replace(study.train, epochs=1), **CASES[spec])
    cell = next(c for c in study.cells() if "/".join(map(str, c.labels)) == labels)
    return dict(run_cell(study, cell))


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "key"), _cases(), ids=[k for _, k in _cases()])
def test_a_canonical_cell_gives_the_numbers_it_gave_before(spec, key):
    values = _compute(key)
    expected = REFERENCE[key]
    names = {k for k in expected if not k.endswith("@shape")}
    assert names == set(values) - {"train_time", "wall_time"}
    for name in sorted(names):
        got = np.asarray(values[name], dtype=float)
        assert list(got.shape) == expected[name + "@shape"], name
        want = np.array([math.nan if v is None else v for v in expected[name]], dtype=float).reshape(got.shape)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, equal_nan=True, err_msg=name)


def _record(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("train_time", "wall_time"):
            continue
        array = np.asarray(value, dtype=float)
        out[name] = [None if math.isnan(v) else float(v) for v in array.reshape(-1)]
        out[name + "@shape"] = list(array.shape)
    return out


if __name__ == "__main__":  # regenerate the named cells: python tests/test_canonical_cells.py KEY…
    table = dict(REFERENCE)
    for key in sys.argv[1:]:
        table[key] = _record(_compute(key))
        print(key, "recomputed")
    (ROOT / "tests" / "data" / "canonical-cells.json").write_text(json.dumps(table))
