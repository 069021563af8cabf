"""Unit tests of the extension's classes: constructors, shape checks, JSON fields, mocks."""

from __future__ import annotations

import json

import ndx_lfads_emg
import numpy as np
import pynwb
import pytest
from hdmf.backends.hdf5 import H5DataIO
from ndx_lfads_emg import NAMESPACE, LatentFactors, LFADSModelProvenance, MuscleActivation
from ndx_lfads_emg.testing import mock_LatentFactors, mock_LFADSModelProvenance, mock_MuscleActivation
from pynwb.testing.mock.base import mock_TimeSeries
from pynwb.testing.mock.ecephys import mock_ElectrodeTable
from pynwb.testing.mock.file import mock_NWBFile

MUSCLES = ["gastrocnemius", "soleus", "tibialis_anterior", "vastus_lateralis"]


def _activation(n_time: int = 100, n_muscles: int = 4, **kwargs) -> MuscleActivation:
    args = dict(
        name="muscle_activation",
        description="AutoLFADS estimate of muscle activation",
        data=np.random.default_rng(0).random((n_time, n_muscles)),
        unit="a.u.",
        rate=100.0,
        starting_time=0.0,
        method="AutoLFADS",
    )
    args.update(kwargs)
    return MuscleActivation(**args)


def test_namespace_loaded() -> None:
    assert NAMESPACE == "ndx-lfads-emg"
    assert ndx_lfads_emg.NAMESPACE_PATH.is_file()
    assert NAMESPACE in pynwb.available_namespaces()
    for cls in (MuscleActivation, LatentFactors, LFADSModelProvenance):
        assert pynwb.get_class(cls.__name__, NAMESPACE) is cls


def test_muscle_activation_with_electrodes() -> None:
    nwbfile = mock_NWBFile()
    mock_ElectrodeTable(n_rows=4, nwbfile=nwbfile)
    region = nwbfile.create_electrode_table_region([0, 1, 2, 3], "muscles")
    ma = _activation(electrodes=region, uncertainty=np.zeros((100, 4)))
    assert ma.method == "AutoLFADS"
    assert ma.unit == "a.u."
    assert ma.electrodes is region
    assert ma.muscle_names is None
    assert ma.muscles == [str(x) for x in nwbfile.electrodes["location"][:]]


def test_muscle_activation_with_names() -> None:
    source = mock_TimeSeries(data=np.zeros((50, 4)), rate=10.0)
    ma = _activation(muscle_names=MUSCLES, source_series=source)
    assert ma.muscles == MUSCLES
    assert ma.source_series is source
    assert ma.uncertainty is None and ma.electrodes is None


def test_muscle_activation_wrapped_data() -> None:
    """Compressed (H5DataIO-wrapped) data and uncertainty are checked like plain arrays."""
    wrap = lambda a: H5DataIO(a, compression="gzip")  # noqa: E731
    ma = _activation(
        data=wrap(np.zeros((100, 4))), uncertainty=wrap(np.zeros((100, 4))), muscle_names=MUSCLES
    )
    assert ma.muscles == MUSCLES
    with pytest.raises(ValueError, match="uncertainty"):
        _activation(data=wrap(np.zeros((100, 4))), uncertainty=wrap(np.zeros((100, 3))), muscle_names=MUSCLES)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "electrodes.*muscle_names"),
        ({"muscle_names": MUSCLES[:3]}, "3 entries"),
        ({"muscle_names": MUSCLES, "uncertainty": np.zeros((100, 3))}, "uncertainty"),
        ({"muscle_names": MUSCLES, "data": np.zeros(100)}, "2-D"),
    ],
)
def test_muscle_activation_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _activation(**kwargs)


def test_latent_factors() -> None:
    lf = LatentFactors(
        name="latent_factors",
        data=np.zeros((20, 3)),
        unit="a.u.",
        rate=100.0,
        inferred_inputs=np.zeros((20, 1)),
    )
    assert lf.inferred_inputs.shape == (20, 1)
    with pytest.raises(ValueError, match="time points"):
        LatentFactors(
            name="lf", data=np.zeros((20, 3)), unit="a.u.", rate=100.0, inferred_inputs=np.zeros((19, 1))
        )
    with pytest.raises(ValueError, match="2-D"):
        LatentFactors(name="lf", data=np.zeros(20), unit="a.u.", rate=100.0)


def test_provenance() -> None:
    prov = mock_LFADSModelProvenance(random_seed=1234, config={"model": {"gen_dim": 64}})
    assert prov.random_seed == 1234
    d = prov.as_dict()
    assert d["config"]["model"]["gen_dim"] == 64
    assert d["pbt_history"] is None and prov.pbt_history is None
    assert isinstance(prov.config, str)
    with pytest.raises(ValueError, match="not valid JSON"):
        mock_LFADSModelProvenance(config="{not json")
    with pytest.raises(ValueError, match="weights_sha256"):
        mock_LFADSModelProvenance(weights_sha256="abc")


@pytest.mark.parametrize("field", ["config", "preprocessing", "training_metrics", "software_versions", "pbt_history"])
def test_provenance_json_fields_are_objects(field: str) -> None:
    """The spec states each JSON field holds a JSON object; a list (or a scalar) is refused."""
    good = mock_LFADSModelProvenance(**{field: json.dumps({"k": [1, 2]})})
    assert json.loads(getattr(good, field)) == {"k": [1, 2]}
    with pytest.raises(ValueError, match=f"'{field}' must be a JSON object"):
        mock_LFADSModelProvenance(**{field: json.dumps([{"epoch": 0}])})
    with pytest.raises(ValueError, match=f"'{field}' must be a JSON object"):
        mock_LFADSModelProvenance(**{field: "3"})


def test_mocks_are_valid_and_join_a_file() -> None:
    nwbfile = mock_NWBFile()
    prov = mock_LFADSModelProvenance(nwbfile=nwbfile)
    ma = mock_MuscleActivation(method="AutoLFADS", uncertainty=np.zeros((100, 4)), model_provenance=prov, nwbfile=nwbfile)
    lf = mock_LatentFactors(model_provenance=prov, nwbfile=nwbfile)
    module = nwbfile.processing["ecephys"]
    assert module["LFADSModelProvenance"] is prov and module["MuscleActivation"] is ma
    assert module["LatentFactors"] is lf
    assert ma.muscles == MUSCLES and ma.model_provenance is prov
    assert lf.inferred_inputs.shape == (100, 1)
    assert mock_MuscleActivation(data=np.zeros((10, 2))).muscles == MUSCLES[:2]
