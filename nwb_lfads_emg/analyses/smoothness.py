"""Cortex correlation controlled for smoothness: `from_spikes` R^2 of every method beside that of low-pass
envelopes of the rectified EMG at several cutoffs (and of the truth where there is one), each with its
spectral bandwidth and its R^2 against the truth. A method predicted better from cortex only because
it is smoother sits on the envelopes' curve; one closer to the truth sits above it and to the right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.signal as sps

from ._common import decode_r2, r2_affine

DEFAULT_CUTOFFS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)
"""Cutoffs (Hz) of the reference low-pass envelopes (zero-phase 4th-order Butterworth)."""


def power_bandwidth(x: np.ndarray, rate: float, fraction: float = 0.9) -> float:
    """Frequency (Hz) below which `fraction` of the power of the mean-removed, per-channel z-scored
    signal lies (Welch, 4 s segments), averaged over channels: a scalar 'smoothness' (lower = smoother)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64).T).T
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0
    z = (x - x.mean(axis=0)) / sd
    f, p = sps.welch(z, fs=rate, nperseg=min(z.shape[0], int(4 * rate)), axis=0)
    c = np.cumsum(p, axis=0)
    c /= np.maximum(c[-1:], 1e-300)
    return float(np.mean([np.interp(fraction, c[:, j], f) for j in range(c.shape[1])]))


def smoothness_control(
    estimates: Mapping[str, np.ndarray],
    rectified: np.ndarray,
    spikes: np.ndarray,
    rate: float,
    truth: np.ndarray | None = None,
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
    known: pd.DataFrame | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per series (each method, each envelope cutoff, the truth): kind, cutoff_hz, from_spikes
    (mean R^2 over muscles of the spikes -> series decoder), vs_truth (mean affine R^2) and bandwidth_hz
    (`power_bandwidth`). `known` (the evaluation table) supplies the methods' scores already computed."""
    from tqdm.auto import tqdm

    from ..baselines.lowpass import lowpass_envelope

    rect = np.atleast_2d(np.asarray(rectified, dtype=np.float64).T).T
    spk = np.asarray(spikes, dtype=np.float64)
    n = min(rect.shape[0], spk.shape[0], *[np.asarray(v).shape[0] for v in estimates.values()])
    tru = None if truth is None else np.atleast_2d(np.asarray(truth, dtype=np.float64).T).T[:n]
    series: list[tuple[str, str, float, np.ndarray]] = [
        (str(k), "method", np.nan, np.atleast_2d(np.asarray(v, dtype=np.float64).T).T[:n]) for k, v in estimates.items()]
    series += [(f"envelope {c:g} Hz", "envelope", float(c), lowpass_envelope(rect[:n], rate, c))
               for c in cutoffs if 0 < c < rate / 2]
    if tru is not None:
        series.append(("truth", "truth", np.nan, tru))
    rows = []
    for name, kind, cut, x in tqdm(series, desc="smoothness control", unit="series", disable=not progress,
                                   leave=False):
        def lookup(analysis: str, name: str = name, kind: str = kind) -> float | None:
            if known is None or kind != "method":
                return None
            sub = known[(known["method"] == name) & (known["analysis"] == analysis)]
            return float(sub["r2"].mean()) if len(sub) else None

        fs = lookup("from_spikes")
        if fs is None:
            fs = float(np.nanmean(decode_r2(spk[:n], x, rate)))
        vt = lookup("vs_truth")
        if vt is None:
            vt = float(np.nanmean(r2_affine(x, tru))) if tru is not None else np.nan
        rows.append({"series": name, "kind": kind, "cutoff_hz": cut, "from_spikes": fs, "vs_truth": vt,
                     "bandwidth_hz": power_bandwidth(x, rate)})
    return pd.DataFrame(rows)


def plot_smoothness(table: pd.DataFrame, out_path: str) -> str:
    """from_spikes R^2 vs bandwidth (left) and vs R^2 against the truth (right): envelopes as a line,
    methods as points, the truth as a star."""
    import matplotlib.pyplot as plt

    from ..colors import envelope_color, method_color

    has_truth = table["vs_truth"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_truth else 1, figsize=(11 if has_truth else 6, 4), squeeze=False)
    env = table[table["kind"] == "envelope"].sort_values("cutoff_hz")
    for ax, xcol, xlabel in zip(axes[0], ["bandwidth_hz", "vs_truth"],
                                ["bandwidth (Hz, 90% of power below)", "R$^2$ vs truth"], strict=False):
        ax.plot(env[xcol], env["from_spikes"], "-", color="0.6", lw=1, zorder=1)
        for i, (_, r) in enumerate(env.iterrows()):
            ax.scatter(r[xcol], r["from_spikes"], color=envelope_color(i, len(env)), s=30, zorder=2,
                       edgecolor="0.3", lw=0.5)
            ax.annotate(f"{r['cutoff_hz']:g} Hz", (r[xcol], r["from_spikes"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
        for _, r in table[table["kind"] == "method"].iterrows():
            ax.scatter(r[xcol], r["from_spikes"], color=method_color(str(r["series"])), s=60, zorder=3,
                       label=str(r["series"]), edgecolor="k", lw=0.5)
        for _, r in table[table["kind"] == "truth"].iterrows():
            ax.scatter(r[xcol], r["from_spikes"], color=method_color("truth"), marker="*", s=150, zorder=3,
                       label="truth")
        if xcol == "bandwidth_hz":
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("R$^2$ from spikes (mean over muscles)")
    axes[0, 0].set_title("predictability from cortex vs smoothness (grey line: low-pass envelopes)", fontsize=9)
    if has_truth:
        axes[0, 1].set_title("predictability from cortex vs closeness to the truth", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
