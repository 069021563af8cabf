"""Evaluation of activation estimates: accuracy vs truth, decoding of behaviour, prediction from spikes.

Every method is scored by the same code (`metrics`): R^2 after the best affine map against the truth;
a lagged linear (Wiener-filter style) ridge decoder of the behaviour, cross-validated on contiguous
blocks, on the estimate and on its quadratic expansion (estimate and its square); and the same decoder
from binned spike counts to each estimate channel. Results come as a tidy pandas table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import xarray as xr

from .errors import EMGDataError, describe
from .files import check_output_dir
from .metrics import (
    DEFAULT_ALPHAS,
    decode_r2,
    lag_features,
    quadratic_expand,
    r2_affine,
    save_table,
    summarize,
    with_derivatives,
)
from .preprocess import PreprocessConfig, bin_like, rectify_highpass

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- comparison table


def compare_estimates(
    estimates: Mapping[str, np.ndarray],
    rate: float,
    behavior: np.ndarray | None = None,
    behavior_names: Sequence[str] | None = None,
    truth: np.ndarray | None = None,
    spikes: np.ndarray | None = None,
    rectified: np.ndarray | None = None,
    muscle_names: Sequence[str] | None = None,
    derivatives: bool = True,
    n_folds: int = 5,
    max_lag_s: float = 0.1,
    lag_step_s: float = 0.01,
) -> pd.DataFrame:
    """Score every estimate (all on one time base at `rate`) in a tidy table.

    Columns: method, analysis (`vs_truth`, `decode_linear`, `decode_quadratic`, `from_spikes`),
    target (muscle or behaviour output), r2. `rectified` (binned rectified EMG) is scored as method
    `rectified`; `behavior` gets its derivatives appended when `derivatives`; `spikes` are binned counts.
    """
    ests = {str(k): np.atleast_2d(np.asarray(v, dtype=np.float64).T).T for k, v in estimates.items()}
    if rectified is not None:
        ests = {"rectified": np.atleast_2d(np.asarray(rectified, dtype=np.float64).T).T, **ests}
    if not ests:
        raise EMGDataError("compare_estimates: no estimates given")
    lengths = [v.shape[0] for v in ests.values()]
    for extra in (behavior, truth, spikes):
        if extra is not None:
            lengths.append(np.asarray(extra).shape[0])
    n = min(lengths)
    if n < max(lengths) * 0.99 - 2:
        raise EMGDataError(f"compare_estimates: inputs differ in length ({sorted(set(lengths))} rows); "
                           "put them on one time base first")
    n_ch = next(iter(ests.values())).shape[1]
    muscles = list(muscle_names) if muscle_names is not None else [f"ch{i}" for i in range(n_ch)]
    rows: list[dict[str, object]] = []

    def add(method: str, analysis: str, targets: Sequence[str], values: np.ndarray) -> None:
        for tname, val in zip(targets, np.ravel(values), strict=False):
            rows.append({"method": method, "analysis": analysis, "target": str(tname), "r2": float(val)})

    beh = None
    if behavior is not None:
        beh = np.asarray(behavior, dtype=np.float64)[:n]
        if beh.ndim == 1:
            beh = beh[:, None]
        bnames = list(behavior_names) if behavior_names is not None else [f"b{i}" for i in range(beh.shape[1])]
        if derivatives:
            beh, bnames = with_derivatives(beh, bnames, rate)
    tru = None if truth is None else np.asarray(truth, dtype=np.float64)[:n]
    spk = None if spikes is None else np.asarray(spikes, dtype=np.float64)[:n]
    for method, est in ests.items():
        est = est[:n]
        names = muscles if est.shape[1] == len(muscles) else [f"ch{i}" for i in range(est.shape[1])]
        if tru is not None:
            add(method, "vs_truth", names, r2_affine(est, tru))
        if beh is not None:
            kw = dict(n_folds=n_folds, max_lag_s=max_lag_s, lag_step_s=lag_step_s)
            add(method, "decode_linear", bnames, decode_r2(est, beh, rate, quadratic=False, **kw))
            add(method, "decode_quadratic", bnames, decode_r2(est, beh, rate, quadratic=True, **kw))
        if spk is not None:
            add(method, "from_spikes", names,
                decode_r2(spk, est, rate, n_folds=n_folds, max_lag_s=max_lag_s, lag_step_s=lag_step_s))
    return pd.DataFrame(rows, columns=["method", "analysis", "target", "r2"])


__all__ = [
    "DEFAULT_ALPHAS",
    "compare_estimates",
    "decode_r2",
    "evaluate_file",
    "lag_features",
    "quadratic_expand",
    "r2_affine",
    "save_table",
    "summarize",
    "with_derivatives",
]


# ----------------------------------------------------------------------------- NWB files


def _on_bins(series: xr.DataArray, rate: float, start: float, n_bins: int) -> np.ndarray:
    """A series read by `sources` onto bins (mean per bin when its rate is a whole multiple, else
    interpolation at the bin centres)."""
    values = np.asarray(series.values, dtype=np.float64)
    t = np.asarray(series.coords["time"].values, dtype=np.float64)
    src_rate = series.attrs.get("rate")
    if src_rate is not None and values.shape[0] > 0:
        out = bin_like(values, float(src_rate), rate, n_bins, float(t[0]), start)
        if out.shape[0] == n_bins:
            return out
    centres = start + (np.arange(n_bins) + 0.5) / rate
    return np.column_stack([np.interp(centres, t, values[:, j], left=np.nan, right=np.nan)
                            for j in range(values.shape[1])])


def _recorded_preprocessing(ref: object) -> PreprocessConfig:
    """The preprocessing the run recorded in its provenance (defaults when the file has none)."""
    provenance = getattr(ref, "model_provenance", None)
    if provenance is None:
        return PreprocessConfig()
    recorded = provenance.as_dict().get("preprocessing") or {}  # type: ignore[attr-defined]
    names = {f.name for f in dataclasses.fields(PreprocessConfig)}
    return PreprocessConfig(**{k: v for k, v in recorded.items() if k in names})


def _source_path(opened: object, ref: object) -> str | None:
    """Path of the EMG series an estimate links to (`source_series`), among the file's EMG candidates."""
    from .sources.discover import find_emg_candidates

    source = getattr(ref, "source_series", None)
    if source is None:
        return None
    for cand in find_emg_candidates(opened.nwbfile):  # type: ignore[attr-defined]
        if any(obj.object_id == source.object_id for obj in cand.objects):
            return cand.path
    return None


def _rectified_reference(opened: object, ref: object, config: PreprocessConfig, muscles: list[str], rate: float,
                         start: float, n_bins: int, alias_free: bool = False
                         ) -> tuple[np.ndarray | None, np.ndarray | None, tuple | None]:
    """The linked source EMG, high-passed and rectified with the run's recorded preprocessing, on the bins;
    with `alias_free` also the analyses' reference (low-passed at 0.4 x the bin rate before binning); and
    the rectified EMG at its own rate as (values, rate, start) for the oracle low-pass."""
    from .sources import EMGReader

    path = _source_path(opened, ref)
    if path is None:
        return None, None, None
    try:
        reader = EMGReader(opened, path, on_nonfinite="mask", check_dead=False)
    except EMGDataError as exc:  # e.g. irregular timestamps: the estimates are still scored
        log.warning("no rectified reference: %s", exc)
        return None, None, None
    if reader.n_samples * len(muscles) > 5e7 or sorted(reader.muscles) != sorted(muscles):
        return None, None, None
    emg = reader.to_dataarray(muscles=muscles)
    rect = rectify_highpass(np.asarray(emg.values), reader.rate, config)
    rectified = bin_like(rect, reader.rate, rate, n_bins, reader.starting_time, start)
    if rectified.shape[0] != n_bins:
        return None, None, None
    reference = None
    if alias_free:  # aliasing would act as input noise in the analyses and bend the gains down
        from .baselines.lowpass import lowpass_envelope

        reference = bin_like(lowpass_envelope(rect, reader.rate, 0.4 * rate), reader.rate, rate, n_bins,
                             reader.starting_time, start)
    return rectified, reference, (rect, reader.rate, reader.starting_time)


def _oracle_lowpass(rect: np.ndarray, raw_rate: float, raw_start: float, rate: float, n_bins: int, start: float,
                    truth: np.ndarray | None, beh: np.ndarray | None) -> dict[str, np.ndarray]:
    """{"LowPassOracle": envelope on the bins} with the cutoff picked by the truth or the behaviour."""
    from .baselines.lowpass import lowpass_envelope
    from .baselines.tuning import oracle_cutoff
    from .preprocess import bin_like

    def to_bins(env: np.ndarray) -> np.ndarray:
        return bin_like(env, raw_rate, rate, n_bins, raw_start, start)

    rows = np.arange(n_bins) if beh is None else np.flatnonzero(np.all(np.isfinite(beh), axis=1))
    picked = oracle_cutoff(rect, raw_rate, lambda env: to_bins(env)[rows],
                           truth=None if truth is None else truth[rows],
                           behavior=None if beh is None else beh[rows], bin_rate=rate)
    return {} if picked is None else {"LowPassOracle": to_bins(lowpass_envelope(rect, raw_rate, picked[0]))}


def evaluate_file(
    path: str | Path,
    behavior: str | Sequence[str] | None = None,
    report_dir: str | Path | None = None,
    include_rectified: bool = True,
    oracle: bool = True,
    cycles: str | None = None,
    cycles_from: str | None = None,
    holds: str | None = None,
    phase_bins: int = 10,
    progress: bool = False,
    **kwargs: object,
) -> pd.DataFrame:
    """Score every `MuscleActivation` in an NWB file (all processing modules) by `compare_estimates`.

    Behaviour comes from `processing/behavior` (all series, or those named in `behavior`), the truth
    from `processing/ground_truth/true_activation`, spikes from the Units table, the rectified
    reference from the linked EMG preprocessed as the run recorded (all read through `sources`); with `report_dir`
    the table, figures and report.html are written there. Extra keyword arguments go to
    `compare_estimates`. With `oracle`, the low-pass whose cutoff was picked with the truth (else the
    behaviour) is scored as `LowPassOracle`: an upper reference, not a method a user could run. The paper's analyses (`analyses/`) run on request: `cycles` (a TimeIntervals
    table) or `cycles_from` (a behaviour series) -> phase-resolved frequency response in `phase_bins`;
    `holds` (a TimeIntervals table, force from `behavior`) -> oscillations; spikes -> smoothness
    control. Their tables are in `table.attrs["analyses"]` (records) and, with `report_dir`, in the report.
    """
    from . import ndx  # registers the extension
    from .sources import open_source, read_series, read_spikes_binned
    from .sources.discover import walk_series


    path = Path(path)
    if not path.is_file():
        raise EMGDataError(describe(path, None, "no such file"))
    if not 2 <= int(phase_bins) <= 100:
        raise EMGDataError(describe(path, None, f"{phase_bins} phase bins: use 2-100 (--phase-bins)"))
    if report_dir is not None:
        check_output_dir(report_dir, "--report")
    if not h5py.is_hdf5(path):
        raise EMGDataError(describe(path, None, "not an NWB file (not HDF5); give an annotated .nwb file"))
    with open_source(str(path)) as opened:
        nwbfile = opened.nwbfile
        from .analyses import read_intervals

        cycle_times = read_intervals(nwbfile, cycles, path, "--cycles") if cycles else None
        hold_times = read_intervals(nwbfile, holds, path, "--holds") if holds else None
        if holds and (behavior is None or "behavior" not in nwbfile.processing):
            raise EMGDataError(describe(path, "processing/behavior", "the oscillation analysis (--holds) needs a "
                                        "force series: name it with --behavior"))
        found: list[tuple[str, object]] = []
        for mod_name, module in nwbfile.processing.items():
            for name, obj in module.data_interfaces.items():
                if isinstance(obj, ndx.MuscleActivation):
                    found.append((f"processing/{mod_name}/{name}", obj))
        if not found:
            raise EMGDataError(describe(path, "processing", "no MuscleActivation estimates in the file"))
        found.sort(key=lambda kv: (getattr(kv[1], "method", "") != "AutoLFADS", kv[0]))
        ref_path, ref = found[0]
        ref_series = read_series(ref, str(path), ref_path)
        n_bins = ref_series.shape[0]
        times = np.asarray(ref_series.coords["time"].values, dtype=np.float64)
        rate = float(ref.rate) if ref.rate is not None else float(  # type: ignore[attr-defined]
            1.0 / np.median(np.diff(times)))
        start = float(times[0])
        muscles = ref.muscles  # type: ignore[attr-defined]
        estimates: dict[str, np.ndarray] = {}
        names_used = [str(getattr(o, "method", None) or p.rsplit("/", 1)[-1]) for p, o in found]
        for (p, obj), label in zip(found, names_used, strict=True):
            key = label if names_used.count(label) == 1 else p.split("/", 1)[1].replace("/", ":")
            cols = obj.muscles  # type: ignore[attr-defined]
            if sorted(cols) != sorted(muscles):
                continue  # another EMG series: not on this one's muscles
            data = _on_bins(read_series(obj, str(path), p), rate, start, n_bins)
            estimates[key] = data[:, [cols.index(m) for m in muscles]]

        beh, beh_names = None, None
        if "behavior" in nwbfile.processing:
            wanted = [behavior] if isinstance(behavior, str) else behavior
            series = [(p, ts) for p, ts, _ in walk_series(nwbfile) if p.startswith("processing/behavior/")
                      and (wanted is None or ts.name in wanted)]
            if wanted is not None and not series:
                raise EMGDataError(describe(path, "processing/behavior", f"no behaviour series named {wanted}"))
            cols_b, names_b = [], []
            for p, ts in series:
                da = read_series(ts, str(path), p)
                cols_b.append(_on_bins(da, rate, start, n_bins))
                names_b += [str(o) for o in da.coords["output"].values]
            if cols_b:
                beh, beh_names = np.hstack(cols_b), names_b
        elif behavior is not None:
            raise EMGDataError(describe(path, "processing/behavior", "no behaviour module in the file"))
        if cycles_from:
            from .analyses import cycles_from_series

            chosen = [(p, ts) for p, ts, _ in walk_series(nwbfile)
                      if p.startswith("processing/behavior/") and ts.name == cycles_from]
            if not chosen:
                raise EMGDataError(describe(path, "processing/behavior", f"no behaviour series named "
                                            f"{cycles_from!r} (--cycles-from)"))
            phase_source = read_series(chosen[0][1], str(path), chosen[0][0])
            cycle_times = cycles_from_series(_on_bins(phase_source, rate, start, n_bins), rate, start)
            if len(cycle_times) < 2:
                raise EMGDataError(describe(path, f"processing/behavior/{cycles_from}", "fewer than 2 cycles "
                                            "found from its phase (--cycles-from)"))

        truth = None
        gt = nwbfile.processing.get("ground_truth")
        if gt is not None and "true_activation" in gt.data_interfaces:
            truth = _on_bins(read_series(gt["true_activation"], str(path), "processing/ground_truth/true_activation"),
                             rate, start, n_bins)
            if truth.shape[1] != len(muscles):
                truth = None

        spikes = None
        if nwbfile.units is not None and len(nwbfile.units) > 0:
            spikes = read_spikes_binned(opened, start + np.arange(n_bins + 1) / rate).astype(np.float64)

        rectified = reference = None
        prep = _recorded_preprocessing(ref)
        if include_rectified:
            rectified, reference, raw = _rectified_reference(opened, ref, prep, list(muscles), rate, start, n_bins,
                                                             alias_free=cycle_times is not None or spikes is not None)
            if raw is not None and oracle and (truth is not None or beh is not None):
                estimates.update(_oracle_lowpass(*raw, rate, n_bins, start, truth, beh))

    # rows where the behaviour is undefined (outside its time range) are dropped
    first_row = 0
    if beh is not None:
        ok = np.all(np.isfinite(beh), axis=1)
        if ok.sum() < n_bins:
            keep = np.flatnonzero(ok)
            lo, hi = keep[0], keep[-1] + 1
            estimates = {k: v[lo:hi] for k, v in estimates.items()}
            beh = beh[lo:hi]
            truth = None if truth is None else truth[lo:hi]
            spikes = None if spikes is None else spikes[lo:hi]
            rectified = None if rectified is None else rectified[lo:hi]
            reference = None if reference is None else reference[lo:hi]
            first_row = lo
    table = compare_estimates(estimates, rate, behavior=beh, behavior_names=beh_names, truth=truth,
                              spikes=spikes, rectified=rectified, muscle_names=muscles,
                              **kwargs)  # type: ignore[arg-type]
    table.attrs["source"] = str(path)
    table.attrs["reference_series"] = ref_path
    if rectified is not None:
        table.attrs["rectified_preprocessing"] = dataclasses.asdict(prep)
    sections = []
    if cycle_times is not None or hold_times is not None or (spikes is not None and reference is not None):
        from .analyses import run_analyses

        sections = run_analyses(rate, start + first_row / rate, estimates, reference, muscles, truth=truth,
                                spikes=spikes, force=beh, force_names=beh_names, cycles=cycle_times,
                                holds=hold_times, table=table, phase_bins=phase_bins, out_dir=report_dir,
                                progress=progress)
        table.attrs["analyses"] = {k: v.to_dict("records") for sec in sections for k, v in sec.tables.items()
                                   if not k.endswith(("_gains", "_spectra"))}  # the curves stay in the CSVs
    if report_dir is not None:
        from .report import make_report

        make_report(report_dir, table, rate, estimates, rectified=rectified, truth=truth,
                    muscle_names=muscles, title=f"Activation estimates: {path.name}", sections=sections)
    return table
