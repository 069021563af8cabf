"""Baselines tuned per session without the truth or the behaviour, and the oracle low-pass reference.

- Low-pass cutoff by cross-validated prediction of held-out rectified samples: blocks of the
  rectified EMG are hidden, the envelope is re-estimated from the rest by normalised filtering
  (filter(x * m) / filter(m)), and the cutoff whose envelope best predicts the hidden samples wins.
  Blocks are longer than the carrier's correlation time, so a high cutoff cannot copy the noise.
- Bayesian filter's diffusion and jump rate by maximum marginal likelihood: the filter's forward
  pass with a sum-normalised posterior gives log p(data | parameters) as a by-product.
- Oracle low-pass: cutoff picked WITH the truth or the behaviour; an upper reference, not a method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.signal as sps

from ..errors import EMGDataError
from .bayes import DEFAULT_DIFFUSION, DEFAULT_JUMP, default_scale, transition_matrix
from .lowpass import lowpass_envelope

CV_CUTOFFS: tuple[float, ...] = tuple(float(f"{c:.3g}") for c in np.geomspace(0.5, 50.0, 16))
BAYES_DIFFUSIONS: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
BAYES_JUMPS: tuple[float, ...] = (0.1, 1.0, 3.0, 10.0, 30.0)


def _block_means(x: np.ndarray, k: int) -> np.ndarray:
    m = x.shape[0] // k
    return x[: m * k].reshape(m, k, x.shape[1]).mean(axis=1)


def cutoff_cv_scores(rectified: np.ndarray, rate: float, cutoffs: Sequence[float] = CV_CUTOFFS,
                     block_s: float = 0.01, n_folds: int = 5, work_rate: float = 500.0, order: int = 4,
                     guard_s: float = 0.005) -> dict[float, float]:
    """Held-out prediction error (variance-normalised MSE, mean over channels and folds) per cutoff.

    Every `n_folds`-th block of `block_s` is hidden in turn; the envelope is recomputed from the
    other samples only. The rectified EMG is first averaged to about `work_rate` Hz (cutoffs above
    a fifth of that rate are skipped).
    """
    x = np.abs(np.asarray(rectified, dtype=np.float64))
    if x.ndim == 1:
        x = x[:, None]
    k = cv_decimation(rate, work_rate)
    return cutoff_cv_scores_decimated(_block_means(x, k), rate / k, cutoffs, block_s, n_folds, order, guard_s)


def cv_decimation(rate: float, work_rate: float = 500.0) -> int:
    """Raw samples averaged into one sample of the cutoff search's working signal (about `work_rate` Hz)."""
    return max(1, int(round(rate / work_rate)))


def cutoff_cv_scores_decimated(y: np.ndarray, fs: float, cutoffs: Sequence[float] = CV_CUTOFFS,
                               block_s: float = 0.01, n_folds: int = 5, order: int = 4, guard_s: float = 0.005,
                               channel_group: int = 8) -> dict[float, float]:
    """`cutoff_cv_scores` on rectified EMG already averaged to `fs` Hz (`y`, time x channels; what a chunked
    pass keeps). Channels are scored `channel_group` at a time (each channel's score is its own)."""
    y = np.asarray(y, dtype=np.float64)
    blk = max(1, int(round(block_s * fs)))
    n = y.shape[0]
    if n < 4 * n_folds * (blk + 2 * int(round(guard_s * fs))):
        raise EMGDataError(f"cutoff_cv_scores: {n / fs:.2f} s of EMG is too short to choose a low-pass cutoff "
                           "(give --lowpass-hz)")
    guard = int(round(guard_s * fs))
    span = blk + 2 * guard  # hidden: a scored block and, either side, a guard neither used nor scored
    pos = np.arange(n) % span
    fold = (np.arange(n) // span) % n_folds
    scored = (pos >= guard) & (pos < guard + blk)
    var = y.var(axis=0)
    var[~(var > 0)] = 1.0
    scores: dict[float, float] = {}
    for c in cutoffs:
        if not 0 < c < fs / 5:
            continue
        sos = sps.butter(order, c, btype="lowpass", fs=fs, output="sos")
        err = 0.0
        for f in range(n_folds):
            m = (fold != f).astype(np.float64)[:, None]
            den = sps.sosfiltfilt(sos, m, axis=0, padtype="even")  # the same for every channel
            held = (fold == f) & scored
            per_channel = []
            for j in range(0, y.shape[1], channel_group):
                yj = y[:, j:j + channel_group]
                num = sps.sosfiltfilt(sos, yj * m, axis=0, padtype="even")
                pred = num[held] / np.maximum(den[held], 1e-3)
                per_channel.append(np.mean((pred - yj[held]) ** 2, axis=0))
            err += float(np.mean(np.concatenate(per_channel) / var))
        scores[float(c)] = err / n_folds
    if not scores:
        raise EMGDataError(f"cutoff_cv_scores: no usable cutoff in {list(cutoffs)} at {fs} Hz")
    return scores


def select_cutoff_cv(rectified: np.ndarray, rate: float, cutoffs: Sequence[float] = CV_CUTOFFS,
                     **kwargs: float) -> float:
    """Cutoff (Hz) whose envelope best predicts held-out rectified samples (no behaviour, no truth)."""
    scores = cutoff_cv_scores(rectified, rate, cutoffs, **kwargs)  # type: ignore[arg-type]
    return min(scores, key=lambda c: scores[c])


def bayes_log_marginal(rectified: np.ndarray, rate: float, diffusions: Sequence[float] = BAYES_DIFFUSIONS,
                       jumps: Sequence[float] = BAYES_JUMPS, n_levels: int = 50, step_rate: float = 100.0,
                       max_s: float | None = 120.0) -> np.ndarray:
    """log p(rectified | diffusion, jump) of Sanger's Laplace model, (len(diffusions), len(jumps)), summed
    over channels; the scale is the filter's default, the drive constant within a step (as the filter)."""
    x = np.abs(np.asarray(rectified, dtype=np.float64))
    if x.ndim == 1:
        x = x[:, None]
    if max_s is not None:
        x = x[: int(max_s * rate)]
    x = x / default_scale(x, rate)[None, :]
    k = max(1, int(round(rate / step_rate)))
    m = x.shape[0] // k
    if m < 2:
        raise EMGDataError("bayes_log_marginal: too little EMG to tune the Bayesian filter")
    s = x[: m * k].reshape(m, k, x.shape[1]).sum(axis=1)  # (M, ch) sufficient statistic
    return bayes_log_marginal_sums(s, k, k / rate, diffusions, jumps, n_levels)


def bayes_log_marginal_sums(s: np.ndarray, k: int, dt: float, diffusions: Sequence[float] = BAYES_DIFFUSIONS,
                            jumps: Sequence[float] = BAYES_JUMPS, n_levels: int = 50) -> np.ndarray:
    """`bayes_log_marginal` from the per-step sums of the scaled rectified EMG (`s`, steps x channels; `k`
    samples of `dt` s in all per step): what a chunked pass keeps of the session's first minutes."""
    m = s.shape[0]
    if m < 2:
        raise EMGDataError("bayes_log_marginal: too little EMG to tune the Bayesian filter")
    levels = (np.arange(n_levels) + 1.0) / n_levels
    grid = [(d, j) for d in diffusions for j in jumps]
    g = len(grid)
    tmats = np.stack([transition_matrix(n_levels, d * dt, 1.0 - np.exp(-j * dt)).T for d, j in grid])  # (G,N,N)
    n_ch = s.shape[1]
    post = np.full((g, n_ch, n_levels), 1.0 / n_levels)
    total = np.zeros((g, n_ch))
    inv, logx = -1.0 / levels, np.log(levels)
    for t in range(m):
        ll = s[t][:, None] * inv[None, :] - k * logx[None, :]  # (ch, N)
        shift = ll.max(axis=1, keepdims=True)
        lik = np.exp(ll - shift)
        prior = np.matmul(post, tmats)  # (G, ch, N)
        joint = prior * lik[None]
        norm = joint.sum(axis=2)
        total += np.log(np.maximum(norm, 1e-300)) + shift[None, :, 0]
        post = joint / np.maximum(norm, 1e-300)[:, :, None]
    return total.sum(axis=1).reshape(len(diffusions), len(jumps))


def tune_bayes(rectified: np.ndarray, rate: float, diffusions: Sequence[float] = BAYES_DIFFUSIONS,
               jumps: Sequence[float] = BAYES_JUMPS, **kwargs: float) -> dict[str, float]:
    """{"diffusion", "jump"} of the Bayesian filter maximising the marginal likelihood of the session."""
    try:
        ll = bayes_log_marginal(rectified, rate, diffusions, jumps, **kwargs)  # type: ignore[arg-type]
    except EMGDataError:
        return {"diffusion": DEFAULT_DIFFUSION, "jump": DEFAULT_JUMP}
    return best_bayes(ll, diffusions, jumps)


def best_bayes(ll: np.ndarray, diffusions: Sequence[float] = BAYES_DIFFUSIONS,
               jumps: Sequence[float] = BAYES_JUMPS) -> dict[str, float]:
    """{"diffusion", "jump"} at the maximum of a `bayes_log_marginal` grid."""
    i, j = np.unravel_index(int(np.argmax(ll)), ll.shape)
    return {"diffusion": float(diffusions[i]), "jump": float(jumps[j])}


def oracle_cutoff(rectified: np.ndarray, rate: float, to_bins: object, truth: np.ndarray | None = None,
                  behavior: np.ndarray | None = None, bin_rate: float | None = None,
                  cutoffs: Sequence[float] = CV_CUTOFFS) -> tuple[float, str] | None:
    """(cutoff, "truth"|"behavior") of the low-pass whose binned envelope (`to_bins(envelope)`) best matches
    the truth (affine R^2) or else decodes the behaviour (cross-validated ridge); None without either."""
    from ..metrics import decode_r2, r2_affine

    if truth is None and behavior is None:
        return None
    best: tuple[float, float] | None = None
    for c in cutoffs:
        if not 0 < c < rate / 2:
            continue
        env = np.asarray(to_bins(lowpass_envelope(rectified, rate, c)))  # type: ignore[operator]
        if truth is not None:
            n = min(env.shape[0], truth.shape[0])
            score = float(np.nanmean(r2_affine(env[:n], truth[:n])))
        else:
            n = min(env.shape[0], behavior.shape[0])  # type: ignore[union-attr]
            score = float(np.nanmean(decode_r2(env[:n], behavior[:n], float(bin_rate))))  # type: ignore[index]
        if best is None or score > best[1]:
            best = (float(c), score)
    if best is None:
        return None
    return best[0], "truth" if truth is not None else "behavior"
