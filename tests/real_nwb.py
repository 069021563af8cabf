"""Convert the shared real recordings (../shared/data) to NWB as a converter would lay them out.

EMG as an acquisition ElectricalSeries with one electrode per muscle (location = muscle), the
measured behaviour (knee angle, load-cell force) as TimeSeries in processing/behavior inside a
BehavioralTimeSeries. Used by the tests and by benchmarks/bench_accuracy.py.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.behavior import BehavioralTimeSeries
from pynwb.ecephys import ElectricalSeries
from pynwb.file import Subject

UCI_MUSCLES = ["RF", "BF", "VM", "ST"]


def _session(identifier: str, description: str, muscles: list[str], emg: np.ndarray, rate: float,
             conversion: float, subject_id: str, location: str) -> NWBFile:
    nwbfile = NWBFile(session_description=description, identifier=identifier,
                      session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc))
    nwbfile.subject = Subject(subject_id=subject_id, species="Homo sapiens", sex="U", age="P30Y")
    device = nwbfile.create_device(name="EMGSystem", description="Surface EMG amplifier.")
    group = nwbfile.create_electrode_group(name="EMG", description="Bipolar surface EMG electrodes.",
                                           location=location, device=device)
    for muscle in muscles:
        nwbfile.add_electrode(location=muscle, group=group)
    nwbfile.add_acquisition(ElectricalSeries(
        name="EMG", description="Raw surface EMG, one channel per muscle.", data=np.asarray(emg, np.float32),
        electrodes=nwbfile.create_electrode_table_region(list(range(len(muscles))), "muscles"),
        rate=float(rate), starting_time=0.0, conversion=conversion,
    ))
    return nwbfile


def _add_behavior(nwbfile: NWBFile, name: str, data: np.ndarray, rate: float, unit: str, description: str) -> None:
    module = nwbfile.create_processing_module("behavior", "Measured behaviour.")
    container = BehavioralTimeSeries(name="BehavioralTimeSeries")
    container.add_timeseries(TimeSeries(name=name, data=np.asarray(data, np.float32), unit=unit, rate=float(rate),
                                        starting_time=0.0, description=description))
    module.add(container)


def uci_to_nwb(npz: Path, out: Path) -> Path:
    """One UCI lower-limb recording (4 muscles + knee angle at 1 kHz) as an NWB file."""
    raw = np.load(npz)
    nwbfile = _session(f"uci-lower-limb-{npz.stem}", f"UCI EMG dataset in lower limb, recording {npz.stem}.",
                       UCI_MUSCLES, raw["emg"], 1000.0, 1e-3, npz.stem[:2], "right leg")
    _add_behavior(nwbfile, "knee_angle", raw["knee_deg"], 1000.0, "degrees", "Knee flexion-extension (goniometer).")
    with NWBHDF5IO(str(out), "w") as io:
        io.write(nwbfile)
    return out


def elderly_to_nwb(npz: Path, task: str, out: Path) -> Path:
    """One 10 s isometric task (VL, BF, TA or LG) of an elderly-isometric subject, with its load-cell force."""
    raw = np.load(npz)
    muscles = [str(m) for m in raw["muscles"]]
    k = muscles.index(task)
    nwbfile = _session(f"elderly-isometric-{npz.stem}-{task}", f"Isometric {task} task, {npz.stem}.", muscles,
                       raw[f"emg_{task}"], float(raw["fs"]), 1.0, npz.stem, "leg")
    _add_behavior(nwbfile, "force", raw["force"][:, k], float(raw["fs"]), "a.u.", "Load cell during the task.")
    with NWBHDF5IO(str(out), "w") as io:
        io.write(nwbfile)
    return out
