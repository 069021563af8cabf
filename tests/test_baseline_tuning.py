"""Baselines tuned without the truth: low-pass cutoff by held-out prediction, Bayes filter by marginal likelihood."""

from __future__ import annotations

import numpy as np

from nwb_lfads_emg.baselines.lowpass import lowpass_envelope
from nwb_lfads_emg.baselines.tuning import cutoff_cv_scores, oracle_cutoff, select_cutoff_cv, tune_bayes
from nwb_lfads_emg.evaluate import r2_affine

RATE = 1000.0


def _rectified(drive: np.ndarray, seed: int) -> np.ndarray:
    """Rectified band-limited noise (50-200 Hz carrier) modulated by `drive` (time, ch)."""
    import scipy.signal as sps

    rng = np.random.default_rng(seed)
    sos = sps.butter(4, (50.0, 200.0), btype="bandpass", fs=RATE, output="sos")
    carrier = sps.sosfilt(sos, rng.standard_normal(drive.shape), axis=0)
    return np.abs(carrier / carrier.std() * drive)


def _drive(freq_hz: float, n: int, n_ch: int = 3) -> np.ndarray:
    t = np.arange(n)[:, None] / RATE
    return 1.0 + 0.8 * np.sin(2 * np.pi * freq_hz * t + np.arange(n_ch)[None, :])


def test_cv_cutoff_follows_the_envelope_not_the_noise():
    n = int(40 * RATE)
    slow = select_cutoff_cv(_rectified(_drive(0.3, n), 0), RATE)
    fast = select_cutoff_cv(_rectified(_drive(4.0, n), 0), RATE)
    assert slow < fast, (slow, fast)
    assert fast >= 4.0  # passes the 4 Hz modulation
    scores = cutoff_cv_scores(_rectified(_drive(4.0, n), 1), RATE)
    assert scores[max(scores)] > min(scores.values())  # the highest cutoff copies noise: worse


def test_bayes_parameters_by_marginal_likelihood_follow_the_drive():
    n = int(60 * RATE)
    rng = np.random.default_rng(3)
    steady = _rectified(np.full((n, 2), 1.0) + 0.05 * _drive(0.05, n, 2), 4)
    # jumps between levels every ~0.5 s
    levels = rng.uniform(0.2, 2.0, size=(n // 500 + 1, 2))
    jumpy = _rectified(np.repeat(levels, 500, axis=0)[:n], 5)
    p_steady, p_jumpy = tune_bayes(steady, RATE), tune_bayes(jumpy, RATE)
    assert p_jumpy["jump"] > p_steady["jump"] or p_jumpy["diffusion"] > p_steady["diffusion"], (p_steady, p_jumpy)


def test_oracle_cutoff_is_the_best_by_truth():
    n = int(20 * RATE)
    drive = _drive(2.0, n)
    rect = _rectified(drive, 6)
    def to_bins(env: np.ndarray) -> np.ndarray:
        return env[: n // 10 * 10].reshape(-1, 10, env.shape[1]).mean(1)

    truth = to_bins(drive)
    cutoffs = (0.5, 2.0, 8.0, 30.0)
    picked, by = oracle_cutoff(rect, RATE, to_bins, truth=truth, cutoffs=cutoffs)
    best = max(cutoffs, key=lambda c: r2_affine(to_bins(lowpass_envelope(rect, RATE, c)), truth).mean())
    assert by == "truth" and picked == best
    assert oracle_cutoff(rect, RATE, to_bins) is None
