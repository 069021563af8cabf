"""Pure metrics shared by the evaluation, the report and the baselines (no file I/O beyond tables).

R^2 after the best affine map against the truth; a lagged linear (Wiener-filter style) ridge decoder
cross-validated on contiguous blocks, on an input and on its quadratic expansion; summaries and
saving of the tidy result table.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import EMGDataError

try:  # optional: the ridge's small LAPACK calls are fastest single-threaded (threads only contend)
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None


def one_blas_thread() -> object:
    """Context manager limiting BLAS to one thread: many small solves are fastest so (threads only contend)."""
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
    with one_blas_thread():  # type: ignore[attr-defined]
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
    "decode_r2",
    "lag_features",
    "quadratic_expand",
    "r2_affine",
    "save_table",
    "summarize",
    "with_derivatives",
]
