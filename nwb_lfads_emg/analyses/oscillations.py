"""Oscillations that carry force (the paper: AutoLFADS uncovered high-frequency oscillations that
enhanced the correlation with force): spectra of each estimate within holds, detected peaks, coherence
of each estimate with force, and a band ablation (force-decoding R^2 with the peak band notched out of
the estimate vs intact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.signal as sps

from ..errors import EMGDataError
from ._common import decode_r2

DEFAULT_SEGMENT_S = 1.0
"""Welch segment within holds (s): 1 Hz resolution; holds shorter than this are skipped."""
DEFAULT_PEAK_RATIO = 4.0
"""A spectral peak must stand this many times above the local background (median of +-3 Hz)."""
DEFAULT_FLUCTUATION_HZ = 2.0
"""Force and estimates are high-passed here (zero-phase) before the ablation's decoding, so that R^2
measures the force fluctuations within holds, not the hold levels (which any estimate predicts)."""
DEFAULT_BAND_HALF_WIDTH_HZ = 2.0
"""Half-width of the band notched out around a peak (10 Hz -> 8-12 Hz)."""


def hold_segments(n: int, rate: float, start: float, holds: np.ndarray, min_s: float) -> list[tuple[int, int]]:
    """Sample ranges [i0, i1) of the holds that lie inside the data and last at least `min_s`."""
    out = []
    for h0, h1 in np.asarray(holds, dtype=np.float64).reshape(-1, 2):
        i0, i1 = int(np.ceil((h0 - start) * rate)), int(np.floor((h1 - start) * rate))
        i0, i1 = max(i0, 0), min(i1, n)
        if i1 - i0 >= int(round(min_s * rate)):
            out.append((i0, i1))
    return out


def hold_spectra(x: np.ndarray, rate: float, segments: Sequence[tuple[int, int]], segment_s: float = DEFAULT_SEGMENT_S
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum (linear detrend per segment) of each channel, averaged over all holds by
    their length; returns (freqs, power (freqs, channels))."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64).T).T
    nper = int(round(segment_s * rate))
    total, weight, freqs = None, 0.0, None
    for i0, i1 in segments:
        freqs, p = sps.welch(x[i0:i1], fs=rate, nperseg=nper, detrend="linear", axis=0)
        w = (i1 - i0) / nper
        total = p * w if total is None else total + p * w
        weight += w
    if total is None:
        raise EMGDataError(f"hold_spectra: no hold of at least {segment_s} s")
    return freqs, total / weight


def find_peaks(freqs: np.ndarray, power: np.ndarray, fmin: float = 3.0, fmax: float | None = None,
               min_ratio: float = DEFAULT_PEAK_RATIO) -> list[tuple[float, float]]:
    """Local maxima of a spectrum standing `min_ratio` times above its background (running median over
    +-3 Hz of the log power); returns (frequency, ratio) pairs, strongest first."""
    df = float(freqs[1] - freqs[0])
    half = max(2, int(round(3.0 / df)))
    logp = np.log(np.maximum(power, 1e-300))
    padded = np.pad(logp, half, mode="edge")
    background = np.array([np.median(padded[i:i + 2 * half + 1]) for i in range(len(logp))])
    ratio = np.exp(logp - background)
    fmax = freqs[-1] * 0.8 if fmax is None else fmax
    found = []
    for i in range(1, len(freqs) - 1):
        if fmin <= freqs[i] <= fmax and power[i] >= power[i - 1] and power[i] >= power[i + 1] \
                and ratio[i] >= min_ratio:
            found.append((float(freqs[i]), float(ratio[i])))
    return sorted(found, key=lambda fr: -fr[1])


def hold_coherence(x: np.ndarray, y: np.ndarray, rate: float, segments: Sequence[tuple[int, int]],
                   segment_s: float = DEFAULT_SEGMENT_S) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude-squared coherence of every channel of x with every column of y, cross-spectra pooled
    over holds; returns (freqs, coherence (freqs, x channels, y columns))."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64).T).T
    y = np.atleast_2d(np.asarray(y, dtype=np.float64).T).T
    nper = int(round(segment_s * rate))
    sxy = sxx = syy = None
    freqs = np.zeros(0)
    for i0, i1 in segments:
        xs, ys = x[i0:i1], y[i0:i1]
        freqs, pxy = sps.csd(xs[:, :, None], ys[:, None, :], fs=rate, nperseg=nper, detrend="linear", axis=0)
        _, pxx = sps.welch(xs, fs=rate, nperseg=nper, detrend="linear", axis=0)
        _, pyy = sps.welch(ys, fs=rate, nperseg=nper, detrend="linear", axis=0)
        w = (i1 - i0) / nper
        sxy = pxy * w if sxy is None else sxy + pxy * w
        sxx = pxx * w if sxx is None else sxx + pxx * w
        syy = pyy * w if syy is None else syy + pyy * w
    if sxy is None:
        raise EMGDataError(f"hold_coherence: no hold of at least {segment_s} s")
    with np.errstate(divide="ignore", invalid="ignore"):
        coh = np.abs(sxy) ** 2 / (sxx[:, :, None] * syy[:, None, :])
    return freqs, np.nan_to_num(coh)


def notch_band(x: np.ndarray, rate: float, band: tuple[float, float], order: int = 4) -> np.ndarray:
    """`x` with the band removed by a zero-phase Butterworth band-stop along time."""
    sos = sps.butter(order, band, btype="bandstop", fs=rate, output="sos")
    return sps.sosfiltfilt(sos, np.asarray(x, dtype=np.float64), axis=0)


def _in_holds(y: np.ndarray, segments: Sequence[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(y.shape[0], dtype=bool)
    for i0, i1 in segments:
        mask[i0:i1] = True
    out = np.array(y, dtype=np.float64)
    out[~mask] = np.nan  # rows outside holds are dropped by the decoder; lags still see the full signal
    return out


def oscillations(
    estimates: Mapping[str, np.ndarray],
    rate: float,
    holds: np.ndarray,
    force: np.ndarray,
    start: float = 0.0,
    force_names: Sequence[str] | None = None,
    band: tuple[float, float] | None = None,
    segment_s: float = DEFAULT_SEGMENT_S,
    min_ratio: float = DEFAULT_PEAK_RATIO,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per method: the strongest spectral peak within holds, the coherence with force there, and the
    R^2 of decoding force fluctuations (both high-passed at 2 Hz) within holds from the estimate with
    `band` notched out vs intact.

    `band` defaults to +-2 Hz around the truth's peak (method `truth`), else around the median of the
    methods' peaks; with no peak anywhere there is no ablation. Returns (table, spectra: method, freq_hz,
    power (mean over muscles of each muscle's spectrum over its total power), coherence).
    """
    f = np.atleast_2d(np.asarray(force, dtype=np.float64).T).T
    n = min([f.shape[0]] + [np.asarray(v).shape[0] for v in estimates.values()])
    segs = hold_segments(n, rate, start, holds, segment_s)
    if not segs:
        raise EMGDataError(f"oscillations: none of the {len(holds)} holds lies in the data and lasts {segment_s} s "
                           "(--holds)")
    spectra, peaks, coh = {}, {}, {}
    for method, est in estimates.items():
        x = np.atleast_2d(np.asarray(est, dtype=np.float64).T).T[:n]
        freqs, p = hold_spectra(x, rate, segs, segment_s)
        p_norm = (p / np.maximum(p.sum(axis=0, keepdims=True), 1e-300)).mean(axis=1)
        spectra[method] = p_norm
        peaks[method] = find_peaks(freqs, p_norm, min_ratio=min_ratio)
        _, c = hold_coherence(x, f[:n], rate, segs, segment_s)
        coh[method] = c.max(axis=2).mean(axis=1)  # best force column, mean over muscles
    if band is None:
        ref = peaks.get("truth") or []
        centre = ref[0][0] if ref else (float(np.median([v[0][0] for v in peaks.values() if v]))
                                        if any(peaks.values()) else None)
        if centre is not None:
            band = (max(0.5, centre - DEFAULT_BAND_HALF_WIDTH_HZ), centre + DEFAULT_BAND_HALF_WIDTH_HZ)
    hp = sps.butter(2, DEFAULT_FLUCTUATION_HZ, btype="highpass", fs=rate, output="sos")
    y = _in_holds(sps.sosfiltfilt(hp, f[:n], axis=0), segs)
    rows = []
    from tqdm.auto import tqdm

    for method, est in tqdm(list(estimates.items()), desc="oscillations", unit="method", disable=not progress,
                            leave=False):
        x = np.atleast_2d(np.asarray(est, dtype=np.float64).T).T[:n]
        pk = peaks[method][0] if peaks[method] else (np.nan, np.nan)
        i_pk = int(np.argmin(np.abs(freqs - pk[0]))) if np.isfinite(pk[0]) else None
        row = {"method": method, "peak_hz": pk[0], "peak_ratio": pk[1],
               "all_peaks_hz": " ".join(f"{fr:g}" for fr, _ in peaks[method]),
               "coherence_at_peak": float(coh[method][i_pk]) if i_pk is not None else np.nan,
               "band_lo_hz": np.nan, "band_hi_hz": np.nan, "r2_intact": np.nan, "r2_notched": np.nan}
        if band is not None:
            xh = sps.sosfiltfilt(hp, x, axis=0)
            r2_in = float(np.nanmean(decode_r2(xh, y, rate)))
            r2_out = float(np.nanmean(decode_r2(notch_band(xh, rate, band), y, rate)))
            row.update(band_lo_hz=band[0], band_hi_hz=band[1], r2_intact=r2_in, r2_notched=r2_out)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["delta_r2"] = table["r2_notched"] - table["r2_intact"]
    spec = pd.concat([pd.DataFrame({"method": m, "freq_hz": freqs, "power": spectra[m], "coherence": coh[m]})
                      for m in estimates], ignore_index=True)
    return table, spec


def plot_oscillations(table: pd.DataFrame, spectra: pd.DataFrame, out_path: str) -> str:
    """Spectra within holds (detected peaks marked), coherence with force, and the band ablation bars."""
    import matplotlib.pyplot as plt

    from ..colors import method_color

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method, sub in spectra.groupby("method", sort=False):
        c = method_color(str(method))
        keep = sub["freq_hz"] > 0
        axes[0].semilogy(sub.loc[keep, "freq_hz"], sub.loc[keep, "power"], color=c, lw=1.1, label=str(method))
        axes[1].plot(sub["freq_hz"], sub["coherence"], color=c, lw=1.1, label=str(method))
        row = table[table["method"] == method]
        if not row.empty and np.isfinite(row["peak_hz"].iloc[0]):
            fr = float(row["peak_hz"].iloc[0])
            axes[0].plot([fr], [float(np.interp(fr, sub["freq_hz"], sub["power"]))], "v", color=c, ms=7)
    top = float(spectra["power"].max())
    axes[0].set_ylim(top * 1e-7, top * 3)  # a filtered estimate's tail would squash the rest
    axes[0].set_xlim(0, min(50.0, float(spectra["freq_hz"].max())))
    axes[0].set_xlabel("frequency (Hz)")
    axes[0].set_ylabel("power within holds (fraction, mean over muscles)")
    axes[0].set_title("spectra within holds (v = detected peak)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("frequency (Hz)")
    axes[1].set_ylabel("coherence with force")
    axes[1].set_title("coherence with force within holds", fontsize=9)
    axes[1].set_xlim(0, min(50.0, float(spectra["freq_hz"].max())))
    if table["r2_intact"].notna().any():
        x = np.arange(len(table))
        axes[2].bar(x - 0.2, table["r2_intact"], 0.4, color=[method_color(str(m)) for m in table["method"]],
                    label="intact")
        axes[2].bar(x + 0.2, table["r2_notched"], 0.4, color=[method_color(str(m)) for m in table["method"]],
                    alpha=0.4, hatch="//", label="band notched")
        axes[2].set_xticks(x, table["method"], rotation=20, fontsize=7)
        b0, b1 = table["band_lo_hz"].iloc[0], table["band_hi_hz"].iloc[0]
        axes[2].set_title(f"force-fluctuation R$^2$ in holds, {b0:g}-{b1:g} Hz notched vs intact", fontsize=9)
        axes[2].legend(fontsize=7)
    else:
        axes[2].text(0.5, 0.5, "no peak found: no band ablation", ha="center", va="center")
        axes[2].set_axis_off()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
