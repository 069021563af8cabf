"""The baselines from one chunked pass: what they need of the rectified EMG, gathered chunk by chunk.

`BaselineStreams.feed` is called by the preprocessing with every chunk of rectified EMG at the raw rate
(the same pass that bins the model's input) and keeps only decimated signals, never the raw series:
- the cutoff search's working signal (`tuning.cv_decimation`, ~500 Hz means, float64): all of a recording
  up to `cv_max_s`, else `cv_pieces` pieces spread evenly over it;
- the Bayesian filter's tuning statistics over the first `tune_max_s` (100 ms window sums for its scale,
  10 ms step sums), exactly what `tune_bayes` computes from the raw series;
- per segment, the Bayesian filter's step sums (float32, spilled to a second unlinked file: at 5 ms steps
  they are as large as the model's bins) and 100 ms window sums (its scale);
- per segment, the rectified EMG averaged over `d` raw samples (`d` divides the bin; >= `LOWPASS_MIN_RATE`,
  so d = 1 up to 2 kHz), spilled to an unlinked temporary file (float32) and low-passed at the end in
  overlapping blocks.
`BaselineStreams.estimates` then gives both baselines on the model's bins; memory follows the bins, and
between the pass and the baselines (training) only the cutoff search's signal (until `choose_cutoff`)
and the window sums stay in memory.
Up to 2 kHz all of it equals the whole-array path (`pipeline.baseline_estimates`) to float32 rounding;
faster input is low-passed at the averaged rate (the cutoff is known only at the end of the pass).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal as sps

from ..errors import EMGDataError
from .bayes import DEFAULT_DIFFUSION, DEFAULT_JUMP, bayes_filter_steps
from .tuning import CV_CUTOFFS, bayes_log_marginal_sums, best_bayes, cutoff_cv_scores_decimated, cv_decimation

#: Settings of `bayes_filter` a job may give (`JobConfig.bayes`); the others are the filter's defaults.
BAYES_KEYS = ("diffusion", "jump", "n_levels", "likelihood", "step_rate", "segment_s", "warmup_s", "refine")


class _BlockSums:
    """Sums over consecutive blocks of `k` samples along time; the remainder waits for the next chunk."""

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.rest: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.rest is not None and self.rest.shape[0]:
            x = np.concatenate([self.rest, x], axis=0)
        m = x.shape[0] // self.k
        self.rest = x[m * self.k:].copy()
        return x[: m * self.k].reshape(m, self.k, x.shape[1]).sum(axis=1)

    def leftover(self) -> tuple[np.ndarray, int]:
        """(sum, count) of the samples that did not fill a block."""
        if self.rest is None or not self.rest.shape[0]:
            return np.zeros(0), 0
        return self.rest.sum(axis=0), int(self.rest.shape[0])


def _scale_from_windows(window_sums: np.ndarray, n_win: int, total: np.ndarray, n: int,
                        percentile: float = 99.5, headroom: float = 1.2) -> np.ndarray:
    """`bayes.default_scale` from 100 ms window sums (and the whole sum when there is no full window)."""
    env = window_sums / n_win if window_sums.shape[0] else (total / max(n, 1))[None, :]
    s = headroom * np.percentile(env, percentile, axis=0)
    s[~(s > 0)] = 1.0
    return s


LOWPASS_MIN_RATE = 2000.0
"""The low-pass baseline filters the rectified EMG averaged down to no less than this rate: EMG sampled
at up to 2 kHz is filtered at its own rate (as the whole-array path does, same numbers), faster arrays
(30 kHz) at 2-4 kHz (averaging 2 kHz EMG to 1 kHz moved the envelope by ~2e-3 of its mean)."""


def lowpass_decimation(rate: float, bin_samples: int, lowpass_rate: float = LOWPASS_MIN_RATE) -> int:
    """Raw samples averaged into one sample of the low-pass's input: the largest divisor of the bin
    that keeps at least `lowpass_rate` Hz (1 when the input is slower)."""
    best = 1
    for d in range(1, int(bin_samples) + 1):
        if bin_samples % d == 0 and rate / d >= lowpass_rate:
            best = d
    return best


class _Segment:
    """What one contiguous segment keeps: Bayesian step sums and scale windows, low-pass input rows."""

    def __init__(self, n_ch: int, k_b: int, n_win: int, d: int, stat: str, spill_offset: int,
                 step_offset: int = 0) -> None:
        self.steps = _BlockSums(k_b)
        self.windows = _BlockSums(n_win)
        self.dec = _BlockSums(d)
        self.stat = stat
        self.step_offset = step_offset  # first row of this segment's step sums in the step spill file
        self.n_steps = 0
        self.window_sums: list[np.ndarray] = []
        self.total = np.zeros(n_ch)
        self.n = 0
        self.spill_offset = spill_offset  # first row of this segment in the spill file
        self.n_dec = 0

    def feed(self, x: np.ndarray, spill: Any, d: int, step_spill: Any) -> None:
        stat_in = x if self.stat == "laplace" else x * x
        steps = self.steps(stat_in).astype(np.float32)
        steps.tofile(step_spill)  # float32 step sums on disk: a long recording's are as large as its bins
        self.n_steps += steps.shape[0]
        self.window_sums.append(self.windows(x))
        self.total += x.sum(axis=0)
        self.n += x.shape[0]
        dec = self.dec(x)
        if dec.shape[0]:
            (dec / d).astype(np.float32).tofile(spill)
            self.n_dec += dec.shape[0]


class BaselineStreams:
    """The baselines' inputs gathered in one pass (see the module's docstring); `estimates` at the end."""

    def __init__(self, rate: float, n_ch: int, bin_samples: int, total_samples: int, envelope: bool = False,
                 bayes: dict[str, Any] | None = None, spill_dir: str | Path | None = None,
                 cv_max_s: float = 600.0, cv_pieces: int = 10, tune_max_s: float = 120.0,
                 tune_step_rate: float = 100.0, lowpass_rate: float = LOWPASS_MIN_RATE) -> None:
        import tempfile

        from ..files import temp_beside

        self.rate, self.n_ch, self.bin_samples, self.envelope = float(rate), int(n_ch), int(bin_samples), envelope
        self.bayes = {k: v for k, v in (bayes or {}).items() if k != "chosen_by"}
        unknown = sorted(set(self.bayes) - set(BAYES_KEYS))
        if unknown:
            raise EMGDataError(f"Bayesian filter settings: unknown {', '.join(unknown)} (known: {', '.join(BAYES_KEYS)})")
        self.stat = str(self.bayes.get("likelihood", "laplace"))
        step_rate = self.bayes.get("step_rate", 200.0)
        self.k_b = 1 if step_rate is None else max(1, int(round(self.rate / float(step_rate))))
        self.n_win = max(1, int(round(0.1 * self.rate)))
        self.d = lowpass_decimation(self.rate, self.bin_samples, lowpass_rate)
        # cutoff search: pooled over segments, all of it up to cv_max_s, else pieces spread over the recording
        self.k_cv = cv_decimation(self.rate)
        self.cv = _BlockSums(self.k_cv)
        self.cv_kept: list[np.ndarray] = []
        self._cutoff: tuple[tuple[float, ...], float] | None = None
        self.cv_blocks = 0
        limit = int(cv_max_s * self.rate)
        if total_samples <= limit:
            self.cv_pieces: list[tuple[int, int]] | None = None
        else:
            piece = limit // cv_pieces
            firsts = (int(round(i * (total_samples - piece) / max(1, cv_pieces - 1))) for i in range(cv_pieces))
            self.cv_pieces = [(a, a + piece) for a in firsts]
        # Bayesian filter's tuning: the first tune_max_s of the pooled rectified EMG (as tune_bayes)
        self.tune_n = int(tune_max_s * self.rate)
        self.k_t = max(1, int(round(self.rate / tune_step_rate)))
        self.tune_steps = _BlockSums(self.k_t)
        self.tune_windows = _BlockSums(self.n_win)
        self.tune_step_sums: list[np.ndarray] = []
        self.tune_window_sums: list[np.ndarray] = []
        self.tune_total = np.zeros(self.n_ch)
        self.seen = 0  # pooled samples fed so far
        self.segments: list[_Segment] = []
        self._current: _Segment | None = None
        directory = Path(spill_dir) if spill_dir is not None and Path(spill_dir).is_dir() else None
        # a run directory that does not exist yet is not made here (a job refused later leaves nothing)
        fd, path = temp_beside((directory or Path(tempfile.gettempdir())) / "lowpass-input", "spill")
        os.unlink(path)  # nothing is left behind, whatever ends the run
        self.spill = os.fdopen(fd, "w+b")
        self.spill_rows = 0
        fd, path = temp_beside((directory or Path(tempfile.gettempdir())) / "bayes-steps", "spill")
        os.unlink(path)
        self.step_spill = os.fdopen(fd, "w+b")
        self.step_rows = 0

    # ----- the pass -----------------------------------------------------------------------
    def start_segment(self) -> None:
        """A new contiguous segment begins (filters and blocks restart, as the preprocessing's)."""
        self._current = _Segment(self.n_ch, self.k_b, self.n_win, self.d, self.stat, self.spill_rows, self.step_rows)

    def feed(self, rectified: np.ndarray) -> None:
        """One chunk of rectified EMG (time, channels) at the raw rate, in order."""
        x = np.asarray(rectified, dtype=np.float64)
        if self.envelope:
            x = np.maximum(x, 0.0)
        if self._current is None:
            self.start_segment()
        assert self._current is not None
        self._current.feed(x, self.spill, self.d, self.step_spill)
        self.spill_rows = self._current.spill_offset + self._current.n_dec
        self.step_rows = self._current.step_offset + self._current.n_steps
        # pooled statistics (segments concatenated, as the whole-array path pools them)
        y = self.cv(x)
        if y.shape[0]:
            first = self.cv_blocks
            self.cv_blocks += y.shape[0]
            if self.cv_pieces is None:
                self.cv_kept.append(y / self.k_cv)
            else:
                starts = (first + np.arange(y.shape[0])) * self.k_cv
                keep = np.zeros(y.shape[0], dtype=bool)
                for a, b in self.cv_pieces:
                    keep |= (starts >= a) & (starts + self.k_cv <= b)
                if keep.any():
                    self.cv_kept.append(y[keep] / self.k_cv)
        if self.seen < self.tune_n:
            head = x[: self.tune_n - self.seen]
            self.tune_step_sums.append(self.tune_steps(head))
            self.tune_window_sums.append(self.tune_windows(head))
            self.tune_total += head.sum(axis=0)
        self.seen += x.shape[0]

    def end_segment(self, kept: bool = True) -> None:
        """The segment ended; `kept` False when the preprocessing left it out (shorter than a bin)."""
        if self._current is not None and kept:
            self.segments.append(self._current)
        self._current = None

    def rebin(self, bin_samples: int, keep: Sequence[int] | None = None) -> None:
        """The model's bins as chosen after the pass (the auto preset's time scales; the pass was given a width
        they are all multiples of): `bin_samples` (a multiple of `d`), and the segments `keep` (indices into
        those fed; the others were shorter than the chosen bin)."""
        if bin_samples % self.d:
            raise EMGDataError(f"baselines: bins of {bin_samples} samples are not a multiple of the low-pass "
                               f"input's {self.d}-sample averages")
        self.bin_samples = int(bin_samples)
        if keep is not None:
            self.segments = [self.segments[i] for i in keep]

    # ----- the estimates ------------------------------------------------------------------
    def choose_cutoff(self, cutoffs: Sequence[float] = CV_CUTOFFS) -> float:
        """`tuning.select_cutoff_cv` on the kept working signal, which is then dropped (up to 10 min x channels at
        ~500 Hz in float64: `run` settles the choice right after the pass, before training); cached."""
        key = tuple(float(c) for c in cutoffs)
        if self._cutoff is not None and self._cutoff[0] == key:
            return self._cutoff[1]
        if self._cutoff is not None:
            raise EMGDataError("low-pass baseline: the cutoff search's signal was dropped after the first choice")
        y = np.concatenate(self.cv_kept) if self.cv_kept else np.zeros((0, self.n_ch))
        self.cv_kept = []
        scores = cutoff_cv_scores_decimated(y, self.rate / self.k_cv, cutoffs)
        self._cutoff = (key, min(scores, key=lambda c: scores[c]))
        return self._cutoff[1]

    def tune_bayes(self) -> dict[str, float]:
        """`tuning.tune_bayes` from the first minutes' statistics."""
        n = min(self.seen, self.tune_n)
        windows = np.concatenate(self.tune_window_sums) if self.tune_window_sums else np.zeros((0, self.n_ch))
        steps = np.concatenate(self.tune_step_sums) if self.tune_step_sums else np.zeros((0, self.n_ch))
        if steps.shape[0] < 2:
            return {"diffusion": DEFAULT_DIFFUSION, "jump": DEFAULT_JUMP}
        scale = _scale_from_windows(windows, self.n_win, self.tune_total, n)
        ll = bayes_log_marginal_sums(steps / scale[None, :], self.k_t, self.k_t / self.rate)
        return best_bayes(ll)

    def bayes_bins(self, k: int, out: np.ndarray, params: dict[str, Any], out_scale: np.ndarray) -> None:
        """The Bayesian filter's MAP of segment k on its bins, divided by `scale`, into `out` (bins, ch).

        The filter asks the spill file for each batch's step sums and hands each batch's estimate straight to
        the bins: neither the segment's step sums nor its estimate are held whole."""
        seg = self.segments[k]
        rest, count = seg.steps.leftover()
        n_rows = seg.n_steps + (1 if count else 0)
        kk = np.full(n_rows, float(self.k_b))
        if count:
            kk[-1] = float(count)
        windows = np.concatenate(seg.window_sums)
        scale = _scale_from_windows(windows, self.n_win, seg.total, seg.n)
        squared = self.stat != "laplace"
        divisor = (scale * scale if squared else scale).astype(np.float32)
        self.step_spill.flush()
        steps = _SpilledSteps(self.step_spill, seg.step_offset, seg.n_steps, self.n_ch,
                              rest.astype(np.float32) if count else None, divisor)
        opts = {key: params[key] for key in ("n_levels", "diffusion", "jump", "likelihood", "segment_s", "warmup_s",
                                             "refine") if key in params}
        to_bins = _StepBins(scale, kk.astype(np.int64), self.bin_samples, out, out_scale)
        bayes_filter_steps(steps, kk, self.k_b / self.rate, emit=to_bins.feed, **opts)
        to_bins.finish()

    def lowpass_bins(self, k: int, out: np.ndarray, cutoff_hz: float, scale: np.ndarray, order: int = 4,
                     block_s: float = 30.0) -> None:
        """Zero-phase Butterworth envelope of segment k at the decimated rate, on its bins, divided by `scale`,
        into `out` (bins, ch); filtered in blocks with `10 / cutoff` s of signal either side (the filter's
        transients have decayed to ~1e-10 there, so the blocks join as one filtering of the whole segment)."""
        seg = self.segments[k]
        n_bins = out.shape[0]
        fs = self.rate / self.d
        if not 0 < cutoff_hz < fs / 2:
            raise EMGDataError(f"lowpass_envelope: cutoff {cutoff_hz} Hz is outside (0, {fs / 2}) Hz")
        sos = sps.butter(order, cutoff_hz, btype="lowpass", fs=fs, output="sos")
        q = self.bin_samples // self.d
        if seg.n_dec < n_bins * q:  # cannot happen: the bins cover whole blocks of d samples
            raise EMGDataError("low-pass baseline: fewer decimated samples than bins")
        pad = int(np.ceil(10.0 / cutoff_hz * fs))
        step = max(q, int(max(block_s * fs, 2 * pad)) // q * q)
        for a in range(0, n_bins * q, step):
            b = min(a + step, n_bins * q)
            lo, hi = max(0, a - pad), min(seg.n_dec, b + pad)
            rows = self._spilled(seg.spill_offset + lo, hi - lo)
            env = sps.sosfiltfilt(sos, rows, axis=0)[a - lo: b - lo]
            out[a // q: b // q] = env.reshape((b - a) // q, q, self.n_ch).mean(axis=1) / scale[None, :]

    def _spilled(self, row: int, count: int) -> np.ndarray:
        self.spill.flush()
        self.spill.seek(row * self.n_ch * 4)
        return np.fromfile(self.spill, dtype=np.float32, count=count * self.n_ch).reshape(count, self.n_ch).astype(
            np.float64)

    def close(self) -> None:
        """Drop the spill files (they were unlinked when made: closing frees their space)."""
        for f in (self.spill, self.step_spill):
            if not f.closed:
                f.close()


class _SpilledSteps:
    """A segment's Bayesian step sums as a row source for `bayes_filter_steps`: each request reads only the
    rows it spans from the spill file (plus the segment's last, partial step) and divides them by the scale."""

    def __init__(self, spill: Any, offset: int, n_spilled: int, n_ch: int, last: np.ndarray | None,
                 divisor: np.ndarray) -> None:
        self.spill, self.offset, self.n_spilled, self.n_ch = spill, offset, n_spilled, n_ch
        self.last, self.divisor = last, divisor
        self.shape = (n_spilled + (0 if last is None else 1), n_ch)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = np.empty((hi - lo, self.n_ch), dtype=np.float32)
        spilled = max(0, min(hi, self.n_spilled) - lo)
        self.spill.seek((self.offset + lo) * self.n_ch * 4)
        block[:spilled] = np.fromfile(self.spill, dtype=np.float32, count=spilled * self.n_ch).reshape(
            spilled, self.n_ch)
        if hi > self.n_spilled:  # the partial step after the spilled ones
            block[-1] = self.last  # type: ignore[assignment]
        block /= self.divisor[None, :]
        return block[rows - lo]


class _StepBins:
    """Steps arriving in order (`feed`), each held over its samples (x `sc`) and averaged per bin (as
    `bin_like` of the raw-rate output) and divided by `out_scale`, into `out`: the bins a batch completes are
    written at once; the steps of a bin it leaves open wait for the next batch."""

    def __init__(self, sc: np.ndarray, kk: np.ndarray, n_bin: int, out: np.ndarray, out_scale: np.ndarray) -> None:
        self.sc, self.kk, self.n_bin, self.out, self.out_scale = sc, kk, n_bin, out, out_scale
        self.starts = np.concatenate([[0], np.cumsum(kk)])  # each step's first sample
        self.pending = np.zeros((0, out.shape[1]), dtype=np.float32)
        self.first = 0  # step index of pending[0]
        self.done = 0  # bins written

    def feed(self, first_row: int, steps: np.ndarray) -> None:
        """Take steps [first_row, first_row + len(steps)); write every bin they complete."""
        if first_row != self.first + self.pending.shape[0]:
            raise EMGDataError(f"Bayesian filter: steps from {first_row} arrived, {self.first + len(self.pending)} expected")
        est = np.concatenate([self.pending, steps]) if self.pending.shape[0] else steps
        end_step = self.first + est.shape[0]
        n_bins = self.out.shape[0]
        ready = n_bins if end_step == len(self.kk) else min(n_bins, int(self.starts[end_step]) // self.n_bin)
        if ready > self.done:
            _steps_to_bins(est, self.sc, self.kk, self.starts, self.first, self.n_bin, self.out, self.out_scale,
                           self.done, ready)
            self.done = ready
        keep = int(np.searchsorted(self.starts, self.done * self.n_bin, side="right")) - 1  # step of the next bin
        keep = min(max(keep, self.first), end_step)
        self.pending = est[keep - self.first:].copy()
        self.first = keep

    def finish(self) -> None:
        """Check that every bin was written (the steps covered the segment)."""
        if self.done != self.out.shape[0]:
            raise EMGDataError(f"Bayesian filter: {self.done} of {self.out.shape[0]} bins written")


def _steps_to_bins(est: np.ndarray, sc: np.ndarray, kk: np.ndarray, starts: np.ndarray, first_step: int, n_bin: int,
                   out: np.ndarray, out_scale: np.ndarray, b_start: int, b_stop: int,
                   block_samples: int = 1 << 16) -> None:
    """Bins [b_start, b_stop) of steps held over their samples (`est` row 0 is step `first_step`; `starts`
    their first samples), block by block."""
    block = max(1, block_samples // n_bin)
    for b0 in range(b_start, b_stop, block):
        b1 = min(b_stop, b0 + block)
        r0, r1 = b0 * n_bin, b1 * n_bin
        i0 = int(np.searchsorted(starts, r0, side="right")) - 1
        i1 = int(np.searchsorted(starts, r1, side="left"))
        rows = est[i0 - first_step: i1 - first_step]
        raw = np.repeat(rows * sc[None, :], kk[i0:i1], axis=0)[r0 - starts[i0]: r1 - starts[i0]]
        out[b0:b1] = raw.reshape(b1 - b0, n_bin, est.shape[1]).mean(axis=1) / out_scale[None, :]
