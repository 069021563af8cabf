"""Files written by earlier releases of the extension stay readable and valid with the current one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pynwb
import pytest
from ndx_lfads_emg import LatentFactors, LFADSModelProvenance, MuscleActivation
from pynwb import NWBHDF5IO

HERE = Path(__file__).resolve().parent
FILES = sorted(HERE.glob("*.nwb"))


def test_there_is_a_file_of_the_current_version() -> None:
    import ndx_lfads_emg

    assert HERE / f"{ndx_lfads_emg.__version__}_ndx_lfads_emg.nwb" in FILES


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_read(path: Path) -> None:
    assert pynwb.validate(path=path, use_cached_namespaces=True) == []
    with NWBHDF5IO(path, "r") as io:
        nwbfile = io.read()
        module = nwbfile.processing["ecephys"]
        emg = nwbfile.acquisition["EMG"]
        prov = module["LFADSModelProvenance"]
        auto, bayes, factors = module["AutoLFADS"], module["BayesianFilter"], module["LatentFactors"]
        assert isinstance(prov, LFADSModelProvenance)
        assert isinstance(auto, MuscleActivation) and isinstance(bayes, MuscleActivation)
        assert isinstance(factors, LatentFactors)
        assert auto.muscles == bayes.muscles == ["biceps", "triceps", "deltoid"]
        assert auto.source_series is emg and bayes.source_series is emg
        assert auto.model_provenance is prov and factors.model_provenance is prov
        assert factors.source_series is None and bayes.model_provenance is None
        assert auto.data.shape == auto.uncertainty.shape == (40, 3) and bayes.uncertainty is None
        assert factors.data.shape == (40, 2) and factors.inferred_inputs.shape == (40, 1)
        assert np.all(np.isfinite(auto.data[:]))
        record = prov.as_dict()
        assert record["random_seed"] == 7 and record["weights_sha256"] == "c" * 64
        assert record["pbt_history"]["winner"] == {"trial": "t0"}
        assert json.loads(auto.method_parameters) == {"n_posterior_samples": 4}
