"""Write ``0.2.0_ndx_lfads_emg.nwb``: one object of each type as ndx-lfads-emg 0.2.0 writes them.

Run once per release from this folder (``python generate_data_0.2.0.py``) and commit the file; the
back-compat test reads every committed file with the current version. About 250 kB, mostly the
schemas cached in the file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import ndx_lfads_emg
import numpy as np
from ndx_lfads_emg.testing import mock_LatentFactors, mock_LFADSModelProvenance, mock_MuscleActivation
from pynwb import NWBHDF5IO, NWBFile
from pynwb.ecephys import ElectricalSeries

MUSCLES = ["biceps", "triceps", "deltoid"]
OUT = Path(__file__).resolve().parent / f"{ndx_lfads_emg.__version__}_ndx_lfads_emg.nwb"


def main(path: Path = OUT) -> Path:
    """Write the file (EMG in acquisition, estimates and provenance in processing/ecephys)."""
    rng = np.random.default_rng(2)
    nwbfile = NWBFile(
        session_description="Back-compat file of ndx-lfads-emg: three muscles, 2 s of EMG.",
        identifier=f"ndx-lfads-emg-back-compat-{ndx_lfads_emg.__version__}",
        session_start_time=datetime(2025, 1, 1, tzinfo=timezone.utc),
    )
    device = nwbfile.create_device(name="amplifier", description="EMG amplifier.")
    group = nwbfile.create_electrode_group(name="emg", description="Bipolar EMG.", location="arm", device=device)
    for muscle in MUSCLES:
        nwbfile.add_electrode(location=muscle, group=group)
    emg = ElectricalSeries(
        name="EMG", description="Raw EMG.", data=rng.normal(size=(2000, 3)).astype("float32") * 1e-4,
        electrodes=nwbfile.create_electrode_table_region([0, 1, 2], "EMG channels"), rate=1000.0,
    )
    nwbfile.add_acquisition(emg)
    prov = mock_LFADSModelProvenance(
        pbt_history={"population": 2, "generations": 1, "trials": {}, "exploits": [], "winner": {"trial": "t0"}},
        random_seed=7, weights_sha256="c" * 64, source_series_path="/acquisition/EMG",
        source_url="https://dandiarchive.org/dandiset/000000/draft", nwbfile=nwbfile,
    )
    region = nwbfile.create_electrode_table_region([0, 1, 2], "muscles of the columns")
    mock_MuscleActivation(name="AutoLFADS", method="AutoLFADS", data=rng.random((40, 3)).astype("float32"),
                          uncertainty=rng.random((40, 3)).astype("float32") * 0.1, electrodes=region,
                          muscle_names=MUSCLES, source_series=emg, model_provenance=prov, rate=20.0,
                          method_parameters=json.dumps({"n_posterior_samples": 4}), nwbfile=nwbfile)
    mock_MuscleActivation(name="BayesianFilter", method="BayesianFilter", data=rng.random((40, 3)).astype("float32"),
                          muscle_names=MUSCLES, source_series=emg, rate=20.0, nwbfile=nwbfile)
    mock_LatentFactors(data=rng.random((40, 2)).astype("float32"), inferred_inputs=rng.random((40, 1)).astype("float32"),
                       rate=20.0, model_provenance=prov, nwbfile=nwbfile)
    with NWBHDF5IO(path, "w") as io:
        io.write(nwbfile)
    return path


if __name__ == "__main__":
    print(main())
