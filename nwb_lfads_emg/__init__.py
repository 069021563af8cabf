"""nwb-lfads-emg: estimate muscle activation from EMG in NWB/DANDI sessions with AutoLFADS.

The public API, in the order data flows: `read` (local file or DANDI asset -> preprocessed EMG),
`fit` (LFADS or AutoLFADS), `infer`, `annotate`/`run` (write estimates back into NWB), and
`evaluate_file`. Importing the package loads the NWB extension `ndx-lfads-emg`.
"""

from __future__ import annotations

from typing import Any

from . import ndx  # noqa: F401 - loads the extension namespace before any file is opened
from .ndx import LatentFactors, LFADSModelProvenance, MuscleActivation

__version__ = "0.1.0"

_LAZY = {
    "read": "pipeline", "fit": "pipeline", "infer": "pipeline", "annotate": "pipeline", "run": "pipeline",
    "JobConfig": "pipeline", "write": "pipeline",
    "PreprocessConfig": "preprocess", "preprocess": "preprocess",
    "evaluate_file": "evaluate",
    "SimulationConfig": "simulate", "simulate_session": "simulate", "write_session_nwb": "simulate",
}


def __getattr__(name: str) -> Any:
    """Import the heavy parts (torch, ray) only when they are used."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'nwb_lfads_emg' has no attribute {name!r}")


__all__ = ["MuscleActivation", "LatentFactors", "LFADSModelProvenance", *_LAZY]
