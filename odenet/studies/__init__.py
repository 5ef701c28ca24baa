"""Studies: grids of training runs and probes, stored as one labelled ``xarray.Dataset``.

Each study kind is one class in one module of ``odenet.studies.kinds`` (``DepthStudy``,
``StabilityStudy``, ``ConvergenceStudy``, ``CompareStudy``, and any module added there);
``KINDS`` maps kind names to those classes. ``run_study`` computes a study (locally or on
a Dask cluster) into a resumable store and writes netCDF; ``load_study`` reads a TOML
specification (``studies/*.toml``).
"""

import importlib
import pkgutil

from odenet.studies import kinds as _kinds
from odenet.studies.base import KINDS, Cell, Study, run_cell

# Import every kind module so that its class registers itself.
for _module in pkgutil.iter_modules(_kinds.__path__):
    importlib.import_module(f"{_kinds.__name__}.{_module.name}")

from odenet.studies.kinds.compare import CompareStudy, Variant  # noqa: E402
from odenet.studies.kinds.convergence import ConvergenceStudy, fit_order  # noqa: E402
from odenet.studies.kinds.depth import DepthStudy  # noqa: E402
from odenet.studies.kinds.landscape import LandscapeStudy  # noqa: E402
from odenet.studies.kinds.lesion import LesionStudy  # noqa: E402
from odenet.studies.kinds.shattered import ShatteredStudy  # noqa: E402
from odenet.studies.kinds.stability import ProbeConfig, StabilityStudy  # noqa: E402
from odenet.studies.kinds.width import WidthStudy  # noqa: E402
from odenet.studies.runner import Execution, StudyReport, run_study  # noqa: E402
from odenet.studies.specfile import SpecFile, load_study  # noqa: E402
from odenet.studies.store import StoreError  # noqa: E402

__all__ = [
    "KINDS",
    "Cell",
    "CompareStudy",
    "ConvergenceStudy",
    "DepthStudy",
    "Execution",
    "LandscapeStudy",
    "LesionStudy",
    "ProbeConfig",
    "ShatteredStudy",
    "SpecFile",
    "StabilityStudy",
    "StoreError",
    "Study",
    "StudyReport",
    "Variant",
    "WidthStudy",
    "fit_order",
    "load_study",
    "run_cell",
    "run_study",
]
