"""The ground-truth simulator: determinism, realism of its parts, and NWB files that pass inspection."""

from __future__ import annotations

import numpy as np
import pytest
from nwbinspector import Importance, inspect_nwbfile, load_config
from pynwb import NWBHDF5IO, validate
from scipy import signal

from nwb_lfads_emg.simulate import (
    SimulationConfig,
    simulate_session,
    true_activation_binned,
)


def test_deterministic_for_a_seed():
    cfg = SimulationConfig(emg_model="carrier", n_muscles=4, duration_s=3.0, seed=7)
    a, b = simulate_session(cfg), simulate_session(cfg)
    np.testing.assert_array_equal(a.emg, b.emg)
    np.testing.assert_array_equal(a.activation, b.activation)
    assert all(np.array_equal(x, y) for x, y in zip(a.spike_times, b.spike_times, strict=True))
    other = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=4, duration_s=3.0, seed=8))
    assert not np.allclose(a.emg, other.emg)


@pytest.mark.parametrize("task", ["locomotion", "isometric"])
def test_activation_drives_emg_power_and_behaviour(task):
    s = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=6, duration_s=20.0, task=task, seed=1))
    assert s.emg.shape == s.activation.shape == (40000, 6)
    assert s.activation.min() >= 0 and s.activation.max() <= 1
    # The envelope of the EMG follows the activation: rectified EMG smoothed at 5 Hz correlates with it.
    sos = signal.butter(2, [20, 400], btype="bandpass", fs=s.emg_rate, output="sos")
    env = signal.sosfiltfilt(signal.butter(2, 5, fs=s.emg_rate, output="sos"),
                             np.abs(signal.sosfiltfilt(sos, s.emg, axis=0)), axis=0)
    corr = [np.corrcoef(env[:, j], s.activation[:, j])[0, 1] for j in range(6)]
    assert min(corr) > 0.6, corr
    # Behaviour is produced by the muscles: a linear map of twitch-filtered activation explains it.
    assert s.behavior.shape[0] == 2000 and np.all(s.behavior.std(0) > 0)
    spikes = sum(len(t) for t in s.spike_times)
    assert 5 * 20 * 30 * 0.5 < spikes < 60 * 20 * 30


def test_bursts_have_sharp_onsets_and_slower_offsets():
    s = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=4, duration_s=30.0, seed=2))
    d = np.diff(s.activation, axis=0) * s.emg_rate
    # rising slopes are steeper than falling ones (phase-dependent sharpness)
    assert np.all(np.percentile(d, 99.9, axis=0) > 1.5 * -np.percentile(d, 0.1, axis=0))


def test_true_activation_binned_is_the_bin_mean(small_session):
    binned = true_activation_binned(small_session, 200.0)
    assert binned.shape == (4000, 8)
    np.testing.assert_allclose(binned[3], small_session.activation[30:40].mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        true_activation_binned(small_session, 300.0)


@pytest.mark.parametrize("fixture", ["small_nwb", "small_nwb_per_muscle"])
def test_written_file_reads_back_validates_and_passes_inspection(fixture, request, small_session):
    path = request.getfixturevalue(fixture)
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        if fixture == "small_nwb":
            series = nwb.acquisition["EMG"]
            assert list(nwb.electrodes["location"][:]) == small_session.muscle_names
            volts = series.data[:1000, :] * series.conversion
            np.testing.assert_allclose(volts, small_session.emg[:1000], atol=series.conversion)
        else:
            container = nwb.acquisition["preprocessed_emg"]
            assert sorted(container.time_series) == sorted(small_session.muscle_names)
            np.testing.assert_array_equal(container["GM"].data[:100], small_session.emg[:100, 0])
        truth = nwb.processing["ground_truth"]["true_activation"]
        assert truth.data.shape == (20000, 8)
        assert len(nwb.units) == 30
        assert nwb.processing["behavior"]["joint_angles"].data.shape == (2000, 3)
    assert validate(path=str(path)) == []
    messages = list(inspect_nwbfile(str(path), config=load_config("dandi")))
    serious = [m for m in messages if m.importance.value >= Importance.CRITICAL.value]
    assert serious == [], serious
    if fixture == "small_nwb":
        assert not [m for m in messages if m.importance == Importance.BEST_PRACTICE_VIOLATION]
