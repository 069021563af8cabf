"""EMG preprocessing for the model: notch, high-pass, rectify, bin, clip, normalise (chunkable).

The causal filters (notch, high-pass) run with `scipy.signal.sosfilt` and their state is carried
across chunk edges; the binner carries the samples left over at the end of a chunk. Clipping and
normalisation need statistics of the whole recording, so they are computed on the binned
(pre-normalisation) data once all chunks have been seen, or taken from precomputed `ChannelStats`.
Both paths (`preprocess` and `preprocess_chunks`) run the same code, so they give the same result.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.signal as sps

from .errors import EMGDataError

try:  # xarray is a dependency, but keep the numpy path importable without it
    import xarray as xr
except ImportError:  # pragma: no cover
    xr = None  # type: ignore[assignment]


@dataclass
class PreprocessConfig:
    """Every setting of the raw-EMG -> model-input pipeline (stored whole in the provenance record)."""

    notch_hz: float | None = None
    """Mains frequency to notch out (50 or 60), or None for no notch."""
    notch_q: float = 30.0
    """Quality factor of each notch (bandwidth = f / Q)."""
    notch_harmonics: int = 1
    """Number of harmonics notched (1 = the fundamental only); those at or above Nyquist are skipped."""
    highpass_hz: float | None = 20.0
    """Cutoff of the causal Butterworth high-pass that removes motion artefact, or None."""
    highpass_order: int = 4
    """Order of the high-pass filter."""
    bin_ms: float | None = None
    """Bin width in ms (`--bin-ms`), rounded to a whole number of raw samples (the actual rate is
    `Binned.bin_rate`). None: 5 ms, or the native sample interval when the input is sampled below 200 Hz."""
    input: str = "auto"
    """What the series holds (`--input`): "raw" EMG, an "envelope" (already rectified and smoothed: no notch,
    high-pass or rectification), or "auto" (decided by `decide_input` from the rate, the words and the signs)."""
    rectify: bool = True
    """Full-wave rectify after the high-pass (False for envelope input; set by `resolved_config`)."""
    antialias_hz: float | None = None
    """Optional causal Butterworth low-pass of the rectified signal before the bin mean. None: the bin
    mean (a boxcar, first zero at the bin rate) is the only anti-alias filter."""
    antialias_order: int = 4
    """Order of the optional anti-alias low-pass."""
    clip_percentile: float | None = 99.9
    """Per-channel clipping level: this percentile of the binned values (None: no clipping)."""
    normalize_percentile: float | None = 95.0
    """Per-channel divisor: this percentile of the clipped binned values (None: divide by 1)."""
    positive_floor: float = 1e-4
    """Binned, normalised values are raised to at least this (Gamma likelihood needs x > 0)."""
    dtype: str = "float32"
    """Output dtype of `Binned.data`."""


@dataclass
class ChannelStats:
    """Per-channel clipping level and normalisation scale (raw units of the rectified, binned EMG)."""

    clip: np.ndarray
    scale: np.ndarray


@dataclass
class Binned:
    """Model input: binned, clipped, normalised rectified EMG; `data * scale` is in raw units."""

    data: np.ndarray
    bin_rate: float
    starting_time: float
    muscles: list[str]
    scale: np.ndarray
    config: PreprocessConfig
    clip: np.ndarray | None = None
    bin_samples: int = 1
    raw_rate: float = 0.0
    stats_from: str = field(default="data")
    timestamps: np.ndarray | None = None
    """Start time of every bin when the input's time base is kept (timestamps, trials with gaps)."""
    segments: list[tuple[int, int]] | None = None
    """Bin ranges [start, stop) of the contiguous segments (trials), when there are gaps."""
    decision: InputDecision | None = None
    """How the input was read (raw or envelope, bin width), when decided by `decide_input`."""

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.data.shape[0])

    @property
    def bin_times(self) -> np.ndarray:
        """Start time (s) of every bin."""
        if self.timestamps is not None:
            return np.asarray(self.timestamps, dtype=np.float64)
        return self.starting_time + np.arange(self.n_bins) / self.bin_rate

    @property
    def segment_ranges(self) -> list[tuple[int, int]]:
        """Bin ranges of the contiguous segments (one range when there are no gaps)."""
        return list(self.segments) if self.segments else [(0, self.n_bins)]

    def raw_units(self, values: np.ndarray | None = None) -> np.ndarray:
        """Map normalised values (default: `data`) back to raw units of rectified EMG."""
        v = self.data if values is None else values
        return np.asarray(v, dtype=np.float64) * self.scale[None, :]


# ----------------------------------------------------------------------------- filters


def design_sos(rate: float, config: PreprocessConfig) -> np.ndarray | None:
    """Second-order sections of the causal notch + high-pass cascade (None when both are off)."""
    nyq = rate / 2.0
    sections: list[np.ndarray] = []
    if config.notch_hz:
        for h in range(1, max(1, int(config.notch_harmonics)) + 1):
            f0 = config.notch_hz * h
            if f0 >= nyq * 0.98:
                break
            b, a = sps.iirnotch(f0, config.notch_q, fs=rate)
            sections.append(sps.tf2sos(b, a))
    if config.highpass_hz:
        if not 0 < config.highpass_hz < nyq:
            raise EMGDataError(
                f"high-pass at {config.highpass_hz:g} Hz is outside (0, {nyq:g}) Hz for EMG sampled at {rate:g} Hz; "
                "if the series is already an envelope (rectified, smoothed), pass --input envelope"
            )
        sections.append(
            sps.butter(config.highpass_order, config.highpass_hz, btype="highpass", fs=rate, output="sos")
        )
    if not sections:
        return None
    return np.vstack(sections)


def _antialias_sos(rate: float, config: PreprocessConfig) -> np.ndarray | None:
    if not config.antialias_hz:
        return None
    if not 0 < config.antialias_hz < rate / 2:
        raise EMGDataError(
            f"anti-alias low-pass at {config.antialias_hz:g} Hz is outside (0, {rate / 2:g}) Hz (PreprocessConfig.antialias_hz)"
        )
    return sps.butter(config.antialias_order, config.antialias_hz, btype="lowpass", fs=rate, output="sos")


class _CausalFilter:
    """An sos cascade applied along time with its state carried from one chunk to the next."""

    def __init__(self, sos: np.ndarray | None) -> None:
        self.sos = sos
        self.zi: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.sos is None or x.shape[0] == 0:
            return x
        if self.zi is None:  # steady state for the first sample: no start-up transient from a DC offset
            self.zi = sps.sosfilt_zi(self.sos)[:, :, None] * x[0][None, None, :]
        y, self.zi = sps.sosfilt(self.sos, x, axis=0, zi=self.zi)
        return y


class _Stage1:
    """Notch + high-pass + full-wave rectification (+ optional anti-alias low-pass), chunk by chunk."""

    def __init__(self, rate: float, config: PreprocessConfig) -> None:
        self.hp = _CausalFilter(design_sos(rate, config))
        self.aa = _CausalFilter(_antialias_sos(rate, config))
        self.rectify = config.rectify

    def __call__(self, x: np.ndarray, antialias: bool = False) -> np.ndarray:
        y = self.hp(x)
        if self.rectify:
            y = np.abs(y)
        return self.aa(y) if antialias else y


class Tap(Protocol):
    """Receives the rectified EMG (raw rate, before the anti-alias low-pass) of every chunk of a pass:
    what the baselines need is gathered in the same pass as the model's bins (`baselines.streaming`)."""

    def start_segment(self) -> None: ...
    def feed(self, rectified: np.ndarray) -> None: ...
    def end_segment(self, kept: bool = True) -> None: ...


class _Binner:
    """Mean over consecutive groups of `n` samples; the remainder waits for the next chunk."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.rest: np.ndarray | None = None
        self.rest_t: np.ndarray | None = None
        self.starts: list[np.ndarray] = []

    def __call__(self, x: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        if self.rest is not None and self.rest.shape[0]:
            x = np.concatenate([self.rest, x], axis=0)
            if t is not None and self.rest_t is not None:
                t = np.concatenate([self.rest_t, t])
        n_full = (x.shape[0] // self.n) * self.n
        self.rest = x[n_full:].copy()
        self.rest_t = None if t is None else t[n_full:].copy()
        if t is not None:
            self.starts.append(t[:n_full:self.n])
        if n_full == 0:
            return np.empty((0, x.shape[1]), dtype=np.float64)
        return x[:n_full].reshape(n_full // self.n, self.n, x.shape[1]).mean(axis=1)


def bin_samples_for(rate: float, bin_ms: float | None) -> int:
    """Whole number of raw samples per bin for a bin width in ms (at least 1; None: the default rule)."""
    if bin_ms is None:
        bin_ms = default_bin_ms(rate)
    n = int(round(bin_ms * 1e-3 * rate))
    if n < 1:
        interval = 1000.0 / rate
        raise EMGDataError(f"--bin-ms {bin_ms:g}: shorter than one sample of the input ({interval:g} ms at "
                           f"{rate:g} Hz); use --bin-ms {interval:g} or a multiple of it")
    return n


# ----------------------------------------------------------------------------- what the input is

DEFAULT_BIN_MS = 5.0
#: Below this rate a series cannot be raw EMG (whose power lies at 20-500 Hz); bins default to its samples.
ENVELOPE_MAX_RATE = 1000.0 / DEFAULT_BIN_MS
ENVELOPE_WORDS = re.compile(r"rectif|envelope|preprocess|low[- ]?pass|smooth|filtered|integrated|\brms\b",
                            re.IGNORECASE)
RAW_WORDS = re.compile(r"\braw\b|unfiltered|unrectified|un-rectified", re.IGNORECASE)
INPUT_KINDS = ("auto", "raw", "envelope")


def default_bin_ms(rate: float) -> float:
    """5 ms, or the native sample interval when the input is sampled below 200 Hz (an envelope)."""
    return 1000.0 / rate if rate < ENVELOPE_MAX_RATE else DEFAULT_BIN_MS


@dataclass
class InputDecision:
    """What the preprocessing was asked and what it decided (recorded in the provenance).

    `kind` "raw" runs notch, high-pass and rectification; "envelope" skips them and bins the values
    as they are. `bin_ms` is the bin width used and `bin_rule` where it came from.
    """

    requested: str
    kind: str
    reasons: list[str]
    native_rate: float
    bin_ms: float
    bin_rule: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        return asdict(self)


def decide_input(rate: float, config: PreprocessConfig, texts: Iterable[str] = (),
                 sample: np.ndarray | None = None) -> InputDecision:
    """Raw EMG or an envelope? From `--input`, else the rate (< 200 Hz), the words of the file
    (rectified, filtered, preprocessed, envelope vs raw) and the signs of a sample of values."""
    requested = config.input
    if requested not in INPUT_KINDS:
        raise EMGDataError(f"--input {requested}: must be one of {', '.join(INPUT_KINDS)}")
    text = " ".join(t for t in texts if t)
    reasons: list[str] = []
    if requested != "auto":
        kind = requested
        reasons.append(f"--input {requested}")
    elif rate < ENVELOPE_MAX_RATE:
        kind = "envelope"
        reasons.append(f"sampled at {rate:g} Hz, below {ENVELOPE_MAX_RATE:g} Hz (too slow for raw EMG)")
    else:
        env = ENVELOPE_WORDS.search(text)
        raw = RAW_WORDS.search(text)
        negative = None
        if sample is not None and np.size(sample):
            finite = np.asarray(sample, dtype=np.float64)
            finite = finite[np.isfinite(finite)]
            if finite.size and np.any(finite != 0):
                negative = float(np.mean(finite < 0))
        if env and not raw:
            kind = "envelope"
            reasons.append(f"described as {env.group(0).lower()!r}")
        elif raw:
            kind = "raw"
            reasons.append(f"described as {raw.group(0).lower()!r}")
        elif negative is not None and negative < 0.01:
            kind = "envelope"
            reasons.append(f"non-negative values ({100 * negative:.2g} % below 0)")
        else:
            kind = "raw"
            reasons.append("signed values" if negative is not None else "no sign of an envelope")
            if negative is not None:
                reasons[-1] += f" ({100 * negative:.0f} % below 0)"
    if config.bin_ms is not None:
        bin_samples_for(rate, config.bin_ms)  # refuses a bin shorter than a sample, naming --bin-ms
        bin_ms, rule = float(config.bin_ms), "--bin-ms"
    elif rate < ENVELOPE_MAX_RATE:
        bin_ms, rule = 1000.0 / rate, f"native sample interval (input sampled below {ENVELOPE_MAX_RATE:g} Hz)"
    else:
        bin_ms, rule = DEFAULT_BIN_MS, "default"
    return InputDecision(requested=requested, kind=kind, reasons=reasons, native_rate=float(rate),
                         bin_ms=bin_ms, bin_rule=rule)


def resolved_config(config: PreprocessConfig, decision: InputDecision) -> PreprocessConfig:
    """The configuration the decision implies: envelope input gets no notch, high-pass or rectification."""
    if decision.kind == "envelope":
        return replace(config, notch_hz=None, highpass_hz=None, rectify=False, antialias_hz=None,
                       bin_ms=decision.bin_ms)
    return replace(config, bin_ms=decision.bin_ms)


# ----------------------------------------------------------------------------- inputs


def _as_array(
    emg: object, rate: float | None, starting_time: float | None, muscles: Sequence[str] | None
) -> tuple[np.ndarray, float, float, list[str]]:
    """Return (data (time, muscle) float64, rate, starting_time, muscles) from a DataArray or ndarray."""
    if xr is not None and isinstance(emg, xr.DataArray):
        da = emg
        if "time" in da.dims and da.dims[0] != "time":
            da = da.transpose("time", ...)
        data = np.asarray(da.values, dtype=np.float64)
        if "time" in da.coords and da.sizes.get("time", 0) > 0:
            t = np.asarray(da.coords["time"].values, dtype=np.float64)
            if starting_time is None:
                starting_time = float(t[0])
            if rate is None and t.size > 1:
                rate = float(1.0 / np.median(np.diff(t)))
        if rate is None:
            rate = da.attrs.get("rate")
        if muscles is None:
            dim = da.dims[1] if da.ndim > 1 else None
            if dim is not None and dim in da.coords:
                muscles = [str(m) for m in da.coords[dim].values]
    else:
        data = np.asarray(emg, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise EMGDataError(f"EMG array: expected (time, muscle), got shape {data.shape}")
    if rate is None or not np.isfinite(rate) or rate <= 0:
        raise EMGDataError(f"EMG array: sampling rate is missing or invalid ({rate!r})")
    if muscles is None:
        muscles = [f"ch{i}" for i in range(data.shape[1])]
    muscles = [str(m) for m in muscles]
    if len(muscles) != data.shape[1]:
        raise EMGDataError(f"EMG array: {len(muscles)} muscle names for {data.shape[1]} channels")
    if not np.all(np.isfinite(data)):
        bad = int(np.argmax(~np.all(np.isfinite(data), axis=1)))
        raise EMGDataError(f"EMG array: non-finite values (first at sample {bad}); fill or cut the gap first "
                           "(from a file: --on-nonfinite mask)")
    return data, float(rate), float(starting_time or 0.0), muscles


# ----------------------------------------------------------------------------- public API


def rectify_highpass(emg: object, rate: float | None, config: PreprocessConfig | None = None) -> np.ndarray:
    """High-passed (and notched), full-wave rectified EMG at the raw rate: the baselines' first stage."""
    config = config or PreprocessConfig()
    data, rate, _, _ = _as_array(emg, rate, None, None)
    return _Stage1(rate, config)(data)


def compute_stats(binned_raw: np.ndarray | Sequence[np.ndarray], config: PreprocessConfig,
                  muscles: Sequence[str] | None = None) -> ChannelStats:
    """Per-channel clip level and scale of binned rectified EMG (raw units), as `preprocess` computes them.

    `binned_raw` may also be a list of consecutive pieces (bins, channels): each channel is gathered on its
    own, so memory holds one channel's copy, not a second copy of the whole series.
    """
    pieces = [np.asarray(binned_raw, dtype=np.float64)] if isinstance(binned_raw, np.ndarray) else list(binned_raw)
    n_ch = pieces[0].shape[1] if pieces else 0
    if not pieces or sum(p.shape[0] for p in pieces) == 0:
        raise EMGDataError("EMG array: recording is shorter than one bin")
    clip, scale = np.full(n_ch, np.inf), np.ones(n_ch)
    for c in range(n_ch):
        col = np.concatenate([np.asarray(p[:, c], dtype=np.float64) for p in pieces])
        if config.clip_percentile is not None:
            clip[c] = np.percentile(col, config.clip_percentile)
        if config.normalize_percentile is not None:
            # the clipped copy is only sorted here, so the percentile may reorder it in place
            scale[c] = np.percentile(np.minimum(col, clip[c]), config.normalize_percentile, overwrite_input=True)
    bad = ~(np.isfinite(scale) & (scale > 0))
    if np.any(bad):
        names = list(muscles) if muscles is not None else [f"ch{i}" for i in range(n_ch)]
        flat = [names[i] for i in np.flatnonzero(bad)]
        raise EMGDataError(
            f"EMG channels {flat}: flat signal (the {config.normalize_percentile}th percentile of the "
            f"rectified, binned EMG is 0); leave them out with --drop-dead, or choose the series with --emg"
        )
    return ChannelStats(clip=clip, scale=scale)


def _finish(
    pieces: list[np.ndarray],
    rate: float,
    n_bin: int,
    starting_time: float,
    muscles: list[str],
    config: PreprocessConfig,
    stats: ChannelStats | None,
) -> Binned:
    """Clip, scale and floor consecutive pieces of raw bins (float64) into one array of `config.dtype`; the
    pieces are consumed (emptied) as they are copied, so memory holds them plus the output, never a float64 copy
    of the whole series."""
    stats_from = "given" if stats is not None else "data"
    if stats is None:
        stats = compute_stats(pieces, config, muscles)
    n_ch = pieces[0].shape[1]
    clip = np.asarray(stats.clip, dtype=np.float64)
    scale = np.asarray(stats.scale, dtype=np.float64)
    if clip.shape != (n_ch,) or scale.shape != (n_ch,):
        raise EMGDataError(
            f"ChannelStats: shapes {clip.shape}/{scale.shape} do not match {n_ch} channels"
        )
    out = np.empty((sum(p.shape[0] for p in pieces), n_ch), dtype=config.dtype)
    row = 0
    pieces.reverse()
    while pieces:
        x = np.asarray(pieces.pop(), dtype=np.float64)
        m = x.shape[0]
        x = np.minimum(x, clip[None, :]) / scale[None, :]
        out[row: row + m] = np.maximum(x, config.positive_floor)
        row += m
    return Binned(
        data=out,
        bin_rate=rate / n_bin,
        starting_time=starting_time,
        muscles=list(muscles),
        scale=scale,
        config=config,
        clip=clip,
        bin_samples=n_bin,
        raw_rate=rate,
        stats_from=stats_from,
    )


def _checked(config: PreprocessConfig | None) -> PreprocessConfig:
    """The given configuration (or the default), refused when its positive floor is not > 0."""
    config = config or PreprocessConfig()
    if config.positive_floor <= 0:
        raise EMGDataError(f"PreprocessConfig.positive_floor: must be > 0, got {config.positive_floor}")
    return config


def preprocess(
    emg: object,
    rate: float | None = None,
    config: PreprocessConfig | None = None,
    starting_time: float | None = None,
    muscles: Sequence[str] | None = None,
    stats: ChannelStats | None = None,
) -> Binned:
    """Raw EMG (time, muscle) ndarray or DataArray -> `Binned` model input (strictly positive float32).

    A trailing partial bin is dropped. `stats` (clip levels and scales) may be given to reuse those of
    another recording; by default they come from this one.
    """
    config = _checked(config)
    data, rate, t0, names = _as_array(emg, rate, starting_time, muscles)
    config = _with_bins(config, rate)
    n_bin = bin_samples_for(rate, config.bin_ms)
    stage1 = _Stage1(rate, config)
    binned = _Binner(n_bin)(stage1(data, antialias=True))
    if binned.shape[0] == 0:
        raise EMGDataError(f"EMG array: {data.shape[0]} samples is shorter than one bin ({n_bin} samples)")
    return _finish([binned], rate, n_bin, t0, names, config, stats)


def _bin_chunks(
    chunks: Iterable[object],
    rate: float | None,
    config: PreprocessConfig,
    starting_time: float | None,
    muscles: Sequence[str] | None,
    tap: Tap | None = None,
    pieces: list[np.ndarray] | BinSpill | None = None,
    probe: BinSpill | None = None,
) -> tuple[list[np.ndarray] | BinSpill, np.ndarray | None, float, int, float, list[str]] | None:
    """Stage 1 and binning of consecutive chunks: (bins as consecutive pieces, bin start times or None, rate,
    samples per bin, start time, muscles), or None when the chunks hold no data.

    `pieces` receives the bins (default: a new list; a `BinSpill` keeps them on disk); `probe`, when given, gets
    the same filtered signal binned at its own width (`probe.n`) in the same pass."""
    stage1: _Stage1 | None = None
    binner: _Binner | None = None
    probe_binner = _Binner(probe.n) if probe is not None else None
    pieces = [] if pieces is None else pieces
    n_rows = 0
    names: list[str] | None = None
    t0 = starting_time
    n_bin = 0
    expected_t: float | None = None
    pending: object | None = None
    timed = True
    i = -1
    for chunk in chunks:
        if stage1 is None and rate is None and xr is not None and isinstance(chunk, xr.DataArray):
            # the rate comes from the time coordinate: hold chunks too short to show it
            if pending is not None:
                chunk = xr.concat([pending, chunk], dim="time")  # type: ignore[list-item]
            if chunk.sizes.get("time", 0) < 2 and "rate" not in chunk.attrs:
                pending = chunk
                continue
            pending = None
        i += 1
        data, r, t_start, nm = _as_array(chunk, rate, None if i else starting_time, muscles)
        if stage1 is None:
            rate, names = r, nm
            n_bin = bin_samples_for(r, config.bin_ms)
            if t0 is None:
                t0 = t_start
            stage1, binner = _Stage1(rate, config), _Binner(n_bin)
        else:
            if data.shape[1] != len(names or []):
                raise EMGDataError(f"EMG chunk {i}: {data.shape[1]} channels, expected {len(names or [])}")
            if xr is not None and isinstance(chunk, xr.DataArray) and "time" in chunk.coords \
                    and expected_t is not None and data.shape[0]:
                gap = float(chunk.coords["time"].values[0]) - expected_t
                if abs(gap) > 0.5 / rate:
                    raise EMGDataError(f"EMG chunk {i}: starts {gap:+.6f} s off the end of the previous chunk")
        t = None
        if xr is not None and isinstance(chunk, xr.DataArray) and "time" in chunk.coords and data.shape[0]:
            t = np.asarray(chunk.coords["time"].values, dtype=np.float64)
            expected_t = float(t[-1]) + 1.0 / rate
        timed = timed and t is not None
        assert binner is not None
        rectified = stage1(data)
        if tap is not None:
            tap.feed(rectified)
        filtered = stage1.aa(rectified)
        out = binner(filtered, t if timed else None)
        if out.shape[0]:
            pieces.append(out)
            n_rows += out.shape[0]
        if probe is not None and probe_binner is not None:
            fine = probe_binner(filtered)
            if fine.shape[0]:
                probe.append(fine)
    if pending is not None and stage1 is None:
        _as_array(pending, rate, starting_time, muscles)  # refuses the missing rate
    if stage1 is None or not n_rows or binner is None:
        return None
    starts = np.concatenate(binner.starts) if timed and binner.starts else None
    return pieces, starts, float(rate), n_bin, float(t0 or 0.0), list(names or [])


def _with_bins(config: PreprocessConfig, rate: float | None) -> PreprocessConfig:
    """The configuration with its bin width filled in (None -> the default rule for this rate)."""
    if config.bin_ms is None and rate:
        return replace(config, bin_ms=default_bin_ms(float(rate)))
    return config


def preprocess_chunks(
    chunks: Iterable[object],
    rate: float | None = None,
    config: PreprocessConfig | None = None,
    starting_time: float | None = None,
    muscles: Sequence[str] | None = None,
    stats: ChannelStats | None = None,
    tap: Tap | None = None,
    probe: BinSpill | None = None,
) -> Binned:
    """Same as `preprocess` on the concatenation of consecutive chunks, holding only the bins in memory
    (`tap` also gets each chunk's rectified EMG, `probe` the same signal binned at its own width)."""
    config = _with_bins(_checked(config), rate)
    if tap is not None:
        tap.start_segment()
    got = _bin_chunks(chunks, rate, config, starting_time, muscles, tap, probe=probe)
    if tap is not None:
        tap.end_segment(got is not None)
    if got is None:
        raise EMGDataError("EMG chunks: no data, or less than one bin in all")
    binned, _, r, n_bin, t0, names = got
    assert isinstance(binned, list)
    return _finish(binned, r, n_bin, t0, names, _with_bins(config, r), stats)


def _binned_segments(segments: Sequence[Iterable[object]], rate: float, config: PreprocessConfig,
                     starting_times: Sequence[float] | None, muscles: Sequence[str] | None, tap: Tap | None,
                     **where: Any) -> Iterator[Any]:
    """`_bin_chunks` of each contiguous segment in turn (None: shorter than one bin), the baselines' `tap` told
    where each segment starts and ends; `where` says where the bins go (`pieces=`, `probe=`)."""
    for k, chunks in enumerate(segments):
        t_k = None if starting_times is None else float(starting_times[k])
        if tap is not None:
            tap.start_segment()
        got = _bin_chunks(chunks, rate, config, t_k, muscles, tap, **where)
        if tap is not None:
            tap.end_segment(got is not None)
        yield got


def preprocess_segments(
    segments: Sequence[Iterable[object]],
    rate: float,
    config: PreprocessConfig | None = None,
    starting_times: Sequence[float] | None = None,
    muscles: Sequence[str] | None = None,
    stats: ChannelStats | None = None,
    tap: Tap | None = None,
    probe: BinSpill | None = None,
) -> Binned:
    """Preprocess contiguous segments (trials separated by gaps) each on its own (filters restart,
    bins never straddle a gap) with one clip level and scale for all; `Binned.segments` gives each
    segment's bin range and `Binned.timestamps` every bin's start time. Segments shorter than one bin are left out."""
    config = _with_bins(_checked(config), rate)
    pieces: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    ranges: list[tuple[int, int]] = []
    names: list[str] | None = None
    n_bin = bin_samples_for(rate, config.bin_ms)
    offset = 0
    for got in _binned_segments(segments, rate, config, starting_times, muscles, tap, probe=probe):
        if got is None:
            continue
        binned, starts, _, n_bin, t0, names = got
        assert isinstance(binned, list)
        n_rows = sum(p.shape[0] for p in binned)
        if starts is None:
            starts = t0 + np.arange(n_rows) * n_bin / rate
        pieces.append(binned)
        stamps.append(starts)
        ranges.append((offset, offset + n_rows))
        offset += n_rows
    if not pieces:
        raise EMGDataError(f"EMG: every segment is shorter than one bin ({n_bin} samples); use a smaller --bin-ms")
    out = _finish([p for piece in pieces for p in piece], rate, n_bin, float(stamps[0][0]), list(names or []),
                  config, stats)
    out.timestamps = np.concatenate(stamps)
    out.segments = ranges
    return out


@dataclass
class SpilledSegment:
    """Where one contiguous segment's bins lie in a `BinSpill`: first row, rows, start time, bin starts (or None)."""

    row: int
    rows: int
    t0: float
    starts: np.ndarray | None


class BinSpill:
    """Bins of one pass (`n` raw samples each, before clipping and scaling, float64) kept in an unlinked temporary
    file, with each segment's rows: the time-scale probe's fine bins, which a long recording cannot keep in memory
    (1 h x 32 ch at 2 ms: 0.46 GB). After the pass, `rebinned` makes the model's input at any multiple of `n`
    and `stats`/`rows` give the probe, so the raw series is read once (`spill_segments`)."""

    def __init__(self, n: int, n_ch: int, directory: str | Path | None = None) -> None:
        import tempfile

        folder = directory if directory is not None and Path(directory).is_dir() else None
        self.n, self.n_ch = int(n), int(n_ch)
        self.file = tempfile.TemporaryFile(prefix=".probe-bins-", dir=folder)  # unlinked: nothing is left behind
        self.n_rows = 0
        self.segments: list[SpilledSegment] = []

    def append(self, bins: np.ndarray) -> None:
        """Consecutive rows of bins (rows, channels)."""
        if bins.shape[1] != self.n_ch:
            raise EMGDataError(f"probe bins: {bins.shape[1]} channels, expected {self.n_ch}")
        self.file.seek(0, os.SEEK_END)
        np.ascontiguousarray(bins, dtype=np.float64).tofile(self.file)
        self.n_rows += int(bins.shape[0])

    def rows(self, a: int = 0, b: int | None = None) -> np.ndarray:
        """Rows [a, b) of all segments' bins, in order (float64)."""
        b = self.n_rows if b is None else min(int(b), self.n_rows)
        a = min(int(a), b)
        self.file.flush()
        self.file.seek(a * self.n_ch * 8)
        return np.fromfile(self.file, dtype=np.float64, count=(b - a) * self.n_ch).reshape(b - a, self.n_ch)

    def stats(self, config: PreprocessConfig, muscles: Sequence[str] | None = None) -> ChannelStats:
        """`compute_stats` of all the spilled bins (read a group of channels at a time, never whole)."""
        return compute_stats([_SpilledColumns(self)], config, muscles)

    def rebinned(self, n_bin: int, rate: float, config: PreprocessConfig, muscles: Sequence[str], segmented: bool,
                 keep: Sequence[int] | None = None, stats: ChannelStats | None = None) -> Binned:
        """The model's input at `n_bin` raw samples per bin (a multiple of `n`) from segments `keep` (default all):
        `n_bin / n` spilled bins averaged per bin (a trailing partial bin dropped), then clipped, scaled and
        floored as `preprocess` does (`segmented`: with timestamps and segment ranges, as `preprocess_segments`).
        Equal to binning the raw series at `n_bin` up to float64 rounding (a mean of means), ~1e-16 relative."""
        if n_bin % self.n:
            raise EMGDataError(f"bins of {n_bin} samples are not a whole number of the pass's {self.n}-sample bins")
        k = n_bin // self.n
        block = max(1, (1 << 16) // k)  # output rows per read of the spill
        pieces: list[np.ndarray] = []
        stamps: list[np.ndarray] = []
        ranges: list[tuple[int, int]] = []
        offset = 0
        for seg in self.segments if keep is None else [self.segments[i] for i in keep]:
            m = seg.rows // k
            if not m:
                continue
            for a in range(0, m, block):
                b = min(m, a + block)
                x = self.rows(seg.row + a * k, seg.row + b * k)
                pieces.append(x.reshape(b - a, k, self.n_ch).mean(axis=1))
            stamps.append(seg.starts[::k][:m] if seg.starts is not None else seg.t0 + np.arange(m) * n_bin / rate)
            ranges.append((offset, offset + m))
            offset += m
        if not pieces:
            raise EMGDataError(f"EMG: every segment is shorter than one bin ({n_bin} samples); use a smaller --bin-ms")
        start = float(stamps[0][0]) if segmented else self.segments[0].t0
        out = _finish(pieces, rate, n_bin, start, list(muscles), config, stats)
        if segmented:
            out.timestamps = np.concatenate(stamps)
            out.segments = ranges
        return out

    def close(self) -> None:
        """Drop the file (unlinked when made: closing frees its space)."""
        if not self.file.closed:
            self.file.close()


class _SpilledColumns:
    """A `BinSpill`'s bins as one (rows, channels) piece for `compute_stats`, which gathers a channel at a time:
    the columns are read from the file a group at a time (at most `max_bytes` in memory)."""

    def __init__(self, spill: BinSpill, max_bytes: int = 1 << 26, block_rows: int = 1 << 16) -> None:
        self.spill = spill
        self.shape = (spill.n_rows, spill.n_ch)
        self.group = max(1, min(spill.n_ch, max_bytes // max(1, 8 * spill.n_rows)))
        self.block_rows = block_rows
        self.first = -1
        self.columns = np.zeros((0, 0))

    def __getitem__(self, key: tuple[slice, int]) -> np.ndarray:
        rows, c = key
        if rows != slice(None) or not isinstance(c, (int, np.integer)):
            raise TypeError("only whole columns are read from a bin spill")
        if not self.first <= c < self.first + self.columns.shape[1]:
            self.first = int(c) - int(c) % self.group
            last = min(self.spill.n_ch, self.first + self.group)
            self.columns = np.empty((self.spill.n_rows, last - self.first))
            for a in range(0, self.spill.n_rows, self.block_rows):
                self.columns[a: a + self.block_rows] = self.spill.rows(a, a + self.block_rows)[:, self.first:last]
        return self.columns[:, int(c) - self.first]


def spill_segments(segments: Sequence[Iterable[object]], rate: float, config: PreprocessConfig, spill: BinSpill,
                   starting_times: Sequence[float] | None = None, muscles: Sequence[str] | None = None,
                   tap: Tap | None = None) -> list[str]:
    """The pass of `preprocess_segments` with its bins (`spill.n` samples, unclipped) going to `spill`, each
    segment's rows, start and length recorded; `spill.rebinned` then makes the model's input at any multiple of
    that width. Segments shorter than one bin are left out (as there). Returns the muscles."""
    config = _with_bins(_checked(config), rate)
    if bin_samples_for(rate, config.bin_ms) != spill.n:
        raise EMGDataError(f"probe bins: {config.bin_ms} ms is not {spill.n} samples at {rate:g} Hz")
    names: list[str] = []
    row = spill.n_rows
    for got in _binned_segments(segments, rate, config, starting_times, muscles, tap, pieces=spill):
        if got is not None:
            _, starts, _, _, t0, names = got
            spill.segments.append(SpilledSegment(row, spill.n_rows - row, t0, starts))
        row = spill.n_rows  # read before the generator bins the next segment
    if not spill.segments:
        raise EMGDataError(f"EMG: every segment is shorter than one bin ({spill.n} samples); use a smaller --bin-ms")
    return list(names)


def bin_like(
    signal: np.ndarray,
    rate: float,
    bin_rate: float,
    n_bins: int | None = None,
    signal_start: float = 0.0,
    bins_start: float = 0.0,
) -> np.ndarray:
    """Put any (time, ch) signal on a bin time base: mean per bin when `rate` is a whole multiple of
    `bin_rate` and the starts align on a sample, else linear interpolation at the bin centres."""
    x = np.asarray(signal, dtype=np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    ratio = rate / bin_rate
    n_per = int(round(ratio))
    offset = (bins_start - signal_start) * rate
    if n_per >= 1 and abs(ratio - n_per) < 1e-6 and abs(offset - round(offset)) < 1e-3 and round(offset) >= 0:
        x = x[int(round(offset)):]
        nb = x.shape[0] // n_per
        if n_bins is not None:
            nb = min(nb, n_bins)
        out = x[: nb * n_per].reshape(nb, n_per, x.shape[1]).mean(axis=1)
    else:
        if n_bins is None:
            n_bins = int(np.floor((signal_start + x.shape[0] / rate - bins_start) * bin_rate))
        centres = bins_start + (np.arange(n_bins) + 0.5) / bin_rate
        t = signal_start + np.arange(x.shape[0]) / rate
        out = np.column_stack([np.interp(centres, t, x[:, j]) for j in range(x.shape[1])])
    return out[:, 0] if squeeze else out


def bin_to(signal: np.ndarray, rate: float, binned: Binned, signal_start: float | None = None) -> np.ndarray:
    """Bin a (time, ch) signal (e.g. a baseline estimate or the truth) onto the bins of `binned`."""
    start = binned.starting_time if signal_start is None else signal_start
    return bin_like(signal, rate, binned.bin_rate, binned.n_bins, start, binned.starting_time)
