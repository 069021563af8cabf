"""Phase-resolved frequency response: which linear filter of the rectified EMG each estimate is, per
phase of a behavioural cycle (the paper's "AutoLFADS adjusts its frequency response across phases").

For every method, muscle and phase bin, the estimate's samples that fall in that bin (pooled over all
cycles) are regressed on the rectified EMG at lags -L..+L (a two-sided FIR filter, closed-form ridge).
These are the Wiener-Hopf equations: the lagged cross-covariances of input and output at that phase
over the input's lagged auto-covariances, i.e. the cross-spectral gain S_xy/S_xx computed in the time
domain. Unlike a tapered short-window cross-spectrum it does not smear the gain across frequency by
the window's bandwidth (about 2/window), so a zero-phase Butterworth is recovered exactly; the phase
resolution is the bin, the frequency resolution about 1/(2 L). The gain is |H(f)| over its peak (below
a quarter of the sampling rate; for a low-pass that is H(0)) and the effective bandwidth the first
frequency above the peak where it drops below 1/sqrt(2) (-3 dB). The reference should be free of
aliasing (rectified EMG low-passed below the bin rate's Nyquist before binning): aliased power acts
as input noise and bends the gain down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import EMGDataError
from ._common import one_blas_thread

DEFAULT_PHASE_BINS = 10
"""Phase bins per cycle (`--phase-bins`)."""
DEFAULT_MAX_LAG_S = 0.5
"""Half-length (s) of the fitted two-sided filter. Measured on zero-phase 4th-order Butterworths: with
0.5 s, cutoffs from 4 Hz up are recovered within 0.05 in gain; `filter_half_length` shortens it on short
recordings (20 s of gait: 0.3 s, exact from 10 Hz, 0.12 off at 7 Hz, wrong below ~6 Hz)."""


def phase_bin_index(n: int, rate: float, start: float, cycles: np.ndarray, n_bins: int) -> np.ndarray:
    """Phase bin (0..n_bins-1) of each of `n` samples at `rate` from time `start`; -1 outside every cycle."""
    t = start + np.arange(n) / rate
    out = np.full(n, -1, dtype=np.int64)
    for c0, c1 in np.asarray(cycles, dtype=np.float64).reshape(-1, 2):
        if not c1 > c0:
            continue
        i0, i1 = np.searchsorted(t, [c0, c1])
        phase = (t[i0:i1] - c0) / (c1 - c0)
        out[i0:i1] = np.minimum((phase * n_bins).astype(np.int64), n_bins - 1)
    return out


def _lagged(x: np.ndarray, m: int) -> np.ndarray:
    """Rows t: x[t+m], ..., x[t-m] (lag -m..m) for t in [m, n-m); NaN-padded at both ends to n rows."""
    from numpy.lib.stride_tricks import sliding_window_view

    xp = np.concatenate([np.full(m, np.nan), x, np.full(m, np.nan)])
    return sliding_window_view(xp, 2 * m + 1)[:, ::-1]


RIDGE_GRID: tuple[float, ...] = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
"""Ridge penalties tried, relative to the mean input variance; one is picked per fit by generalised CV."""


def fit_filter(x_lagged: np.ndarray, y: np.ndarray, ridges: Sequence[float] = RIDGE_GRID
               ) -> tuple[np.ndarray, float]:
    """Two-sided FIR filter h (lags -m..m) and in-sample R^2 of y ~ h * x + c over the given rows, by
    ridge regression whose penalty is chosen by generalised cross-validation (closed form, eigenbasis)."""
    xc = x_lagged - x_lagged.mean(axis=0)
    yc = y - y.mean()
    n = len(yc)
    s, v = np.linalg.eigh(xc.T @ xc)
    s = np.maximum(s, 0.0)
    z = v.T @ (xc.T @ yc)
    yy = float(yc @ yc)
    scale = float(s.sum()) / len(s) + 1e-300
    best = None
    for r in ridges:
        lam = r * scale
        rss = yy - 2 * np.sum(z**2 / (s + lam)) + np.sum(s * z**2 / (s + lam) ** 2)
        df = np.sum(s / (s + lam))
        gcv = max(rss, 0.0) / max(n - df, 1e-9) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam, rss)
    _, lam, rss = best  # type: ignore[misc]
    h = v @ (z / (s + lam))
    return h, (1.0 - max(rss, 0.0) / yy) if yy > 0 else float("nan")


def fourier_matrix(m: int, rate: float, freqs: np.ndarray) -> np.ndarray:
    """Rows: exp(-2 pi i f tau / rate) for the taps tau = -m..m, one row per frequency in `freqs`."""
    return np.exp(-2j * np.pi * np.outer(freqs, np.arange(-m, m + 1)) / rate)


def frequency_response(h: np.ndarray, rate: float, freqs: np.ndarray) -> np.ndarray:
    """Complex response at `freqs` (Hz) of the two-sided filter h with taps at lags -m..m."""
    return fourier_matrix((len(h) - 1) // 2, rate, freqs) @ h


def bandwidth_3db(freqs: np.ndarray, gain: np.ndarray) -> float:
    """First frequency (linear interpolation) where `gain` (normalised to 1 at freqs[0]) falls below
    1/sqrt(2); NaN when it never does."""
    below = np.flatnonzero(gain < 1 / np.sqrt(2))
    if below.size == 0:
        return float("nan")
    i = int(below[0])
    if i == 0:
        return float(freqs[0])
    g0, g1 = gain[i - 1], gain[i]
    return float(freqs[i - 1] + (g0 - 1 / np.sqrt(2)) / (g0 - g1) * (freqs[i] - freqs[i - 1]))


def filter_half_length(bins: np.ndarray, n_bins: int, rate: float, max_lag_s: float) -> int:
    """Taps each side of the fitted filter: `max_lag_s`, shortened (to no less than 0.1 s) so that the
    sparsest phase bin has at least 3 samples per coefficient (short recordings, few cycles)."""
    m = max(1, int(round(max_lag_s * rate)))
    fewest = min(int(np.sum(bins[m:len(bins) - m] == k)) for k in range(n_bins))
    fit = (fewest // 3 - 2) // 2
    return max(min(m, fit), int(round(0.1 * rate)), 1)


def phase_response(
    estimates: Mapping[str, np.ndarray],
    rectified: np.ndarray,
    rate: float,
    cycles: np.ndarray,
    start: float = 0.0,
    n_bins: int = DEFAULT_PHASE_BINS,
    max_lag_s: float = DEFAULT_MAX_LAG_S,
    muscle_names: Sequence[str] | None = None,
    freqs: np.ndarray | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per method, muscle and phase bin: the estimate's frequency response relative to `rectified`.

    All arrays are (time, muscles) on one time base at `rate` starting at `start`; `cycles` are
    (start, stop) times. Returns (summary: method, muscle, phase_bin, phase, bandwidth_hz, dc_gain,
    r2, n_samples, max_lag_s; gains: method, muscle, phase_bin, freq_hz, gain). r2 is the fit of the estimate by
    the filter: near 1 means the estimate is that linear filter of the EMG at that phase.
    """
    x_all = np.atleast_2d(np.asarray(rectified, dtype=np.float64).T).T
    n, n_ch = x_all.shape
    if freqs is None:
        freqs = np.arange(0.0, rate / 2 + 1e-9, 0.5)
    bins = phase_bin_index(n, rate, start, cycles, n_bins)
    if not np.any(bins >= 0):
        raise EMGDataError(f"phase_response: none of the {len(cycles)} cycles overlaps the estimates' time range")
    m = filter_half_length(bins, n_bins, rate, max_lag_s)
    muscles = list(muscle_names) if muscle_names is not None else [f"ch{j}" for j in range(n_ch)]
    rows, gain_rows = [], []
    total = len(estimates) * n_ch
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="phase response", unit="muscle", disable=not progress, leave=False)
    fourier = fourier_matrix(m, rate, freqs)
    with one_blas_thread():
        for method, est in estimates.items():
            _fit_method(str(method), est, x_all, n, m, rate, bins, n_bins, muscles, freqs, fourier, rows, gain_rows, bar)
    bar.close()
    bar.close()
    summary = pd.DataFrame(rows, columns=["method", "muscle", "phase_bin", "phase", "bandwidth_hz", "peak_hz",
                                          "dc_gain", "r2", "n_samples", "max_lag_s"])
    gains = pd.concat(gain_rows, ignore_index=True) if gain_rows else pd.DataFrame(
        columns=["method", "muscle", "phase_bin", "freq_hz", "gain"])
    return summary, gains


def _fit_method(method: str, est: np.ndarray, x_all: np.ndarray, n: int, m: int, rate: float, bins: np.ndarray, n_bins: int,
                muscles: list[str], freqs: np.ndarray, fourier: np.ndarray, rows: list, gain_rows: list,
                bar: object) -> None:
    y_all = np.atleast_2d(np.asarray(est, dtype=np.float64).T).T[:n]
    for j in range(min(x_all.shape[1], y_all.shape[1])):
        xl = _lagged(x_all[:, j], m)
        valid = np.all(np.isfinite(xl), axis=1) & np.isfinite(y_all[:, j])
        for k in range(n_bins):
            sel = valid & (bins == k)
            base = {"method": method, "muscle": muscles[j], "phase_bin": k, "phase": (k + 0.5) / n_bins,
                    "n_samples": int(sel.sum()), "max_lag_s": m / rate}
            if sel.sum() < 2 * m + 2:
                rows.append({**base, "bandwidth_hz": np.nan, "peak_hz": np.nan, "dc_gain": np.nan, "r2": np.nan})
                continue
            h, r2 = fit_filter(xl[sel], y_all[sel, j])
            resp = np.abs(fourier @ h)
            low = freqs <= freqs[-1] / 2
            i = int(np.argmax(resp[low]))
            peak = resp[i]
            gain = resp / peak if peak > 0 else np.full_like(resp, np.nan)
            rows.append({**base, "bandwidth_hz": bandwidth_3db(freqs[i:], gain[i:]), "peak_hz": float(freqs[i]),
                         "dc_gain": float(resp[0]), "r2": r2})
            gain_rows.append(pd.DataFrame({"method": method, "muscle": muscles[j], "phase_bin": k,
                                           "freq_hz": freqs, "gain": gain}))
        bar.update(1)  # type: ignore[attr-defined]


def onset_offset_bins(profile: np.ndarray) -> tuple[int, int]:
    """Phase bins of the steepest rise and the steepest fall of a cycle-average profile (circular)."""
    d = np.roll(np.asarray(profile, dtype=np.float64), -1) - profile  # change from bin k to k+1
    return int(np.argmax(d)), int(np.argmin(d))


def cycle_profile(x: np.ndarray, rate: float, start: float, cycles: np.ndarray, n_bins: int) -> np.ndarray:
    """Mean of each channel of `x` per phase bin over all cycles, shape (n_bins, channels)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64).T).T
    bins = phase_bin_index(x.shape[0], rate, start, cycles, n_bins)
    return np.vstack([np.nanmean(x[bins == k], axis=0) if np.any(bins == k) else np.full(x.shape[1], np.nan)
                      for k in range(n_bins)])


def onset_offset(summary: pd.DataFrame, profile: np.ndarray, muscle_names: Sequence[str]) -> pd.DataFrame:
    """Each method's bandwidth at every muscle's burst onset and offset: the phase bins of the steepest
    rise and fall of `profile` (cycle average of the rectified EMG, (bins, muscles))."""
    rows = []
    for j, muscle in enumerate(muscle_names):
        if not np.all(np.isfinite(profile[:, j])):
            continue
        on, off = onset_offset_bins(profile[:, j])
        for method, sub in summary[summary["muscle"] == muscle].groupby("method", sort=False):
            bw = sub.set_index("phase_bin")["bandwidth_hz"]
            rows.append({"method": method, "muscle": muscle, "onset_bin": on, "offset_bin": off,
                         "bandwidth_onset_hz": float(bw.get(on, np.nan)),
                         "bandwidth_offset_hz": float(bw.get(off, np.nan))})
    return pd.DataFrame(rows, columns=["method", "muscle", "onset_bin", "offset_bin", "bandwidth_onset_hz",
                                       "bandwidth_offset_hz"])


def plot_phase_response(summary: pd.DataFrame, gains: pd.DataFrame, out_path: str, n_curves: int = 4,
                        onoff: pd.DataFrame | None = None) -> str:
    """Left: bandwidth vs phase per method (median over muscles, quartile band). Middle: the median gain
    curves of each method at a few phases (line style = phase). Right: bandwidth at burst onsets vs
    offsets (median over muscles)."""
    import matplotlib.pyplot as plt

    from ..colors import method_color

    with_onoff = onoff is not None and not onoff.empty
    fig, axes = plt.subplots(1, 3 if with_onoff else 2, figsize=(15 if with_onoff else 11, 4))
    ax0, ax1 = axes[0], axes[1]
    for method, sub in summary.groupby("method", sort=False):
        g = sub.groupby("phase")["bandwidth_hz"]
        med, q1, q3 = g.median(), g.quantile(0.25), g.quantile(0.75)
        c = method_color(str(method))
        ax0.plot(med.index * 100, med.values, "-o", color=c, ms=3, lw=1.4, label=str(method))
        ax0.fill_between(med.index * 100, q1.values, q3.values, color=c, alpha=0.12, lw=0)
    ax0.set_xlabel("phase of the cycle (%)")
    ax0.set_ylabel("effective bandwidth, -3 dB (Hz)")
    ax0.set_title("bandwidth vs phase (median over muscles, IQR)", fontsize=9)
    ax0.legend(fontsize=7)
    if not gains.empty:
        n_bins = int(summary["phase_bin"].max()) + 1
        shown = sorted(set(np.linspace(0, n_bins - 1, min(n_curves, n_bins)).round().astype(int)))
        styles = ["-", "--", ":", "-."]
        fmax = min(float(gains["freq_hz"].max()), 4 * float(np.nanmedian(summary["bandwidth_hz"])) + 5)
        for method, sub in gains.groupby("method", sort=False):
            for s, k in enumerate(shown):
                cur = sub[sub["phase_bin"] == k].groupby("freq_hz")["gain"].median()
                cur = cur[cur.index <= fmax]
                ax1.plot(cur.index, cur.values, styles[s % 4], color=method_color(str(method)), lw=1.1,
                         label=f"{method}, phase {100 * (k + 0.5) / n_bins:.0f}%")
        ax1.axhline(1 / np.sqrt(2), color="0.6", lw=0.6)
        ax1.set_xlabel("frequency (Hz)")
        ax1.set_ylabel("gain |H(f)| / its peak (median over muscles)")
        ax1.set_title("gain vs rectified EMG at a few phases", fontsize=9)
        ax1.legend(fontsize=6, ncol=2, loc="upper right", framealpha=0.85)
    if with_onoff:
        med = onoff.groupby("method", sort=False)[["bandwidth_onset_hz", "bandwidth_offset_hz"]].median()
        x = np.arange(len(med))
        colors = [method_color(str(m)) for m in med.index]
        axes[2].bar(x - 0.2, med["bandwidth_onset_hz"], 0.4, color=colors, label="burst onset")
        axes[2].bar(x + 0.2, med["bandwidth_offset_hz"], 0.4, color=colors, alpha=0.4, hatch="//",
                    label="burst offset")
        axes[2].set_xticks(x, med.index, rotation=20, fontsize=7)
        axes[2].set_ylabel("effective bandwidth (Hz, median over muscles)")
        axes[2].set_title("at each muscle's steepest rise vs fall", fontsize=9)
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
