"""Studies: grids of training runs and probes, stored as one labelled ``xarray.Dataset``.

``DepthStudy``, ``StabilityStudy``, ``ConvergenceStudy`` and ``CompareStudy`` describe a
grid; ``run_study`` computes it (locally or on a Dask cluster) into a resumable store
and writes netCDF; ``load_study`` reads a TOML specification (``studies/*.toml``).
"""

from odenet.studies.runner import StudyReport, run_study
from odenet.studies.spec import CompareStudy, ConvergenceStudy, DepthStudy, ProbeConfig, StabilityStudy, Study, Variant
from odenet.studies.store import StoreError

__all__ = [
    "CompareStudy",
    "ConvergenceStudy",
    "DepthStudy",
    "ProbeConfig",
    "StabilityStudy",
    "StoreError",
    "Study",
    "StudyReport",
    "Variant",
    "run_study",
]
