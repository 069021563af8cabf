"""Write-back: results land in NWB with the extension's types, validate, and never corrupt the source."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from nwbinspector import Importance, inspect_nwbfile, load_config
from pynwb import NWBHDF5IO, validate

from nwb_lfads_emg.errors import WriteBackError
from nwb_lfads_emg.writeback import (
    ActivationEstimate,
    SessionResults,
    write_into_copy,
    write_new_file,
)

N_BINS = 4000  # 20 s at 200 Hz


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_results(muscles: list[str], seed: int = 0) -> SessionResults:
    """Results of the right shapes with provenance (values are random: only storage is under test)."""
    rng = np.random.default_rng(seed)
    m = len(muscles)
    provenance = {
        "config": {"preset": "demo", "lfads": {"gen_dim": 48}},
        "preprocessing": {"bin_ms": 5.0, "scale": [1.0] * m},
        "training_metrics": {"best_val_loss": -1.5, "per_epoch": [{"epoch": 0, "val_loss": -1.2}]},
        "software_versions": {"torch": "test"},
        "random_seed": 3,
        "weights_sha256": "ab" * 32,
        "source_file_identifier": "source-id",
        "source_series_path": "acquisition/EMG",
    }
    return SessionResults(
        estimates=[
            ActivationEstimate("AutoLFADS", rng.random((N_BINS, m)), uncertainty=rng.random((N_BINS, m))),
            ActivationEstimate("LowPass", rng.random((N_BINS, m)), parameters={"cutoff_hz": 10.0}),
            ActivationEstimate("BayesianFilter", rng.random((N_BINS, m))),
        ],
        rate=200.0,
        starting_time=0.0,
        muscles=muscles,
        source_series_path="acquisition/EMG",
        electrode_indices=list(range(m)),
        factors=rng.random((N_BINS, 8)),
        inferred_inputs=rng.random((N_BINS, 4)),
        provenance=provenance,
    )


@pytest.fixture
def source_copy(small_nwb, tmp_path) -> Path:
    path = tmp_path / "session.nwb"
    shutil.copyfile(small_nwb, path)
    return path


def test_in_place_annotation_round_trips(source_copy, small_session):
    results = make_results(small_session.muscle_names)
    write_into_copy(source_copy, results, source_copy)
    assert validate(path=str(source_copy), use_cached_namespaces=True) == []
    messages = list(inspect_nwbfile(str(source_copy), config=load_config("dandi")))
    assert not [m for m in messages if m.importance.value >= Importance.CRITICAL.value], messages
    ours = [m for m in messages if m.importance == Importance.BEST_PRACTICE_VIOLATION
            and "ecephys" in str(m.location or "")]
    assert ours == [], ours
    with NWBHDF5IO(str(source_copy), "r") as io:
        nwb = io.read()
        module = nwb.processing["ecephys"]
        for est in results.estimates:
            obj = module[est.method]
            assert type(obj).__name__ == "MuscleActivation"
            assert obj.method == est.method
            assert obj.rate == 200.0 and obj.starting_time == 0.0
            np.testing.assert_allclose(obj.data[:], est.data.astype(np.float32))
            assert obj.muscles == small_session.muscle_names
            assert obj.source_series is nwb.acquisition["EMG"]
            assert list(obj.electrodes.data[:]) == list(range(8))
            assert obj.data.compression == "gzip"
        np.testing.assert_allclose(module["AutoLFADS"].uncertainty[:], results.estimates[0].uncertainty, rtol=1e-6)
        factors = module["LatentFactors"]
        assert factors.data.shape == (N_BINS, 8) and factors.inferred_inputs.shape == (N_BINS, 4)
        provenance = module["LFADSModelProvenance"].as_dict()
        assert provenance["random_seed"] == 3 and provenance["config"]["lfads"]["gen_dim"] == 48
        assert module["AutoLFADS"].model_provenance.weights_sha256 == "ab" * 32
        # the source data is untouched
        assert nwb.acquisition["EMG"].data.shape == small_session.emg.shape


def test_second_write_refused_without_overwrite(source_copy, small_session):
    write_into_copy(source_copy, make_results(small_session.muscle_names, 0), source_copy)
    before = _sha(source_copy)
    with pytest.raises(WriteBackError, match=r"already holds results .*--overwrite"):
        write_into_copy(source_copy, make_results(small_session.muscle_names, 1), source_copy)
    assert _sha(source_copy) == before
    replaced = make_results(small_session.muscle_names, 1)
    write_into_copy(source_copy, replaced, source_copy, overwrite=True)
    with NWBHDF5IO(str(source_copy), "r") as io:
        np.testing.assert_allclose(io.read().processing["ecephys"]["LowPass"].data[:],
                                   replaced.estimates[1].data.astype(np.float32))
    assert validate(path=str(source_copy), use_cached_namespaces=True) == []


def test_out_file_leaves_source_alone(source_copy, small_session, tmp_path):
    before = _sha(source_copy)
    out = write_into_copy(source_copy, make_results(small_session.muscle_names), tmp_path / "out" / "a.nwb")
    assert _sha(source_copy) == before and out.is_file()
    with pytest.raises(WriteBackError, match="output file exists"):
        write_into_copy(source_copy, make_results(small_session.muscle_names), out)


def test_failure_before_commit_leaves_original_and_no_temp(source_copy, small_session):
    before = _sha(source_copy)

    def explode(temp: Path) -> None:
        raise OSError("disk full (simulated)")

    with pytest.raises(WriteBackError, match="original untouched"):
        write_into_copy(source_copy, make_results(small_session.muscle_names), source_copy, before_commit=explode)
    assert _sha(source_copy) == before
    assert sorted(p.name for p in source_copy.parent.iterdir()) == ["session.nwb"]


def test_wrong_shape_is_refused_before_anything_is_written(source_copy, small_session):
    results = make_results(small_session.muscle_names)
    results.estimates[0].uncertainty = np.zeros((10, 8))
    before = _sha(source_copy)
    with pytest.raises(WriteBackError, match="uncertainty"):
        write_into_copy(source_copy, results, source_copy)
    assert _sha(source_copy) == before


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_writeback import make_results
    from nwb_lfads_emg.writeback import write_into_copy
    path = Path({path!r})
    muscles = {muscles!r}
    def hang(temp):
        Path({marker!r}).write_text(str(temp))
        time.sleep(60)
    write_into_copy(path, make_results(muscles), path, before_commit=hang if {hang!r} else None)
    """
)


@pytest.mark.parametrize("when", ["after_temp_written", "early"])
def test_killed_writer_leaves_original_intact(source_copy, small_session, tmp_path, when):
    """SIGKILL the writer mid-way (between writing and committing, or at an early moment)."""
    before = _sha(source_copy)
    marker = tmp_path / "marker"
    script = WRITER.format(tests=str(Path(__file__).parent), path=str(source_copy), marker=str(marker),
                           muscles=small_session.muscle_names, hang=when == "after_temp_written")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        if when == "after_temp_written":
            deadline = time.time() + 60
            while not marker.exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert marker.exists(), "writer never reached the commit point"
        else:
            # wait until the temporary copy appears, then kill while it is being filled
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None and not list(source_copy.parent.glob(".*tmp*")):
                time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert _sha(source_copy) == before
    with NWBHDF5IO(str(source_copy), "r") as io:
        assert "ecephys" not in io.read().processing
    assert validate(path=str(source_copy)) == []


def test_new_file_for_read_only_source_keeps_session_identity(small_nwb, small_session, tmp_path):
    with NWBHDF5IO(str(small_nwb), "r") as io:
        src = io.read()
        out = write_new_file(src, "dandi://DANDI/000000/sub-x/sub-x.nwb", make_results(small_session.muscle_names),
                             tmp_path / "derived.nwb")
        identity = (src.session_id, src.subject.subject_id, src.session_start_time, len(src.units))
    assert validate(path=str(out), use_cached_namespaces=True) == []
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        assert (nwb.session_id, nwb.subject.subject_id, nwb.session_start_time, len(nwb.units)) == identity
        assert "EMG" not in nwb.acquisition
        act = nwb.processing["ecephys"]["AutoLFADS"]
        assert act.muscles == small_session.muscle_names and act.source_series is None
        assert "dandi://DANDI/000000" in nwb.source_script
        np.testing.assert_array_equal(nwb.units.get_unit_spike_times(0), small_session.spike_times[0])
        assert "behavior" in nwb.processing
