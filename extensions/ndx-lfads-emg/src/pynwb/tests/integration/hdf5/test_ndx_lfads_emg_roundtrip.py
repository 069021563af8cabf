"""Round trips through HDF5 with pynwb.testing, validation against the cached spec, and the link mapper."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pynwb
import pytest
from ndx_lfads_emg import LatentFactors, LFADSModelProvenance, MuscleActivation
from ndx_lfads_emg.testing import mock_LatentFactors, mock_LFADSModelProvenance, mock_MuscleActivation
from pynwb import NWBHDF5IO, NWBFile
from pynwb.behavior import BehavioralTimeSeries
from pynwb.ecephys import ElectricalSeries
from pynwb.testing import NWBH5IOFlexMixin, TestCase
from pynwb.testing.mock.base import mock_TimeSeries
from pynwb.testing.mock.ecephys import mock_ElectricalSeries

MUSCLES = ["gastrocnemius", "soleus", "tibialis_anterior", "vastus_lateralis"]
SHA = "ab" * 32
RNG = np.random.default_rng(0)


def _provenance(name: str = "lfads_provenance") -> LFADSModelProvenance:
    return mock_LFADSModelProvenance(
        name=name,
        config={"model": {"gen_dim": 64, "fac_dim": 8}, "training": {"lr": 1e-3, "epochs": 5}},
        preprocessing={"bin_width_s": 0.01, "highpass_hz": 65.0, "scale": [1.0, 2.0, 3.0, 4.0]},
        training_metrics={"best_val_loss": 1.7, "device": "cpu", "per_epoch": [{"epoch": 0, "train_loss": 1.5, "val_loss": 1.7}]},
        software_versions={"nwb-lfads-emg": "0.1.0", "torch": "2.13.0"},
        pbt_history={"population": 2, "trials": {"t1": {"val_loss": [1.7]}}, "exploits": [], "winner": {"trial": "t1"}},
        random_seed=1234,
        weights_sha256=SHA,
        source_file_identifier="sub-01_ses-01",
        source_series_path="/acquisition/EMG",
        source_url="https://dandiarchive.org/dandiset/000941/draft",
    )


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
            mock_MuscleActivation(
                name="muscle_activation",
                method="AutoLFADS",
                data=RNG.random((100, 5)),
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
        mock_MuscleActivation(
            name="muscle_activation",
            method="BayesianFilter",
            muscle_names=MUSCLES,
            source_series=emg,
            method_parameters='{"n_levels": 100}',
            nwbfile=self.nwbfile,
            processing_module="behavior",
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
        mock_LatentFactors(
            name="latent_factors",
            data=RNG.random((100, 3)),
            inferred_inputs=RNG.random((100, 2)),
            source_series=emg,
            nwbfile=self.nwbfile,
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
        assert read.as_dict()["training_metrics"]["per_epoch"][0]["val_loss"] == 1.7
        assert read.as_dict()["pbt_history"]["winner"] == {"trial": "t1"}


# ----------------------------------------------------------------------------- one file with every type


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
        name="emg_threads", description="Bipolar EMG threads, one pair per muscle.", location="hindlimb", device=device
    )
    for muscle in MUSCLES:
        nwbfile.add_electrode(location=muscle, group=group)
    region = nwbfile.create_electrode_table_region(list(range(len(MUSCLES))), "EMG channels, one per muscle")
    emg = ElectricalSeries(
        name="EMG", description="Raw bipolar EMG.", data=RNG.normal(size=(2000, len(MUSCLES))) * 1e-4,
        electrodes=region, rate=2000.0, starting_time=0.0, filtering="none",
    )
    nwbfile.add_acquisition(emg)
    return nwbfile, emg


@pytest.fixture(scope="module")
def written_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both MuscleActivation variants, LatentFactors and provenance; one activation links only its provenance."""
    path = tmp_path_factory.mktemp("ndx") / "results.nwb"
    nwbfile, emg = _emg_nwbfile()
    prov = _provenance()
    prov_module = nwbfile.create_processing_module("ecephys", "Muscle activation estimated from EMG.")
    prov_module.add(prov)
    region = nwbfile.create_electrode_table_region(list(range(len(MUSCLES))), "muscles of the columns")
    mock_MuscleActivation(name="activation_autolfads", method="AutoLFADS", electrodes=region, source_series=emg,
                          model_provenance=prov, uncertainty=RNG.random((100, 4)) * 0.1, nwbfile=nwbfile)
    mock_MuscleActivation(name="activation_lowpass", muscle_names=MUSCLES, source_series=emg,
                          method_parameters=json.dumps({"cutoff_hz": 8.0}), nwbfile=nwbfile)
    mock_MuscleActivation(name="activation_no_source", method="AutoLFADS", model_provenance=prov, nwbfile=nwbfile)
    mock_LatentFactors(name="latent_factors", source_series=emg, model_provenance=prov, nwbfile=nwbfile)
    mock_LatentFactors(name="factors_no_source", model_provenance=prov, nwbfile=nwbfile)
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
        assert auto.source_series is nwbfile.acquisition["EMG"]
        assert json.loads(low.method_parameters) == {"cutoff_hz": 8.0}
        assert auto.uncertainty.shape == auto.data.shape
        assert low.uncertainty is None


def test_absent_source_link_stays_absent(written_file: Path) -> None:
    """The object mapper reads `source_series` by name: a provenance-only link is not taken for the source."""
    with NWBHDF5IO(written_file, "r") as io:
        module = io.read().processing["ecephys"]
        for name in ("activation_no_source", "factors_no_source"):
            assert module[name].source_series is None, name
            assert module[name].model_provenance is module["lfads_provenance"], name


def test_inspector(written_file: Path) -> None:
    """nwbinspector (DANDI config) finds nothing critical, and no best-practice violation on our types."""
    from nwbinspector import Importance, inspect_nwbfile, load_config

    messages = list(inspect_nwbfile(nwbfile_path=written_file, config=load_config("dandi")))
    severe = [m for m in messages if m.importance.value >= Importance.CRITICAL.value]
    ours = [
        m
        for m in messages
        if m.object_type in {"MuscleActivation", "LatentFactors", "LFADSModelProvenance"}
        and m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value
    ]
    assert not severe, severe
    assert not ours, ours
