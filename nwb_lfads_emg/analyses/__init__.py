"""The seed paper's analyses beyond decoding: phase-resolved frequency response (`phase_response`),
oscillations that carry force (`oscillations`) and cortex correlation controlled for smoothness
(`smoothness`). Each module holds pure numpy/scipy functions and a plot; `run_analyses` runs those
that the inputs allow and writes their tables and figures (one report section each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EMGDataError, describe


@dataclass
class Section:
    """One analysis's results for the report: its tables, its figure and what a reader should look for."""

    name: str
    title: str
    look_for: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figure: Path | None = None


LOOK_FOR = {
    "phase_response": "Methods whose bandwidth changes with phase (wide at sharp burst onsets, narrow "
    "where activation changes slowly: right panel, onset vs offset bars) adapt their filtering to "
    "behaviour; a fixed filter is flat; the truth shows what an ideal estimate would do at each phase.",
    "oscillations": "A peak (triangle) that an estimate shares with the truth, coherence with "
    "force at that frequency, and a drop in force-fluctuation R^2 when the band is notched out: then "
    "the oscillation carries force rather than noise.",
    "smoothness": "Where each method sits against the grey line of low-pass envelopes: a method "
    "on the line is predicted from cortex only as well as an equally smooth envelope; above it (and "
    "further right in the second panel) it is closer to what cortex drives.",
}


def cycles_from_series(values: np.ndarray, rate: float, start: float = 0.0, min_cycle_s: float = 0.2
                       ) -> np.ndarray:
    """Cycles (start, stop times) of a rhythmic behavioural series from its Hilbert phase: first column,
    band-passed (zero-phase) at half to twice its dominant frequency; a cycle runs from one peak of
    the series (phase 0) to the next. Cycles outside 0.5-2 x the median length or shorter than
    `min_cycle_s` are dropped."""
    import scipy.signal as sps

    x = np.asarray(values, dtype=np.float64)
    x = x[:, 0] if x.ndim == 2 else x
    ok = np.isfinite(x)
    if ok.sum() < 10:
        return np.zeros((0, 2))
    x = np.where(ok, x, np.nanmean(x)) - np.nanmean(x)
    f, p = sps.welch(x, fs=rate, nperseg=min(len(x), int(round(20 * rate))))
    keep = f > 0
    f0 = float(f[keep][np.argmax(p[keep])])
    band = (f0 / 2, min(2 * f0, 0.45 * rate))
    x = sps.sosfiltfilt(sps.butter(2, band, btype="bandpass", fs=rate, output="sos"), x)
    phase = np.angle(sps.hilbert(x))
    up = np.flatnonzero((phase[:-1] < 0) & (phase[1:] >= 0)) + 1
    edges = start + up / rate
    cycles = np.column_stack([edges[:-1], edges[1:]]) if len(edges) > 1 else np.zeros((0, 2))
    if len(cycles):
        d = cycles[:, 1] - cycles[:, 0]
        med = np.median(d)
        cycles = cycles[(d >= min_cycle_s) & (d >= 0.5 * med) & (d <= 2 * med)]
    return cycles


def read_intervals(nwbfile: object, name: str, location: object, flag: str) -> np.ndarray:
    """(start, stop) times of a TimeIntervals table of an open NWB file (`trials`, `epochs` or any in
    `intervals/`); a one-line error naming the file, the table and `flag` when it is missing or empty."""
    key = name.split("/")[-1]
    table = None
    if key == "trials":
        table = getattr(nwbfile, "trials", None)
    elif key == "epochs":
        table = getattr(nwbfile, "epochs", None)
    if table is None:
        table = (getattr(nwbfile, "intervals", None) or {}).get(key)
    if table is None:
        have = sorted((getattr(nwbfile, "intervals", None) or {}).keys())
        raise EMGDataError(describe(location, f"intervals/{key}", f"no such TimeIntervals table (tables: "
                                    f"{', '.join(have) or 'none'}); name one with {flag}"))
    if "start_time" not in table.colnames or "stop_time" not in table.colnames:  # type: ignore[attr-defined]
        raise EMGDataError(describe(location, f"intervals/{key}", f"not a TimeIntervals table; {flag}"))
    out = np.column_stack([np.asarray(table["start_time"][:], dtype=np.float64),  # type: ignore[index]
                           np.asarray(table["stop_time"][:], dtype=np.float64)])  # type: ignore[index]
    out = out[np.all(np.isfinite(out), axis=1) & (out[:, 1] > out[:, 0])]
    if len(out) == 0:
        raise EMGDataError(describe(location, f"intervals/{key}", f"has no interval with stop > start; {flag}"))
    return out


def run_analyses(
    rate: float,
    start: float,
    estimates: Mapping[str, np.ndarray],
    reference: np.ndarray | None,
    muscle_names: Sequence[str],
    truth: np.ndarray | None = None,
    spikes: np.ndarray | None = None,
    force: np.ndarray | None = None,
    force_names: Sequence[str] | None = None,
    cycles: np.ndarray | None = None,
    holds: np.ndarray | None = None,
    table: pd.DataFrame | None = None,
    phase_bins: int = 10,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> list[Section]:
    """Run every analysis the inputs allow (cycles -> phase response; holds and force -> oscillations;
    spikes and a reference -> smoothness control), on one time base at `rate` from `start`.

    `reference` is the rectified EMG binned without aliasing; `truth` joins as method `truth`. With
    `out_dir` each analysis writes its CSV tables and a PNG figure there.
    """
    methods = dict(estimates)
    with_truth = {**methods, "truth": truth} if truth is not None else methods
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    if cycles is not None:
        if reference is None:
            raise EMGDataError("phase response needs the rectified EMG (the estimates' source series)")
        from .phase_response import cycle_profile, onset_offset, phase_response, plot_phase_response

        summary, gains = phase_response(with_truth, reference, rate, cycles, start, n_bins=phase_bins,
                                        muscle_names=muscle_names, progress=progress)
        onoff = onset_offset(summary, cycle_profile(reference, rate, start, cycles, phase_bins), muscle_names)
        sec = Section("phase_response", "Phase-resolved frequency response", LOOK_FOR["phase_response"],
                      {"phase_response": summary, "phase_response_onset_offset": onoff,
                       "phase_response_gains": gains})
        if out is not None:
            sec.figure = Path(plot_phase_response(summary, gains, str(out / "phase_response.png"), onoff=onoff))
        sections.append(sec)
    if holds is not None:
        if force is None:
            raise EMGDataError("oscillations need a force series (--behavior)")
        from .oscillations import oscillations, plot_oscillations

        osc, spectra = oscillations(with_truth, rate, holds, force, start, force_names, progress=progress)
        sec = Section("oscillations", "Oscillations that carry force", LOOK_FOR["oscillations"],
                      {"oscillations": osc, "oscillation_spectra": spectra})
        if out is not None:
            sec.figure = Path(plot_oscillations(osc, spectra, str(out / "oscillations.png")))
        sections.append(sec)
    if spikes is not None and reference is not None:
        from .smoothness import plot_smoothness, smoothness_control

        sm = smoothness_control(methods, reference, spikes, rate, truth=truth, known=table, progress=progress)
        sec = Section("smoothness", "Cortex correlation controlled for smoothness", LOOK_FOR["smoothness"],
                      {"smoothness": sm})
        if out is not None:
            sec.figure = Path(plot_smoothness(sm, str(out / "smoothness.png")))
        sections.append(sec)
    if out is not None:
        for sec in sections:
            for stem, df in sec.tables.items():
                df.to_csv(out / f"{stem}.csv", index=False)
    return sections


def summary_of(name: str, records: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """A printable summary of one analysis table (a DataFrame or its records, as in
    `table.attrs["analyses"]`): for the phase response, the median bandwidth per method and phase."""
    df = pd.DataFrame(records)
    if name == "phase_response" and not df.empty:
        piv = df.pivot_table(index="method", columns="phase_bin", values="bandwidth_hz", aggfunc="median", sort=False)
        piv.columns = [f"{100 * (k + 0.5) / len(piv.columns):.0f}%" for k in piv.columns]
        return piv.round(1)
    return df.round(3)


__all__ = ["LOOK_FOR", "Section", "cycles_from_series", "read_intervals", "run_analyses", "summary_of"]
