"""Motor-unit EMG model: recruitment, rate coding, ISI variability, amplitude scaling, cross-talk, simulator."""

from __future__ import annotations

import numpy as np
import pytest

from nwb_lfads_emg.motor_units import MotorUnitPool, firing_rates, motor_unit_emg, spike_indices, thresholds

FS = 2000.0


def test_thresholds_exponential_and_rate_coding():
    pool = MotorUnitPool()
    th = thresholds(pool)
    assert np.all(np.diff(th) > 0)
    assert th[-1] / th[0] == pytest.approx(30.0) and th[-1] == pytest.approx(0.6)
    assert (th < 0.1).sum() > 40  # many small low-threshold units, few large ones
    e = np.linspace(0, 1, 201)
    r = firing_rates(e, pool)  # (units, time)
    assert r.shape == (100, 201)
    assert np.all(np.diff(r, axis=1) >= -1e-4)  # rates never fall as excitation rises
    first_on = np.argmax(r > 0, axis=1)
    assert np.all(np.diff(first_on) >= 0)  # recruitment in threshold order
    on = r[r > 0]
    assert on.min() >= pool.min_rate_hz - 1e-4 and on.max() <= pool.peak_rate_first_hz + 1e-4
    assert r[-1, -1] == pytest.approx(pool.peak_rate_last_hz)


def test_discharges_have_the_rate_and_isi_variability():
    pool = MotorUnitPool(n_units=5)
    exc = np.full(int(30 * FS), 0.9)
    spikes = spike_indices(exc, FS, pool, np.random.default_rng(0))
    expected = firing_rates(np.array([0.9]), pool)[:, 0]
    for s, rate in zip(spikes, expected, strict=True):
        isi = np.diff(s) / FS
        assert len(s) / 30.0 == pytest.approx(rate, rel=0.05)
        assert isi.std() / isi.mean() == pytest.approx(pool.isi_cv, abs=0.04)


def test_emg_amplitude_grows_with_excitation_and_crosstalk_reaches_neighbours():
    n = int(8 * FS)
    levels = [0.0, 0.1, 0.3, 0.6, 1.0]
    rms = []
    for lev in levels:
        exc = np.zeros((n, 3))
        exc[:, 1] = lev
        emg = motor_unit_emg(exc, FS, np.random.default_rng(1), crosstalk=0.1)
        rms.append(np.sqrt((emg**2).mean(axis=0)))
    rms = np.array(rms)
    assert rms[0].max() == 0.0
    assert np.all(np.diff(rms[:, 1]) > 0)
    assert rms[-1, 1] == pytest.approx(1.0, rel=0.25)  # unit RMS at full excitation
    # neighbours see the active muscle through cross-talk only: attenuated, and with other shapes
    assert 0.02 < rms[-1, 0] / rms[-1, 1] < 0.3 and 0.02 < rms[-1, 2] / rms[-1, 1] < 0.3
    exc = np.zeros((n, 3))
    exc[:, 1] = 1.0
    emg = motor_unit_emg(exc, FS, np.random.default_rng(1), crosstalk=0.1)
    assert abs(np.corrcoef(emg[:, 0], emg[:, 2])[0, 1]) < 0.9  # not one waveform copied


@pytest.mark.parametrize("task", ["locomotion", "isometric"])
def test_simulator_motor_unit_model(task):
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, true_activation_binned

    s = simulate_session(SimulationConfig(emg_model="motor_units", task=task, duration_s=10.0, n_muscles=4,
                                          motor_units_per_muscle=60, seed=2))
    assert s.emg.shape == (20000, 4) and np.all(np.isfinite(s.emg))
    truth = true_activation_binned(s, 200.0)
    # the truth is the drive; the rectified EMG follows it
    from nwb_lfads_emg.preprocess import rectify_highpass

    env = rectify_highpass(s.emg, s.emg_rate)[: 2000 * 10].reshape(2000, 10, 4).mean(1)
    corr = [np.corrcoef(np.convolve(env[:, j], np.ones(20) / 20, "same"), truth[:, j])[0, 1] for j in range(4)]
    assert min(corr) > 0.7, corr
    with pytest.raises(ValueError, match="emg_model"):
        simulate_session(SimulationConfig(emg_model="spikes", duration_s=1.0))
    # the motor-unit model is the simulator's default (the carrier model stays an option)
    assert SimulationConfig().emg_model == "motor_units"
