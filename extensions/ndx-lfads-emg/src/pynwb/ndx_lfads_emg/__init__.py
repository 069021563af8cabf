"""NWB extension ``ndx-lfads-emg``: muscle activation from EMG, LFADS latent factors, model provenance.

Importing the package loads the namespace (the YAML in ``spec/``) into pynwb and registers the
classes and their object mappers, so files holding these types can be written and read back with
pynwb alone (no torch, no Ray).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pynwb import available_namespaces, load_namespaces

NAMESPACE = "ndx-lfads-emg"


def _namespace_path() -> Path:
    """The namespace YAML: inside the installed wheel, or in the extension's ``spec/`` (editable install)."""
    name = f"{NAMESPACE}.namespace.yaml"
    installed = Path(str(files(__name__))) / "spec" / name
    if installed.is_file():
        return installed
    return Path(__file__).resolve().parents[3] / "spec" / name


NAMESPACE_PATH = _namespace_path()
if NAMESPACE not in available_namespaces():
    load_namespaces(str(NAMESPACE_PATH))

from .io import lfads_emg as _io  # noqa: E402, F401 - registers the object mappers
from .lfads_emg import JSON_FIELDS, LatentFactors, LFADSModelProvenance, MuscleActivation  # noqa: E402

__version__ = "0.2.0"
__all__ = [
    "NAMESPACE",
    "NAMESPACE_PATH",
    "JSON_FIELDS",
    "MuscleActivation",
    "LatentFactors",
    "LFADSModelProvenance",
]
