"""Low-pass envelope of rectified EMG: zero-phase Butterworth, cutoff fixed or picked by decoding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.signal as sps

from ..errors import EMGDataError

DEFAULT_CUTOFFS: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0)


def lowpass_envelope(rectified: np.ndarray, rate: float, cutoff_hz: float, order: int = 4) -> np.ndarray:
    """Zero-phase (forward-backward) Butterworth low-pass of rectified EMG along time (axis 0)."""
    x = np.asarray(rectified, dtype=np.float64)
    if not 0 < cutoff_hz < rate / 2:
        raise EMGDataError(f"lowpass_envelope: cutoff {cutoff_hz} Hz is outside (0, {rate / 2}) Hz")
    sos = sps.butter(order, cutoff_hz, btype="lowpass", fs=rate, output="sos")
    return sps.sosfiltfilt(sos, x, axis=0)


def cutoff_scores(
    rectified: np.ndarray,
    rate: float,
    target: np.ndarray,
    target_rate: float,
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
    order: int = 4,
    quadratic: bool = False,
    n_folds: int = 5,
    max_lag_s: float = 0.1,
    lag_step_s: float = 0.01,
) -> dict[float, float]:
    """Mean cross-validated decoding R^2 of `target` (time, outputs) from the envelope at each cutoff.

    Both signals start at the same time; the envelope is averaged onto the target's time base.
    """
    from ..metrics import decode_r2
    from ..preprocess import bin_like

    y = np.asarray(target, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    scores: dict[float, float] = {}
    for c in cutoffs:
        if not 0 < c < rate / 2:
            continue
        env = lowpass_envelope(rectified, rate, c, order)
        env_t = bin_like(env, rate, target_rate, y.shape[0])
        n = min(env_t.shape[0], y.shape[0])
        r2 = decode_r2(env_t[:n], y[:n], target_rate, quadratic=quadratic, n_folds=n_folds,
                       max_lag_s=max_lag_s, lag_step_s=lag_step_s)
        scores[float(c)] = float(np.nanmean(r2))
    if not scores:
        raise EMGDataError(f"select_cutoff: no usable cutoff in {list(cutoffs)} at {rate} Hz")
    return scores


def select_cutoff(
    rectified: np.ndarray,
    rate: float,
    target: np.ndarray,
    target_rate: float,
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
    **kwargs: object,
) -> float:
    """Cutoff (Hz) whose envelope best decodes `target` by blocked cross-validated lagged ridge."""
    scores = cutoff_scores(rectified, rate, target, target_rate, cutoffs, **kwargs)  # type: ignore[arg-type]
    return max(scores, key=lambda c: scores[c])
