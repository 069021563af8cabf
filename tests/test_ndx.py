"""Tests of the NWB extension ndx-lfads-emg: constructors, file round trips, validation, inspection."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pynwb
import pytest
from hdmf.backends.hdf5 import H5DataIO
from nwbinspector import Importance, inspect_nwbfile, load_config
from pynwb import NWBHDF5IO, NWBFile
from pynwb.behavior import BehavioralTimeSeries
from pynwb.ecephys import ElectricalSeries
from pynwb.testing import NWBH5IOFlexMixin, TestCase
from pynwb.testing.mock.base import mock_TimeSeries
from pynwb.testing.mock.ecephys import mock_ElectricalSeries, mock_ElectrodeTable
from pynwb.testing.mock.file import mock_NWBFile

from nwb_lfads_emg import ndx
from nwb_lfads_emg.ndx import NAMESPACE, LatentFactors, LFADSModelProvenance, MuscleActivation

REPO = Path(__file__).resolve().parent.parent
MUSCLES = ["gastrocnemius", "soleus", "tibialis_anterior", "vastus_lateralis"]
OUR_TYPES = {"MuscleActivation", "LatentFactors", "LFADSModelProvenance"}
SHA = "ab" * 32
RNG = np.random.default_rng(0)


def _provenance(name: str = "lfads_provenance", **overrides) -> LFADSModelProvenance:
    kwargs = dict(
        name=name,
        config={"model": {"gen_dim": 64, "fac_dim": 8}, "training": {"lr": 1e-3, "epochs": 5}},
        preprocessing={"bin_width_s": 0.01, "highpass_hz": 65.0, "scale": [1.0, 2.0, 3.0, 4.0]},
        training_metrics=[{"epoch": 0, "train_loss": 1.5, "val_loss": 1.7}],
        software_versions={"nwb-lfads-emg": "0.1.0", "torch": "2.13.0"},
        pbt_history=[{"generation": 0, "trial": 1, "lr": 1e-3, "val_loss": 1.7}],
        random_seed=1234,
        weights_sha256=SHA,
        source_file_identifier="sub-01_ses-01",
        source_series_path="/acquisition/EMG",
        source_url="https://dandiarchive.org/dandiset/000941/draft",
    )
    kwargs.update(overrides)
    return LFADSModelProvenance(**kwargs)


def _activation(n_time: int = 100, n_muscles: int = 4, **kwargs) -> MuscleActivation:
    args = dict(
        name="muscle_activation",
        description="AutoLFADS estimate of muscle activation",
        data=RNG.random((n_time, n_muscles)),
        unit="a.u.",
        rate=100.0,
        starting_time=0.0,
        method="AutoLFADS",
    )
    args.update(kwargs)
    return MuscleActivation(**args)


def _emg_nwbfile() -> tuple[NWBFile, ElectricalSeries]:
    """An EMG session as in the Myomatrix dandisets: one ElectricalSeries, electrode location = muscle."""
    nwbfile = NWBFile(
        session_description="Treadmill locomotion with bipolar EMG of four hindlimb muscles.",
        identifier="test-emg-session",
        session_start_time=datetime(2024, 1, 1, 12, tzinfo=timezone.utc),
        experimenter=["Doe, Jane"],
        institution="Test institution",
        experiment_description="EMG during treadmill locomotion.",
    )
    nwbfile.subject = pynwb.file.Subject(
        subject_id="mouse01", species="Mus musculus", sex="F", age="P90D", description="test mouse"
    )
    device = nwbfile.create_device(name="emg_amplifier", description="Bipolar EMG amplifier.")
    group = nwbfile.create_electrode_group(
        name="emg_threads",
        description="Bipolar EMG threads, one pair per muscle.",
        location="hindlimb",
        device=device,
    )
    for muscle in MUSCLES:
        nwbfile.add_electrode(location=muscle, group=group)
    region = nwbfile.create_electrode_table_region(list(range(len(MUSCLES))), "EMG channels, one per muscle")
    emg = ElectricalSeries(
        name="EMG",
        description="Raw bipolar EMG.",
        data=RNG.normal(size=(2000, len(MUSCLES))) * 1e-4,
        electrodes=region,
        rate=2000.0,
        starting_time=0.0,
        filtering="none",
    )
    nwbfile.add_acquisition(emg)
    return nwbfile, emg


def _add_results(nwbfile: NWBFile, emg: ElectricalSeries) -> None:
    """Add one object of each type (both MuscleActivation variants) to `processing/ecephys`."""
    module = nwbfile.create_processing_module("ecephys", "Muscle activation estimated from EMG.")
    prov = _provenance()
    module.add(prov)
    region = nwbfile.create_electrode_table_region(list(range(len(MUSCLES))), "muscles of the columns")
    module.add(
        _activation(
            name="activation_autolfads",
            electrodes=region,
            source_series=emg,
            model_provenance=prov,
            uncertainty=RNG.random((100, 4)) * 0.1,
        )
    )
    module.add(
        _activation(
            name="activation_lowpass",
            method="LowPass",
            muscle_names=MUSCLES,
            source_series=emg,
            method_parameters=json.dumps({"cutoff_hz": 8.0}),
            description="Low-pass envelope of rectified EMG",
        )
    )
    module.add(
        LatentFactors(
            name="latent_factors",
            description="LFADS latent factors",
            data=RNG.random((100, 3)),
            unit="a.u.",
            rate=100.0,
            starting_time=0.0,
            inferred_inputs=RNG.random((100, 2)),
            source_series=emg,
            model_provenance=prov,
        )
    )


# ----------------------------------------------------------------------------- constructors


def test_namespace_loaded() -> None:
    assert NAMESPACE == "ndx-lfads-emg"
    assert ndx.NAMESPACE_PATH.is_file()
    assert NAMESPACE in pynwb.available_namespaces()
    assert pynwb.get_class("MuscleActivation", NAMESPACE) is MuscleActivation


def test_spec_matches_generator(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "create_extension_spec", REPO / "extensions/create_extension_spec.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in (f"{NAMESPACE}.namespace.yaml", f"{NAMESPACE}.extensions.yaml"):
        assert filecmp.cmp(tmp_path / name, ndx.NAMESPACE_PATH.parent / name, shallow=False), name


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


def test_provenance() -> None:
    prov = _provenance(pbt_history=None)
    assert prov.random_seed == 1234
    d = prov.as_dict()
    assert d["config"]["model"]["gen_dim"] == 64
    assert d["pbt_history"] is None and prov.pbt_history is None
    assert isinstance(prov.config, str)
    with pytest.raises(ValueError, match="not valid JSON"):
        _provenance(config="{not json")
    with pytest.raises(ValueError, match="weights_sha256"):
        _provenance(weights_sha256="abc")


# ----------------------------------------------------------------------------- round trips


class _TmpFileMixin(NWBH5IOFlexMixin):
    """NWBH5IOFlexMixin writing into a temporary directory instead of the working directory."""

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        super().setUp()
        self.filename = os.path.join(self._tmp.name, self.filename)
        self.export_filename = os.path.join(self._tmp.name, self.export_filename)

    def tearDown(self) -> None:
        super().tearDown()
        self._tmp.cleanup()

    def validate(self) -> None:
        """Validate each written file once (the base class re-validates the first file after export)."""
        done = self.__dict__.setdefault("_validated", set())
        for path in (self.filename, self.export_filename):
            if os.path.exists(path) and path not in done:
                errors = pynwb.validate(path=path, use_cached_namespaces=True)
                assert not errors, errors
                done.add(path)


class TestMuscleActivationElectrodesRoundTrip(_TmpFileMixin, TestCase):
    def getContainerType(self) -> str:
        return "MuscleActivation electrodes"

    def addContainer(self) -> None:
        emg = mock_ElectricalSeries(name="EMG", data=np.ones((200, 5)), rate=1000.0, nwbfile=self.nwbfile)
        region = self.nwbfile.create_electrode_table_region([0, 1, 2, 3, 4], "muscles of the columns")
        prov = _provenance()
        module = self.nwbfile.create_processing_module("ecephys", "derived EMG")
        module.add(prov)
        module.add(
            _activation(
                n_muscles=5,
                electrodes=region,
                source_series=emg,
                model_provenance=prov,
                uncertainty=RNG.random((100, 5)),
            )
        )

    def getContainer(self, nwbfile: NWBFile) -> MuscleActivation:
        return nwbfile.processing["ecephys"]["muscle_activation"]

    def test_roundtrip(self) -> None:
        super().test_roundtrip()
        read = self.read_container
        assert isinstance(read, MuscleActivation)
        assert read.source_series is self.read_nwbfile.acquisition["EMG"]
        assert isinstance(read.model_provenance, LFADSModelProvenance)
        assert read.electrodes.table is self.read_nwbfile.electrodes


class TestMuscleActivationNamesRoundTrip(_TmpFileMixin, TestCase):
    def getContainerType(self) -> str:
        return "MuscleActivation muscle_names"

    def addContainer(self) -> None:
        # per-muscle layout as in FALCON 000941: a BehavioralTimeSeries holding one TimeSeries per muscle
        emg = BehavioralTimeSeries(name="preprocessed_emg")
        for muscle in MUSCLES:
            emg.add_timeseries(mock_TimeSeries(name=muscle, data=np.ones(200), rate=1000.0))
        self.nwbfile.add_acquisition(emg)
        module = self.nwbfile.create_processing_module("behavior", "derived EMG")
        module.add(
            _activation(
                method="BayesianFilter",
                muscle_names=MUSCLES,
                source_series=emg,
                method_parameters='{"n_levels": 100}',
            )
        )

    def getContainer(self, nwbfile: NWBFile) -> MuscleActivation:
        return nwbfile.processing["behavior"]["muscle_activation"]

    def test_roundtrip(self) -> None:
        super().test_roundtrip()
        read = self.read_container
        assert read.muscles == MUSCLES
        assert read.source_series is self.read_nwbfile.acquisition["preprocessed_emg"]


class TestLatentFactorsRoundTrip(_TmpFileMixin, TestCase):
    def getContainerType(self) -> str:
        return "LatentFactors"

    def addContainer(self) -> None:
        emg = mock_ElectricalSeries(name="EMG", data=np.ones((200, 5)), rate=1000.0, nwbfile=self.nwbfile)
        module = self.nwbfile.create_processing_module("ecephys", "derived EMG")
        module.add(
            LatentFactors(
                name="latent_factors",
                description="LFADS factors",
                data=RNG.random((100, 3)),
                unit="a.u.",
                rate=100.0,
                inferred_inputs=RNG.random((100, 2)),
                source_series=emg,
            )
        )

    def getContainer(self, nwbfile: NWBFile) -> LatentFactors:
        return nwbfile.processing["ecephys"]["latent_factors"]


class TestLFADSModelProvenanceRoundTrip(_TmpFileMixin, TestCase):
    def getContainerType(self) -> str:
        return "LFADSModelProvenance"

    def addContainer(self) -> None:
        module = self.nwbfile.create_processing_module("ecephys", "derived EMG")
        module.add(_provenance())

    def getContainer(self, nwbfile: NWBFile) -> LFADSModelProvenance:
        return nwbfile.processing["ecephys"]["lfads_provenance"]

    def test_roundtrip(self) -> None:
        super().test_roundtrip()
        read = self.read_container
        assert read.as_dict() == self.container.as_dict()
        assert read.as_dict()["training_metrics"][0]["val_loss"] == 1.7


# ----------------------------------------------------------------------------- validation / inspection


@pytest.fixture(scope="module")
def written_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ndx") / "results.nwb"
    nwbfile, emg = _emg_nwbfile()
    _add_results(nwbfile, emg)
    with NWBHDF5IO(path, "w") as io:
        io.write(nwbfile)
    return path


def test_validate(written_file: Path) -> None:
    assert pynwb.validate(path=written_file, use_cached_namespaces=True) == []


def test_read_all(written_file: Path) -> None:
    with NWBHDF5IO(written_file, "r") as io:
        nwbfile = io.read()
        module = nwbfile.processing["ecephys"]
        auto = module["activation_autolfads"]
        low = module["activation_lowpass"]
        assert auto.muscles == MUSCLES and low.muscles == MUSCLES
        assert auto.model_provenance is module["lfads_provenance"]
        assert module["latent_factors"].model_provenance is module["lfads_provenance"]
        assert json.loads(low.method_parameters) == {"cutoff_hz": 8.0}
        assert auto.uncertainty.shape == auto.data.shape


def test_inspector(written_file: Path) -> None:
    messages = list(inspect_nwbfile(nwbfile_path=written_file, config=load_config("dandi")))
    severe = [m for m in messages if m.importance.value >= Importance.CRITICAL.value]
    ours = [
        m
        for m in messages
        if m.object_type in OUR_TYPES and m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value
    ]
    assert not severe, severe
    assert not ours, ours
