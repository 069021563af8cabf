"""Evaluation of activation estimates: accuracy vs truth, decoding of behaviour, prediction from spikes.

Every method is scored by the same code: R^2 after the best affine map against the truth; a lagged
linear (Wiener-filter style) ridge decoder of the behaviour, cross-validated on contiguous blocks,
on the estimate and on its quadratic expansion (estimate and its square); and the same decoder from
binned spike counts to each estimate channel. Results come as a tidy pandas table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import EMGDataError, describe
from .sources.discover import column_names

try:  # optional: the ridge's small LAPACK calls are fastest single-threaded (threads only contend)
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None


def _one_blas_thread() -> object:
    return _threadpool_limits(limits=1, user_api="blas") if _threadpool_limits else nullcontext()


DEFAULT_ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Ridge penalties tried (per sample, on z-scored features); picked by inner blocked CV per output."""


# ----------------------------------------------------------------------------- metrics


def r2_affine(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-channel R^2 of `truth` after the best affine map of `estimate` (= squared correlation)."""
    e = np.asarray(estimate, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if e.ndim == 1:
        e = e[:, None]
    if t.ndim == 1:
        t = t[:, None]
    n = min(e.shape[0], t.shape[0])
    if e.shape[1] != t.shape[1]:
        raise EMGDataError(f"r2_affine: estimate has {e.shape[1]} channels, truth has {t.shape[1]}")
    e, t = e[:n] - e[:n].mean(axis=0), t[:n] - t[:n].mean(axis=0)
    num = (e * t).sum(axis=0) ** 2
    den = (e * e).sum(axis=0) * (t * t).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(den > 0, num / den, 0.0)
    return r2


def quadratic_expand(x: np.ndarray) -> np.ndarray:
    """Columns of `x` followed by their squares (a static nonlinearity the linear decoder can use)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return np.hstack([x, x * x])


def lag_features(x: np.ndarray, rate: float, max_lag_s: float = 0.1, lag_step_s: float = 0.01
                 ) -> tuple[np.ndarray, int]:
    """Causal lagged features: means of `x` over consecutive windows of `lag_step_s` covering the last
    `max_lag_s`. Returns (features (n, ch * n_windows), first valid row)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n, c = x.shape
    m = max(1, int(round(lag_step_s * rate)))
    n_win = max(1, int(round(max_lag_s / max(lag_step_s, 1.0 / rate))))
    cs = np.vstack([np.zeros((1, c)), np.cumsum(x, axis=0)])
    feats = np.zeros((n, c * n_win))
    for w in range(n_win):
        end = np.arange(n) + 1 - w * m  # window covers samples [end - m, end)
        start = end - m
        ok = start >= 0
        f = np.zeros((n, c))
        f[ok] = (cs[end[ok]] - cs[start[ok]]) / m
        feats[:, w * c:(w + 1) * c] = f
    return feats, n_win * m - 1


def _blocks(n: int, n_folds: int) -> list[np.ndarray]:
    edges = np.linspace(0, n, n_folds + 1).astype(int)
    return [np.arange(edges[i], edges[i + 1]) for i in range(n_folds)]


class _Stats:
    """Sufficient statistics (n, sums, cross-products) of a set of rows, for closed-form ridge."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.n = x.shape[0]
        self.sx, self.sy = x.sum(axis=0), y.sum(axis=0)
        self.xx, self.xy = x.T @ x, x.T @ y

    @staticmethod
    def fit(parts: Sequence[_Stats], alphas: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Ridge weights and intercepts for each alpha (intercept not penalised)."""
        n = sum(p.n for p in parts)
        sx = sum(p.sx for p in parts)
        sy = sum(p.sy for p in parts)
        xx = sum(p.xx for p in parts)
        xy = sum(p.xy for p in parts)
        mx, my = sx / n, sy / n
        cxx = xx / n - np.outer(mx, mx)
        cxy = xy / n - np.outer(mx, my)
        lam, v = np.linalg.eigh(cxx)
        lam = np.maximum(lam, 0.0)
        vtc = v.T @ cxy
        out = []
        for a in alphas:
            w = v @ (vtc / (lam + a)[:, None])
            out.append((w, my - mx @ w))
        return out


def decode_r2(
    inputs: np.ndarray,
    outputs: np.ndarray,
    rate: float,
    quadratic: bool = False,
    n_folds: int = 5,
    max_lag_s: float = 0.1,
    lag_step_s: float = 0.01,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    return_prediction: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Cross-validated R^2 per output of lagged ridge regression from `inputs` (time, ch) to `outputs`.

    Folds are contiguous blocks; the penalty is chosen per output by inner blocked CV on the training
    blocks; R^2 is pooled over all held-out rows. `quadratic` decodes from the inputs and their squares.
    """
    xin = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(outputs, dtype=np.float64)
    if xin.ndim == 1:
        xin = xin[:, None]
    squeeze = y.ndim == 1
    if squeeze:
        y = y[:, None]
    n = min(xin.shape[0], y.shape[0])
    xin, y = xin[:n], y[:n]
    if quadratic:
        xin = quadratic_expand(xin)
    feats, first = lag_features(xin, rate, max_lag_s, lag_step_s)
    feats, yv = feats[first:], y[first:]
    ok = np.all(np.isfinite(feats), axis=1) & np.all(np.isfinite(yv), axis=1)
    feats, yv = feats[ok], yv[ok]
    if n_folds < 3 or feats.shape[0] < 10 * n_folds:
        raise EMGDataError(f"decode_r2: {feats.shape[0]} usable rows is too few for {n_folds}-fold CV")
    mu, sd = feats.mean(axis=0), feats.std(axis=0)
    sd[sd == 0] = 1.0
    feats = (feats - mu) / sd
    with _one_blas_thread():  # type: ignore[attr-defined]
        pred = _blocked_ridge_cv(feats, yv, n_folds, alphas)
    ss_res = ((pred - yv) ** 2).sum(axis=0)
    ss_tot = ((yv - yv.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)
    if return_prediction:
        return r2, pred
    return r2


def _blocked_ridge_cv(feats: np.ndarray, yv: np.ndarray, n_folds: int, alphas: Sequence[float]) -> np.ndarray:
    """Held-out predictions of ridge regression over contiguous folds, penalty by inner blocked CV."""
    blocks = _blocks(feats.shape[0], n_folds)
    stats = [_Stats(feats[b], yv[b]) for b in blocks]
    pred = np.empty_like(yv)
    q = yv.shape[1]
    for i, test in enumerate(blocks):
        train = [j for j in range(n_folds) if j != i]
        sse = np.zeros((len(alphas), q))
        for j in train:  # inner CV: leave one training block out
            fits = _Stats.fit([stats[k] for k in train if k != j], alphas)
            xj, yj = feats[blocks[j]], yv[blocks[j]]
            for a, (w, b0) in enumerate(fits):
                sse[a] += ((xj @ w + b0 - yj) ** 2).sum(axis=0)
        best = sse.argmin(axis=0)
        fits = _Stats.fit([stats[k] for k in train], alphas)
        for o in range(q):
            w, b0 = fits[best[o]]
            pred[test, o] = feats[test] @ w[:, o] + b0[o]
    return pred


def with_derivatives(behavior: np.ndarray, names: Sequence[str], rate: float) -> tuple[np.ndarray, list[str]]:
    """Append the time derivative (central differences, units/s) of every behaviour column."""
    b = np.asarray(behavior, dtype=np.float64)
    if b.ndim == 1:
        b = b[:, None]
    d = np.gradient(b, 1.0 / rate, axis=0) if b.shape[0] > 1 else np.zeros_like(b)
    return np.hstack([b, d]), list(names) + [f"d_{n}" for n in names]


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


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean R^2 per method (rows) and analysis (columns)."""
    if table.empty:
        return pd.DataFrame()
    return table.pivot_table(index="method", columns="analysis", values="r2", aggfunc="mean", sort=False)


def save_table(table: pd.DataFrame, out_dir: str | Path, stem: str = "evaluation") -> tuple[Path, Path]:
    """Write the tidy table as CSV and JSON (records) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, js = out / f"{stem}.csv", out / f"{stem}.json"
    table.to_csv(csv, index=False)
    table.to_json(js, orient="records", indent=1)
    return csv, js


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


def _series_times(ts: object, n: int) -> np.ndarray:
    rate = getattr(ts, "rate", None)
    if rate is not None:
        return float(getattr(ts, "starting_time", 0.0) or 0.0) + np.arange(n) / float(rate)
    return np.asarray(ts.timestamps[:], dtype=np.float64)  # type: ignore[attr-defined]


def _series_values(ts: object) -> np.ndarray:
    data = np.asarray(ts.data[:], dtype=np.float64)  # type: ignore[attr-defined]
    data = data * float(getattr(ts, "conversion", 1.0) or 1.0) + float(getattr(ts, "offset", 0.0) or 0.0)
    return data[:, None] if data.ndim == 1 else data


def _on_bins(ts: object, rate: float, start: float, n_bins: int) -> np.ndarray:
    """A TimeSeries onto bins (mean per bin when its rate is a whole multiple, else interpolation)."""
    from .preprocess import bin_like

    values = _series_values(ts)
    if getattr(ts, "rate", None) is not None:
        out = bin_like(values, float(ts.rate), rate, n_bins,  # type: ignore[attr-defined]
                       float(getattr(ts, "starting_time", 0.0) or 0.0), start)
        if out.shape[0] == n_bins:
            return out
    t = _series_times(ts, values.shape[0])
    centres = start + (np.arange(n_bins) + 0.5) / rate
    return np.column_stack([np.interp(centres, t, values[:, j], left=np.nan, right=np.nan)
                            for j in range(values.shape[1])])


def _behaviour_series(module: object) -> list[object]:
    from pynwb import TimeSeries

    found: list[object] = []
    for obj in module.data_interfaces.values():  # type: ignore[attr-defined]
        if isinstance(obj, TimeSeries):
            found.append(obj)
        else:
            for attr in ("time_series", "spatial_series"):
                inner = getattr(obj, attr, None)
                if isinstance(inner, dict):
                    found.extend(v for v in inner.values() if isinstance(v, TimeSeries))
    return found


def _oracle_lowpass(rect: np.ndarray, raw_rate: float, rate: float, n_bins: int, raw_start: float, start: float,
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
    **kwargs: object,
) -> pd.DataFrame:
    """Score every `MuscleActivation` in an NWB file (all processing modules) by `compare_estimates`.

    Behaviour comes from `processing/behavior` (all series, or those named in `behavior`), the truth
    from `processing/ground_truth/true_activation`, spikes from the Units table; with `report_dir`
    the table, figures and report.html are written there. With `oracle`, the low-pass whose cutoff was
    picked with the truth (else the behaviour) is scored as `LowPassOracle`: an upper reference, not a
    method a user could run. Extra keyword arguments go to `compare_estimates`.
    """
    from pynwb import NWBHDF5IO

    from . import ndx  # registers the extension
    from .preprocess import PreprocessConfig, bin_like, rectify_highpass

    path = Path(path)
    if not path.is_file():
        raise EMGDataError(describe(path, None, "no such file"))
    with NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
        nwbfile = io.read()
        found: list[tuple[str, object]] = []
        for mod_name, module in nwbfile.processing.items():
            for name, obj in module.data_interfaces.items():
                if isinstance(obj, ndx.MuscleActivation):
                    found.append((f"processing/{mod_name}/{name}", obj))
        if not found:
            raise EMGDataError(describe(path, "processing", "no MuscleActivation estimates in the file"))
        found.sort(key=lambda kv: (getattr(kv[1], "method", "") != "AutoLFADS", kv[0]))
        ref_path, ref = found[0]
        ref_data = np.asarray(ref.data[:], dtype=np.float64)  # type: ignore[attr-defined]
        n_bins = ref_data.shape[0]
        rate = float(ref.rate) if ref.rate is not None else float(  # type: ignore[attr-defined]
            1.0 / np.median(np.diff(ref.timestamps[:])))  # type: ignore[attr-defined]
        start = float(_series_times(ref, n_bins)[0])
        muscles = ref.muscles  # type: ignore[attr-defined]
        estimates: dict[str, np.ndarray] = {}
        names_used = [str(getattr(o, "method", None) or p.rsplit("/", 1)[-1]) for p, o in found]
        for (p, obj), label in zip(found, names_used, strict=True):
            key = label if names_used.count(label) == 1 else p.split("/", 1)[1].replace("/", ":")
            cols = obj.muscles  # type: ignore[attr-defined]
            if sorted(cols) != sorted(muscles):
                continue  # another EMG series: not on this one's muscles
            data = _on_bins(obj, rate, start, n_bins)
            estimates[key] = data[:, [cols.index(m) for m in muscles]]

        beh, beh_names = None, None
        if "behavior" in nwbfile.processing:
            wanted = [behavior] if isinstance(behavior, str) else behavior
            series = [ts for ts in _behaviour_series(nwbfile.processing["behavior"])
                      if wanted is None or ts.name in wanted]
            if wanted is not None and not series:
                raise EMGDataError(describe(path, "processing/behavior", f"no behaviour series named {wanted}"))
            cols_b, names_b = [], []
            for ts in series:
                v = _on_bins(ts, rate, start, n_bins)
                cols_b.append(v)
                names_b += column_names(ts, v.shape[1])
            if cols_b:
                beh, beh_names = np.hstack(cols_b), names_b
        elif behavior is not None:
            raise EMGDataError(describe(path, "processing/behavior", "no behaviour module in the file"))

        truth = None
        gt = nwbfile.processing.get("ground_truth")
        if gt is not None and "true_activation" in gt.data_interfaces:
            truth = _on_bins(gt["true_activation"], rate, start, n_bins)
            if truth.shape[1] != len(muscles):
                truth = None

        spikes = None
        if nwbfile.units is not None and len(nwbfile.units) > 0:
            from .sources.reader import read_spikes_binned

            spikes = read_spikes_binned(nwbfile, start + np.arange(n_bins + 1) / rate).astype(np.float64)

        rectified = None
        source = getattr(ref, "source_series", None)
        if include_rectified and source is not None and getattr(source, "rate", None) is not None:
            shape = source.data.shape
            if len(shape) == 2 and shape[0] * shape[1] <= 5e7 and shape[1] == len(muscles):
                rect = rectify_highpass(_series_values(source), float(source.rate), PreprocessConfig())
                rectified = bin_like(rect, float(source.rate), rate, n_bins,
                                     float(source.starting_time or 0.0), start)
                if rectified.shape[0] != n_bins:
                    rectified = None
                elif oracle and (truth is not None or beh is not None):
                    estimates.update(_oracle_lowpass(rect, float(source.rate), rate, n_bins,
                                                     float(source.starting_time or 0.0), start, truth, beh))

    # rows where the behaviour is undefined (outside its time range) are dropped
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
    table = compare_estimates(estimates, rate, behavior=beh, behavior_names=beh_names, truth=truth,
                              spikes=spikes, rectified=rectified, muscle_names=muscles,
                              **kwargs)  # type: ignore[arg-type]
    table.attrs["source"] = str(path)
    table.attrs["reference_series"] = ref_path
    if report_dir is not None:
        from .report import make_report

        make_report(report_dir, table, rate, estimates, rectified=rectified, truth=truth,
                    muscle_names=muscles, title=f"Activation estimates: {path.name}")
    return table
