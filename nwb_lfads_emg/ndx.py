"""The NWB extension ``ndx-lfads-emg``, re-exported from its own package ``ndx_lfads_emg``.

The extension (spec, classes, object mappers, mocks) lives in ``extensions/ndx-lfads-emg`` and
installs alone, so whoever receives an annotated file can read it without torch or Ray. Importing
this module loads the namespace and registers the classes, as importing ``ndx_lfads_emg`` does.
"""

from __future__ import annotations

from ndx_lfads_emg import (
    JSON_FIELDS,
    NAMESPACE,
    NAMESPACE_PATH,
    LatentFactors,
    LFADSModelProvenance,
    MuscleActivation,
)

__all__ = [
    "NAMESPACE",
    "NAMESPACE_PATH",
    "MuscleActivation",
    "LatentFactors",
    "LFADSModelProvenance",
    "JSON_FIELDS",
]
