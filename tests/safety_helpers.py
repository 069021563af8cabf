"""Helpers of the safety tests: tiny real NWB sessions, the CLI in a subprocess, one-line checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiny_nwb(path: Path, subject: bool = True, seconds: float = 4.0, muscles: int = 4, seed: int = 0) -> Path:
    """A short simulated session written by the package's NWB writer (ElectricalSeries layout)."""
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

    session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=muscles, duration_s=seconds, n_units=6, seed=seed))
    write_session_nwb(session, path)
    if not subject:  # a valid NWB file without a Subject (optional in NWB; CRITICAL for a DANDI upload)
        with h5py.File(path, "r+") as f:
            del f["general/subject"]
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def env() -> dict[str, str]:
    """Environment of a subprocess that imports this checkout's package."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), out.get("PYTHONPATH", "")])
    out.setdefault("RAY_AUTH_MODE", "disabled")
    return out


def cli(*args: object, timeout: float = 240, **kwargs: object) -> subprocess.CompletedProcess:
    """Run `nwb-lfads-emg ARGS` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "nwb_lfads_emg.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env(), **kwargs)


def one_error_line(stderr: str) -> str:
    """The single `error: ...` line of a failed command (no traceback, no second error line)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary copies and lock files of this package in a folder."""
    return sorted(p.name for p in Path(folder).iterdir() if "nwb-lfads-emg" in p.name)


def string_values(path: Path) -> list[str]:
    """Every string attribute and string dataset value in an HDF5 file (h5py walk)."""
    found: list[str] = []

    def text(value: object) -> None:
        if isinstance(value, bytes):
            found.append(value.decode(errors="replace"))
        elif isinstance(value, str):
            found.append(value)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            for v in value.ravel():
                text(v)

    def visit(name: str, obj: object) -> None:
        found.append(name)
        for value in obj.attrs.values():
            with contextlib.suppress(Exception):
                text(value)
        if isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype) is not None:
            text(obj.asstr()[()] if obj.shape == () else obj.asstr()[...])

    with h5py.File(path, "r") as f:
        for value in f.attrs.values():
            text(value)
        f.visititems(visit)
    return found
