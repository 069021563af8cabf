"""Mock MuscleActivation, LatentFactors and LFADSModelProvenance with small valid defaults.

Each helper takes every constructor argument as a keyword; with `nwbfile`, the object is also added
to the processing module `processing_module` of that file (created when missing), where the
pipeline writes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pynwb import NWBFile
from pynwb.base import ProcessingModule

from ...lfads_emg import LatentFactors, LFADSModelProvenance, MuscleActivation

MUSCLES = ("gastrocnemius", "soleus", "tibialis_anterior", "vastus_lateralis")


def _module(nwbfile: NWBFile, name: str) -> ProcessingModule:
    """The processing module `name` of `nwbfile`, created when missing."""
    if name in nwbfile.processing:
        return nwbfile.processing[name]
    return nwbfile.create_processing_module(name, "Muscle activation estimated from EMG.")


def _add(obj: Any, nwbfile: NWBFile | None, processing_module: str) -> Any:
    if nwbfile is not None:
        _module(nwbfile, processing_module).add(obj)
    return obj


def mock_LFADSModelProvenance(
    name: str = "LFADSModelProvenance",
    config: dict | str | None = None,
    preprocessing: dict | str | None = None,
    training_metrics: dict | str | None = None,
    software_versions: dict | str | None = None,
    pbt_history: dict | str | None = None,
    random_seed: int = 0,
    weights_sha256: str = "0" * 64,
    source_file_identifier: str = "mock-session",
    source_series_path: str = "/acquisition/EMG",
    source_url: str | None = None,
    nwbfile: NWBFile | None = None,
    processing_module: str = "ecephys",
) -> LFADSModelProvenance:
    """A provenance record with small JSON objects shaped like the pipeline's."""
    obj = LFADSModelProvenance(
        name=name,
        config=config if config is not None else {"preset": "mock", "lfads": {"gen_dim": 8, "fac_dim": 3}},
        preprocessing=preprocessing if preprocessing is not None else {"bin_width_s": 0.005, "scale": [1.0] * 4},
        training_metrics=training_metrics
        if training_metrics is not None
        else {"best_val_loss": 1.0, "device": "cpu", "per_epoch": [{"epoch": 0, "train_loss": 1.1, "val_loss": 1.0}]},
        software_versions=software_versions if software_versions is not None else {"ndx-lfads-emg": "0.2.0"},
        pbt_history=pbt_history,
        random_seed=random_seed,
        weights_sha256=weights_sha256,
        source_file_identifier=source_file_identifier,
        source_series_path=source_series_path,
        source_url=source_url,
    )
    return _add(obj, nwbfile, processing_module)


def mock_MuscleActivation(
    name: str = "MuscleActivation",
    data: Any = None,
    method: str = "LowPass",
    description: str = "Mock muscle activation.",
    unit: str = "a.u.",
    rate: float = 100.0,
    starting_time: float = 0.0,
    muscle_names: list[str] | None = None,
    electrodes: Any = None,
    uncertainty: Any = None,
    method_parameters: str | None = None,
    source_series: Any = None,
    model_provenance: LFADSModelProvenance | None = None,
    seed: int = 0,
    nwbfile: NWBFile | None = None,
    processing_module: str = "ecephys",
) -> MuscleActivation:
    """Activation of 4 muscles over 100 bins; muscles named unless `electrodes` is given."""
    if data is None:
        data = np.random.default_rng(seed).random((100, len(MUSCLES)))
    if muscle_names is None and electrodes is None:
        muscle_names = list(MUSCLES[: np.shape(data)[1]])
    obj = MuscleActivation(
        name=name,
        data=data,
        method=method,
        description=description,
        unit=unit,
        rate=rate,
        starting_time=starting_time,
        muscle_names=muscle_names,
        electrodes=electrodes,
        uncertainty=uncertainty,
        method_parameters=method_parameters,
        source_series=source_series,
        model_provenance=model_provenance,
    )
    return _add(obj, nwbfile, processing_module)


def mock_LatentFactors(
    name: str = "LatentFactors",
    data: Any = None,
    inferred_inputs: Any = None,
    description: str = "Mock LFADS latent factors.",
    unit: str = "a.u.",
    rate: float = 100.0,
    starting_time: float = 0.0,
    source_series: Any = None,
    model_provenance: LFADSModelProvenance | None = None,
    seed: int = 0,
    nwbfile: NWBFile | None = None,
    processing_module: str = "ecephys",
) -> LatentFactors:
    """Three factors and one inferred input over 100 bins."""
    rng = np.random.default_rng(seed)
    if data is None:
        data = rng.random((100, 3))
    if inferred_inputs is None:
        inferred_inputs = rng.random((np.shape(data)[0], 1))
    obj = LatentFactors(
        name=name,
        data=data,
        inferred_inputs=inferred_inputs,
        description=description,
        unit=unit,
        rate=rate,
        starting_time=starting_time,
        source_series=source_series,
        model_provenance=model_provenance,
    )
    return _add(obj, nwbfile, processing_module)
