"""EMG preprocessing for the model: notch, high-pass, rectify, bin, clip, normalise (chunkable).

The causal filters (notch, high-pass) run with `scipy.signal.sosfilt` and their state is carried
across chunk edges; the binner carries the samples left over at the end of a chunk. Clipping and
normalisation need statistics of the whole recording, so they are computed on the binned
(pre-normalisation) data once all chunks have been seen, or taken from precomputed `ChannelStats`.
Both paths (`preprocess` and `preprocess_chunks`) run the same code, so they give the same result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
    bin_ms: float = 5.0
    """Bin width in ms; rounded to a whole number of raw samples (the actual rate is `Binned.bin_rate`)."""
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

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.data.shape[0])

    @property
    def bin_times(self) -> np.ndarray:
        """Start time (s) of every bin."""
        return self.starting_time + np.arange(self.n_bins) / self.bin_rate

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
                f"PreprocessConfig.highpass_hz: {config.highpass_hz} Hz is outside (0, {nyq}) Hz "
                f"for EMG sampled at {rate} Hz"
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
            f"PreprocessConfig.antialias_hz: {config.antialias_hz} Hz is outside (0, {rate / 2}) Hz"
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

    def __call__(self, x: np.ndarray, antialias: bool = False) -> np.ndarray:
        y = np.abs(self.hp(x))
        return self.aa(y) if antialias else y


class _Binner:
    """Mean over consecutive groups of `n` samples; the remainder waits for the next chunk."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.rest: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.rest is not None and self.rest.shape[0]:
            x = np.concatenate([self.rest, x], axis=0)
        n_full = (x.shape[0] // self.n) * self.n
        self.rest = x[n_full:].copy()
        if n_full == 0:
            return np.empty((0, x.shape[1]), dtype=np.float64)
        return x[:n_full].reshape(n_full // self.n, self.n, x.shape[1]).mean(axis=1)


def bin_samples_for(rate: float, bin_ms: float) -> int:
    """Whole number of raw samples per bin for a bin width in ms (at least 1)."""
    n = int(round(bin_ms * 1e-3 * rate))
    if n < 1:
        raise EMGDataError(f"PreprocessConfig.bin_ms: {bin_ms} ms is shorter than one sample at {rate} Hz")
    return n


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
        raise EMGDataError(f"EMG array: non-finite values (first at sample {bad}); fill or cut the gap first")
    return data, float(rate), float(starting_time or 0.0), muscles


# ----------------------------------------------------------------------------- public API


def rectify_highpass(emg: object, rate: float | None, config: PreprocessConfig | None = None) -> np.ndarray:
    """High-passed (and notched), full-wave rectified EMG at the raw rate: the baselines' first stage."""
    config = config or PreprocessConfig()
    data, rate, _, _ = _as_array(emg, rate, None, None)
    return _Stage1(rate, config)(data)


def compute_stats(binned_raw: np.ndarray, config: PreprocessConfig, muscles: Sequence[str] | None = None
                  ) -> ChannelStats:
    """Per-channel clip level and scale of binned rectified EMG (raw units), as `preprocess` computes them."""
    x = np.asarray(binned_raw, dtype=np.float64)
    if x.shape[0] == 0:
        raise EMGDataError("EMG array: recording is shorter than one bin")
    if config.clip_percentile is not None:
        clip = np.percentile(x, config.clip_percentile, axis=0)
    else:
        clip = np.full(x.shape[1], np.inf)
    if config.normalize_percentile is not None:
        scale = np.percentile(np.minimum(x, clip[None, :]), config.normalize_percentile, axis=0)
    else:
        scale = np.ones(x.shape[1])
    bad = ~(np.isfinite(scale) & (scale > 0))
    if np.any(bad):
        names = list(muscles) if muscles is not None else [f"ch{i}" for i in range(x.shape[1])]
        flat = [names[i] for i in np.flatnonzero(bad)]
        raise EMGDataError(
            f"EMG channels {flat}: flat signal (the {config.normalize_percentile}th percentile of the "
            f"rectified, binned EMG is 0); drop these channels"
        )
    return ChannelStats(clip=clip, scale=scale)


def _finish(
    binned_raw: np.ndarray,
    rate: float,
    n_bin: int,
    starting_time: float,
    muscles: list[str],
    config: PreprocessConfig,
    stats: ChannelStats | None,
) -> Binned:
    stats_from = "given" if stats is not None else "data"
    if stats is None:
        stats = compute_stats(binned_raw, config, muscles)
    clip = np.asarray(stats.clip, dtype=np.float64)
    scale = np.asarray(stats.scale, dtype=np.float64)
    if clip.shape != (binned_raw.shape[1],) or scale.shape != (binned_raw.shape[1],):
        raise EMGDataError(
            f"ChannelStats: shapes {clip.shape}/{scale.shape} do not match {binned_raw.shape[1]} channels"
        )
    x = np.minimum(binned_raw, clip[None, :]) / scale[None, :]
    x = np.maximum(x, config.positive_floor).astype(config.dtype)
    return Binned(
        data=x,
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
    n_bin = bin_samples_for(rate, config.bin_ms)
    stage1 = _Stage1(rate, config)
    binned = _Binner(n_bin)(stage1(data, antialias=True))
    if binned.shape[0] == 0:
        raise EMGDataError(f"EMG array: {data.shape[0]} samples is shorter than one bin ({n_bin} samples)")
    return _finish(binned, rate, n_bin, t0, names, config, stats)


def preprocess_chunks(
    chunks: Iterable[object],
    rate: float | None = None,
    config: PreprocessConfig | None = None,
    starting_time: float | None = None,
    muscles: Sequence[str] | None = None,
    stats: ChannelStats | None = None,
) -> Binned:
    """Same as `preprocess` on the concatenation of consecutive chunks, holding only the bins in memory."""
    config = _checked(config)
    stage1: _Stage1 | None = None
    binner: _Binner | None = None
    pieces: list[np.ndarray] = []
    names: list[str] | None = None
    t0 = starting_time
    n_bin = 0
    expected_t: float | None = None
    pending: object | None = None
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
            rate, names, n_bin = r, nm, bin_samples_for(r, config.bin_ms)
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
        if xr is not None and isinstance(chunk, xr.DataArray) and "time" in chunk.coords and data.shape[0]:
            expected_t = float(chunk.coords["time"].values[-1]) + 1.0 / rate
        assert binner is not None
        out = binner(stage1(data, antialias=True))
        if out.shape[0]:
            pieces.append(out)
    if pending is not None and stage1 is None:
        return preprocess(pending, rate, config, starting_time, muscles, stats)
    if stage1 is None or not pieces:
        raise EMGDataError("EMG chunks: no data, or less than one bin in all")
    binned = np.concatenate(pieces, axis=0)
    return _finish(binned, float(rate), n_bin, float(t0 or 0.0), list(names or []), config, stats)


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
