"""Sanger's Bayesian filter of rectified EMG (J. Neurophysiol. 97:1839, 2007), vectorised.

Model per channel: a latent drive x in (0, 1] (after scaling) follows a diffusion with rare jumps to
any level; each rectified sample e is drawn from a Laplace (exponential: p(e|x) = exp(-e/x)/x) or
half-Gaussian (p(e|x) ~ exp(-e^2/(2x^2))/x) density of scale x. The posterior over N levels is
predicted through the transition matrix and updated with the likelihood; the output is its mode
(MAP), refined by parabolic interpolation of the log posterior.

Speed: the filter steps at `step_rate` (default 200 Hz). The k raw samples of a step enter through
their sufficient statistic (sum e for Laplace, sum e^2 for Gaussian) with the exact joint likelihood,
so this equals the per-sample filter under the approximation that x is constant within a step.
Long recordings are cut into segments that are filtered side by side as one batch (so the Python
loop over time runs only over one segment); each segment first runs over `warmup_s` of the data
before it, which makes the result match a single sequential pass once the prior is forgotten.

Defaults (picked on simulated locomotion and isometric sessions by R^2 against the true activation):
50 levels (100 gave the same R^2 to 0.001 at twice the cost), diffusion 0.1 /s, jumps 1 /s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np

from ..errors import EMGDataError

try:  # optional: the per-step products are small; BLAS threads would only contend
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
    _threadpool_limits = None

DEFAULT_DIFFUSION = 0.1
"""Variance rate of the drive's random walk, (normalised units)^2 per second."""
DEFAULT_JUMP = 1.0
"""Rate of jumps to a uniformly drawn level, per second."""


def default_scale(rectified: np.ndarray, rate: float, window_s: float = 0.1, percentile: float = 99.5,
                  headroom: float = 1.2) -> np.ndarray:
    """Per-channel scale mapping the drive into (0, 1]: `headroom` x a high percentile of 100 ms means."""
    x = np.asarray(rectified, dtype=np.float64)
    n = max(1, int(round(window_s * rate)))
    m = x.shape[0] // n
    if m < 1:
        env = x.mean(axis=0, keepdims=True)
    else:
        env = x[: m * n].reshape(m, n, x.shape[1]).mean(axis=1)
    s = headroom * np.percentile(env, percentile, axis=0)
    s[~(s > 0)] = 1.0
    return s


def transition_matrix(n_levels: int, variance: float, jump_prob: float) -> np.ndarray:
    """Column-stochastic (N, N) matrix: diffusion of the given variance (reflecting edges) plus jumps."""
    dx = 1.0 / n_levels
    idx = np.arange(n_levels)
    if variance <= 0:
        g = np.eye(n_levels)
    elif variance < dx * dx:  # the three-point kernel [a, 1 - 2a, a] of the notes, a <= 1/2
        a = variance / (2 * dx * dx)
        g = np.eye(n_levels) * (1 - 2 * a)
        g[idx[1:], idx[:-1]] = a
        g[idx[:-1], idx[1:]] = a
        g[0, 0] += a  # reflecting edges keep the mass
        g[-1, -1] += a
    else:
        d = (idx[:, None] - idx[None, :]) * dx
        g = np.exp(-0.5 * d * d / variance)
        g[g < 1e-25] = 0.0  # no denormals in float32
        g /= g.sum(axis=0, keepdims=True)
    return (1 - jump_prob) * g + jump_prob / n_levels


def bayes_filter(
    rectified: np.ndarray,
    rate: float,
    n_levels: int = 50,
    diffusion: float = DEFAULT_DIFFUSION,
    jump: float = DEFAULT_JUMP,
    likelihood: str = "laplace",
    scale: np.ndarray | float | None = None,
    step_rate: float | None = 200.0,
    segment_s: float | None = 30.0,
    warmup_s: float = 3.0,
    refine: bool = True,
    output: str = "raw",
) -> np.ndarray:
    """MAP estimate of the drive of rectified EMG (time, ch), in the input's units.

    `diffusion` (units^2/s, after scaling to (0, 1]) and `jump` (1/s) set the prior; `scale` maps each
    channel into (0, 1] (default `default_scale`); `step_rate` None steps at every sample; `segment_s`
    None runs one exact sequential pass. `output="raw"` holds each step's value over its samples
    (same shape as the input), `"steps"` returns one row per step.
    """
    x = np.asarray(rectified, dtype=np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise EMGDataError(f"bayes_filter: expected non-empty (time, channel) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise EMGDataError("bayes_filter: rectified EMG has non-finite values")
    if likelihood not in ("laplace", "gaussian"):
        raise EMGDataError(f"bayes_filter: likelihood must be 'laplace' or 'gaussian', got {likelihood!r}")
    if n_levels < 3:
        raise EMGDataError(f"bayes_filter: n_levels must be >= 3, got {n_levels}")
    if output not in ("raw", "steps"):
        raise EMGDataError(f"bayes_filter: output must be 'raw' or 'steps', got {output!r}")
    x = np.abs(x)
    n, n_ch = x.shape
    sc = default_scale(x, rate) if scale is None else np.broadcast_to(np.asarray(scale, float), (n_ch,)).copy()
    if np.any(~(sc > 0)):
        raise EMGDataError("bayes_filter: scale must be positive for every channel")
    x = x / sc[None, :]

    # ---- sufficient statistic per step
    k = 1 if step_rate is None else max(1, int(round(rate / step_rate)))
    n_full = n // k
    stat_in = x if likelihood == "laplace" else x * x
    s_list = [stat_in[: n_full * k].reshape(n_full, k, n_ch).sum(axis=1)] if n_full else []
    k_list = [np.full(n_full, float(k))]
    if n - n_full * k:
        s_list.append(stat_in[n_full * k:].sum(axis=0, keepdims=True))
        k_list.append(np.array([float(n - n_full * k)]))
    s = np.concatenate(s_list, axis=0)  # (M, ch)
    kk = np.concatenate(k_list)  # (M,)
    est = bayes_filter_steps(s, kk, k / rate, n_levels, diffusion, jump, likelihood, segment_s, warmup_s,
                             refine) * sc[None, :]
    if output == "raw":
        est = np.repeat(est, kk.astype(int), axis=0)
    return est[:, 0] if squeeze else est


def bayes_filter_steps(
    s: np.ndarray,
    kk: np.ndarray,
    dt: float,
    n_levels: int = 50,
    diffusion: float = DEFAULT_DIFFUSION,
    jump: float = DEFAULT_JUMP,
    likelihood: str = "laplace",
    segment_s: float | None = 30.0,
    warmup_s: float = 3.0,
    refine: bool = True,
    max_batch: int = 512,
    emit: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray | None:
    """MAP drive (M, ch; float32) in scaled units from per-step sufficient statistics `s` (M, ch; sum of |e| or e^2
    over the step's samples, scaled into (0, 1]) and sample counts `kk` (M,); steps last `dt` seconds.

    The recording's segments are filtered side by side in batches of at most `max_batch` columns
    (segments x channels), so memory follows the batch, not the recording (each column is independent).
    `s` may be any row source with `shape` and integer-array indexing (a batch asks for its rows only); with
    `emit`, each batch's steps go to `emit(first_row, steps)` in order and nothing is returned, so neither the
    statistics nor the estimate of a long recording need be in memory whole.
    """
    if not hasattr(s, "shape") or not hasattr(s, "__getitem__"):
        s = np.asarray(s)
    m_steps, n_ch = s.shape
    if segment_s is None or m_steps <= 1:
        seg_len, warm = m_steps, 0
    else:
        seg_len = max(1, int(round(segment_s / dt)))
        warm = min(max(0, int(round(warmup_s / dt))), m_steps)
        if seg_len >= m_steps:
            seg_len, warm = m_steps, 0
        warm = min(warm, m_steps - 1)  # the first segment's warm-up mirrors steps 1..warm
    n_seg = -(-m_steps // seg_len)
    per = max(1, max_batch // max(1, n_ch))  # segments per batch
    est = None if emit is not None else np.empty((m_steps, n_ch), dtype=np.float32)  # the filter's precision
    for first in range(0, n_seg, per):
        part = _filter_segments(s, kk, dt, seg_len, warm, first, min(n_seg, first + per), n_levels, diffusion,
                                jump, likelihood, refine)
        a = first * seg_len
        if est is None:
            emit(a, part[: m_steps - a].astype(np.float32, copy=False))  # type: ignore[misc]
        else:
            est[a: a + part.shape[0]] = part[: m_steps - a]
    return est


def _filter_segments(s: np.ndarray, kk: np.ndarray, dt: float, seg_len: int, warm: int, first: int, last: int,
                     n_levels: int, diffusion: float, jump: float, likelihood: str, refine: bool) -> np.ndarray:
    """Steps of segments [first, last) (each `seg_len` steps after `warm` steps of warm-up), (steps, ch)."""
    m_steps, n_ch = s.shape
    n_seg = last - first
    k = float(kk[0]) if len(kk) else 1.0
    # rows of (mirrored warm-up) + data + (end padding) needed by these segments
    rows = np.arange(seg_len + warm)[:, None] + (np.arange(first, last) * seg_len)[None, :] - warm  # (T, S)
    mirrored = rows < 0
    rows = np.where(mirrored, -rows, rows)  # the first segment's warm-up mirrors the first steps
    beyond = rows >= m_steps
    rows_c = np.minimum(rows, m_steps - 1)
    s_b = s[rows_c].astype(np.float32)
    s_b[beyond] = 0.0
    s_b = s_b.reshape(seg_len + warm, n_seg * n_ch)
    k_b = np.where(beyond, k, kk[rows_c]).astype(np.float32)
    del rows, rows_c, mirrored
    k_b = np.repeat(k_b, n_ch, axis=1)  # (T, S*ch)

    # ---- levels, prior, transition
    levels = (np.arange(n_levels) + 1.0) / n_levels
    lo, hi = levels[0], levels[-1]
    jump_prob = 1.0 - np.exp(-max(jump, 0.0) * dt)
    tmat_t = transition_matrix(n_levels, diffusion * dt, jump_prob).T.astype(np.float32).copy()
    if likelihood == "laplace":
        coef = (-1.0 / levels).astype(np.float32)
    else:
        coef = (-0.5 / levels**2).astype(np.float32)
    neg_log = (-np.log(levels)).astype(np.float32)

    b = n_seg * n_ch
    # log-likelihood rows come from one small matmul: [s, k, offset] @ [coef; -log x; 1]
    basis = np.stack([coef, neg_log, np.ones(n_levels, dtype=np.float32)])  # (3, N)
    feats = np.empty((b, 3), dtype=np.float32)
    post = np.full((b, n_levels), 1.0, dtype=np.float32)  # kept max-normalised (max = 1), not sum-normalised
    pmax_log = np.zeros(b, dtype=np.float32)
    lik = np.empty_like(post)
    prior = np.empty_like(post)
    rows = np.arange(b)
    out_idx = np.empty((seg_len + warm, b), dtype=np.int16 if n_levels < 32000 else np.int64)
    out_frac = np.zeros((seg_len + warm, b), dtype=np.float32)
    tiny = np.float32(1e-30)
    # the jumps keep every prior entry >= jump_prob / N (the posterior's max is 1) and the likelihood is
    # >= exp(-60): when their product is a normal float32 no explicit floor is needed
    need_floor = not (jump_prob / n_levels * np.exp(-60.0) > 1e-36)
    limit = _threadpool_limits(limits=1, user_api="blas") if _threadpool_limits else nullcontext()
    with limit:
        for t in range(seg_len + warm):
            st, kt = s_b[t], k_b[t]
            # mode of the likelihood over continuous x (clipped to the grid): subtracting its log value and
            # the log of the previous posterior's maximum keeps every number in range without a sum
            if likelihood == "laplace":
                xs = np.clip(st / kt, lo, hi)
                llmax = -st / xs - kt * np.log(xs)
            else:
                xs = np.clip(np.sqrt(st / kt), lo, hi)
                llmax = -0.5 * st / (xs * xs) - kt * np.log(xs)
            feats[:, 0] = st
            feats[:, 1] = kt
            feats[:, 2] = -llmax - pmax_log
            np.matmul(feats, basis, out=lik)
            np.maximum(lik, -60.0, out=lik)  # no denormals (they slow every later operation)
            np.exp(lik, out=lik)
            np.matmul(post, tmat_t, out=prior)  # predict
            np.multiply(prior, lik, out=post)  # update
            if need_floor:
                np.maximum(post, tiny, out=post)
            idx = post.argmax(axis=1)
            out_idx[t] = idx
            pm = np.maximum(post[rows, idx], tiny)
            pmax_log = np.log(pm)
            if refine:
                i0 = np.clip(idx, 1, n_levels - 2)
                lm = np.log(np.maximum(post[rows, i0 - 1], tiny))
                l0 = np.log(np.maximum(post[rows, i0], tiny))
                lp = np.log(np.maximum(post[rows, i0 + 1], tiny))
                den = lm - 2 * l0 + lp
                with np.errstate(divide="ignore", invalid="ignore"):
                    frac = np.where(den < 0, 0.5 * (lm - lp) / den, 0.0)
                out_frac[t] = np.where(idx == i0, np.clip(frac, -0.5, 0.5), 0.0)
            if t % 64 == 63:  # exact renormalisation now and then (guards against drift of the max)
                post /= pm[:, None]
                pmax_log[:] = 0.0
    est = (out_idx + 1 + out_frac) / n_levels  # (T, S*ch)
    est = est[warm:].reshape(seg_len, n_seg, n_ch).transpose(1, 0, 2).reshape(n_seg * seg_len, n_ch)
    return est
