"""Lazy EMG reading (windows, channel subsets, bounded-memory chunks) and evaluation-side readers."""

from __future__ import annotations

import fnmatch
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import EMGDataError, NwbLfadsEmgError, SourceError, describe, one_line
from .discover import (
    SeriesInfo,
    _is_input,
    _numeric,
    _shape,
    _text_reason,
    all_series_summary,
    column_names,
    find_behavior_series,
    find_emg_candidates,
    group_info,
    multichannel_info,
    series_text,
    series_timing,
    walk_series,
)

_TS_BLOCK = 1_000_000  # timestamps checked per block (8 MB)
#: Relative deviation of a sampling interval from the nominal one still counted as regular.
REGULAR_TOLERANCE = 0.01
#: An interval longer than this many nominal intervals is a gap between segments (trials).
GAP_FACTOR = 1.5
#: Windows of at least this many samples check for NaN/Inf on two threads (below it the hand-over costs more).
OVERLAP_CHECK_MIN = 1 << 20
#: The share of such a window's rows checked by the second thread while the reading thread wraps the array, then
#: checks the rest (60 s x 32 ch x 2 kHz, paired runs: 0.9 -0.9 ms against no overlap; 0.75 -0.7, 0.5 -0.5).
OVERLAP_CHECK_SHARE = 0.9
log = logging.getLogger("nwb_lfads_emg")
_check_lock = threading.Lock()
_check_executor: ThreadPoolExecutor | None = None


def _check_pool() -> ThreadPoolExecutor:
    """One thread, shared by every reader, that checks part of a large window for NaN/Inf."""
    global _check_executor
    with _check_lock:
        if _check_executor is None:
            _check_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nwb-finite-check")
        return _check_executor


def _all_finite(data: np.ndarray) -> bool:
    """No NaN/Inf in ``data``: its sum of squares carries any (one BLAS pass, no mask: ~30% cheaper than a sum); an
    overflowing one looks element by element."""
    if data.size == 0 or data.dtype.kind != "f":
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if data.flags.c_contiguous:
            flat = data.reshape(-1)
            total = np.dot(flat, flat)
        else:  # (a flat view would be a copy)
            total = data.sum()
        return bool(np.isfinite(total)) or bool(np.isfinite(data).all())


class _ArrivalCheck:
    """A streamed window checked for NaN/Inf and wrapped while its bytes arrive (a :class:`ReadWatcher`): the fetch
    threads check each piece received straight into the output, the reading thread wraps the output meanwhile, and
    only the bytes that came another way (window edges, chunks fetched afterwards) are checked once it is read."""

    def __init__(self, wrap: Callable[[np.ndarray], xr.DataArray]) -> None:
        self._wrap = wrap
        self.out: np.ndarray | None = None
        self.wrapped: xr.DataArray | None = None
        self._finite: list[tuple[int, int]] = []  # element ranges of the flat output found finite
        self._nonfinite = False

    def begin(self, outs: list[np.ndarray]) -> None:
        self.out = outs[0] if len(outs) == 1 and outs[0].dtype.kind == "f" and outs[0].size else None

    def landed(self, item: int, start: int, stop: int) -> None:
        if self.out is None:
            return
        size = self.out.itemsize
        a, b = start // size, stop // size
        if _all_finite(self.out.reshape(-1)[a:b]):
            self._finite.append((a, b))
        else:
            self._nonfinite = True

    def meanwhile(self) -> None:
        if self.out is not None:
            self.wrapped = self._wrap(self.out)

    def all_finite(self, data: np.ndarray) -> bool | None:
        """Whether ``data`` holds no NaN/Inf (checking what was not checked as it arrived); None when ``data`` is not
        the array followed (read another way, or scaled since)."""
        if data is not self.out or self.wrapped is None:
            return None
        if self._nonfinite:
            return False
        flat, at = data.reshape(-1), 0
        for a, b in sorted(self._finite):
            if a > at and not _all_finite(flat[at:a]):
                return False
            at = max(at, b)
        return _all_finite(flat[at:])


def _location_of(opened: Any) -> tuple[Any, str, Any]:
    """(nwbfile, location string, opened-or-None) from an OpenedSource or a bare NWBFile."""
    nwbfile = getattr(opened, "nwbfile", None)
    if nwbfile is not None:
        return nwbfile, str(opened.location), opened
    container_source = getattr(opened, "container_source", None)
    return opened, str(container_source or getattr(opened, "identifier", "<NWBFile>")), None


def _unit_name(unit: str) -> str:
    return "volts" if unit.strip().lower() in ("v", "volt", "volts") else unit


class EMGReader:
    """The chosen EMG of a file as a lazily read (time x muscle) array in physical units.

    ``on_nonfinite``: "raise" refuses NaN/Inf samples, "mask" sets them to 0 and marks them in
    the boolean coordinate ``valid``. ``drop_dead`` leaves out constant channels instead of
    refusing them. ``irregular``: "raise" or "resample" (linear interpolation onto a uniform grid
    at the median rate; loads the timestamps into memory).
    """

    def __init__(
        self,
        opened: Any,
        series: str | None = None,
        on_nonfinite: str = "raise",
        *,
        drop_dead: bool = False,
        irregular: str = "raise",
        check_dead: bool = True,
    ) -> None:
        if on_nonfinite not in ("raise", "mask"):
            raise ValueError("on_nonfinite must be 'raise' or 'mask'")
        if irregular not in ("raise", "resample"):
            raise ValueError("irregular must be 'raise' or 'resample'")
        self.nwbfile, self.location, self._opened = _location_of(opened)
        self.on_nonfinite = on_nonfinite
        self.info = self._choose(series)
        self.series_path = self.info.path
        self.source_kind = self.info.kind
        self._objects = list(self.info.objects)
        self.series_object = self._objects[0]
        self.unit = _unit_name(self.series_object.unit)
        self.electrode_indices: list[int] | None = None
        self._columns: list[int] = list(range(len(self.info.muscles)))
        self._all_muscles = list(self.info.muscles)
        self._resample_stamps: np.ndarray | None = None
        self._read_lock = threading.Lock()
        self._muscle_coords: dict[tuple[int, ...], Any] = {}
        try:
            self._check_layout()
            self._check_timing(irregular)
        except NwbLfadsEmgError:
            raise
        except Exception as exc:  # h5py/remfile failures while reading (network, truncation)
            raise self._read_error(exc) from None
        self.muscles = list(self._all_muscles)
        if check_dead:
            self._check_dead(drop_dead)
        if hasattr(self._opened, "learn_rows"):  # streamed: the chunk index read once, not looked up chunk by chunk
            try:
                self._opened.learn_rows([o.data for o in self._objects])
            except Exception as exc:  # h5py/remfile failures while reading (network, truncation)
                raise self._read_error(exc) from None
        self._muscle_coord(self._columns)

    # ----- choosing and checking -------------------------------------------------------------
    def _choose(self, series: str | None) -> SeriesInfo:
        candidates = find_emg_candidates(self.nwbfile)
        if series is None:
            if not candidates:
                existing = ", ".join(all_series_summary(self.nwbfile)) or "no TimeSeries at all"
                raise EMGDataError(describe(self.location, None, f"no EMG-like series found (choose one with --emg); "
                                            f"the file holds: {existing}"))
            if len(candidates) > 1:
                raise EMGDataError(describe(self.location, None, "several EMG-like series; choose one with --emg: "
                                            + ", ".join(c.path for c in candidates)))
            return candidates[0]
        info = choose_series(self.nwbfile, series, candidates, self.location)
        if info.warning:
            log.warning(describe(self.location, info.path, info.warning))
        return info

    def _check_layout(self) -> None:
        objs = self._objects
        if self.source_kind in ("ElectricalSeries", "TimeSeries"):
            es = objs[0]
            shape = tuple(es.data.shape)
            if len(shape) != 2:
                raise EMGDataError(describe(self.location, self.series_path,
                                            f"data is {len(shape)}-D with shape {shape}; expected 2-D (time x channels)"))
            try:
                self.electrode_indices = [int(i) for i in es.electrodes.data[:]]
            except Exception:  # noqa: BLE001 - a TimeSeries has no electrodes
                self.electrode_indices = None
            self.n_samples = int(shape[0])
            cc = getattr(es, "channel_conversion", None)
            self._channel_conversion = None if cc is None else np.asarray(cc[:], dtype=np.float64)
        else:
            lengths = {}
            for ts in objs:
                shape = tuple(ts.data.shape)
                if len(shape) == 2 and shape[1] == 1:
                    pass
                elif len(shape) != 1:
                    raise EMGDataError(describe(self.location, f"{self.series_path}/{ts.name}",
                                                f"per-muscle series has shape {shape}; expected 1-D (time)"))
                lengths[ts.name] = int(shape[0])
            if len(set(lengths.values())) > 1:
                raise EMGDataError(describe(self.location, self.series_path,
                                            f"per-muscle series differ in length: {lengths}"))
            units = {ts.unit for ts in objs}
            if len(units) > 1:
                raise EMGDataError(describe(self.location, self.series_path, f"per-muscle series differ in unit: {sorted(units)}"))
            self.n_samples = int(next(iter(lengths.values()))) if lengths else 0
            self._channel_conversion = None
        if self.n_samples == 0:
            raise EMGDataError(describe(self.location, self.series_path, "the series holds no samples"))

    def _check_timing(self, irregular: str) -> None:
        first = self._objects[0]
        rates = []
        for ts in self._objects:
            if ts.rate is not None:
                if not math.isfinite(float(ts.rate)) or float(ts.rate) <= 0:
                    raise EMGDataError(describe(self.location, self.series_path, f"sampling rate is {ts.rate} Hz "
                                                "(must be positive); fix the file, or pick another series with --emg"))
                rates.append((ts.name, float(ts.rate), float(ts.starting_time or 0.0)))
            else:
                stamps = ts.timestamps
                if stamps is None:
                    raise EMGDataError(describe(self.location, ts.name, "neither rate nor timestamps"))
                n = len(stamps)
                t_first = float(stamps[0])
                t_last = float(stamps[n - 1]) if n > 1 else t_first
                rate = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else float("nan")
                rates.append((ts.name, rate, t_first))
        ref_name, ref_rate, ref_start = rates[0]
        for name, rate, start in rates[1:]:
            if not math.isclose(rate, ref_rate, rel_tol=1e-4):
                raise EMGDataError(describe(self.location, self.series_path,
                                            f"mismatched rates between per-muscle series: {ref_name} {ref_rate:g} Hz, "
                                            f"{name} {rate:g} Hz"))
            if abs(start - ref_start) > 0.5 / ref_rate:
                raise EMGDataError(describe(self.location, self.series_path,
                                            f"mismatched start times between per-muscle series: {ref_name} {ref_start:g} s, "
                                            f"{name} {start:g} s"))
        self._timestamps = first.timestamps if first.rate is None else None
        if abs(ref_rate - round(ref_rate)) < 1e-6 * ref_rate:
            ref_rate = float(round(ref_rate))  # endpoint-derived rates carry float round-off
        self.segments = [(0, self.n_samples)]
        self._segment_t0 = [ref_start]
        if self._timestamps is None:
            self.rate = ref_rate
            self.starting_time = ref_start
            return
        if self.n_samples < 2:
            raise EMGDataError(describe(self.location, self.series_path, "fewer than 2 timestamps; cannot find a rate"))
        period, gaps, irregular_at = self._scan_stamps(self._timestamps)
        if irregular_at is not None:
            i, d = irregular_at
            if irregular == "raise":
                raise EMGDataError(describe(
                    self.location, self.series_path,
                    f"irregular timestamps (interval {d:.6g} s after sample {i}, nominal {period:.6g} s, neither "
                    "regular nor a gap between trials); pass --irregular resample to interpolate onto a uniform grid"))
            stamps = np.asarray(self._timestamps[:], dtype=np.float64)
            diffs = np.diff(stamps)
            if np.any(diffs <= 0):
                raise EMGDataError(describe(self.location, self.series_path, "timestamps are not strictly increasing"))
            self._resample_stamps = stamps
            self.rate = float(1.0 / np.median(diffs))
            self.starting_time = float(stamps[0])
            self._raw_n = self.n_samples
            self.n_samples = int(math.floor((stamps[-1] - stamps[0]) * self.rate)) + 1
            self.segments = [(0, self.n_samples)]
            self._segment_t0 = [self.starting_time]
            return
        rate = 1.0 / period
        if abs(rate - round(rate)) < 1e-6 * rate:
            rate = float(round(rate))
        self.rate = rate
        self.starting_time = ref_start
        bounds = [0, *[g + 1 for g in gaps], self.n_samples]
        self.segments = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._segment_t0 = [float(self._timestamps[a]) for a, _ in self.segments]

    def _scan_stamps(self, stamps: Any) -> tuple[float, list[int], tuple[int, float] | None]:
        """(nominal interval, sample indices followed by a gap, first irregular interval or None), block by block."""
        n = len(stamps)
        first = np.asarray(stamps[0:min(n, _TS_BLOCK + 1)], dtype=np.float64)
        d0 = np.diff(first)
        if np.any(d0 <= 0):
            i = int(np.argmax(d0 <= 0))
            return float(np.median(d0)) if d0.size else 0.0, [], (i, float(d0[i]))
        period = float(np.median(d0))
        gaps: list[int] = []
        for a in range(0, n - 1, _TS_BLOCK):
            block = first if a == 0 else np.asarray(stamps[a:min(n, a + _TS_BLOCK + 1)], dtype=np.float64)
            d = np.diff(block)
            regular = np.abs(d - period) <= REGULAR_TOLERANCE * period
            gap = d > GAP_FACTOR * period
            bad = ~(regular | gap)
            if bad.any():
                i = int(np.argmax(bad))
                return period, gaps, (a + i, float(d[i]))
            gaps.extend((a + np.flatnonzero(gap)).tolist())
            if len(gaps) > max(10, n // 20):
                return period, gaps, (gaps[-1], float(d[gaps[-1] - a]))
        return period, gaps, None

    def texts(self) -> list[str]:
        """What the file says about the chosen series: path, descriptions, comments, containers (for `decide_input`)."""
        out = [self.series_path]
        for ts in self._objects[:64]:
            out += [str(getattr(ts, "description", "") or ""), str(getattr(ts, "comments", "") or "")]
            parent = getattr(ts, "parent", None)
            if parent is not None and not hasattr(parent, "acquisition"):
                out.append(str(getattr(parent, "name", "") or ""))
                out.append(str(getattr(parent, "description", "") or ""))
        return [t for t in out if t and t.lower() not in ("no description", "no comments")]

    def head(self, n: int = 5000) -> np.ndarray:
        """The first ``n`` samples of the chosen muscles (for a look at their signs)."""
        a, b = self.segments[0]
        return self._read_scaled(a, min(b, a + n), self._columns, check=False)[0]

    @property
    def timestamped(self) -> bool:
        """True when the series stores timestamps (the estimates are then written on them)."""
        return self._timestamps is not None and self._resample_stamps is None

    def segment_times(self, k: int) -> tuple[float, float]:
        """(first sample time, end time) of segment k (a contiguous run of samples, e.g. one trial)."""
        a, b = self.segments[k]
        return self._segment_t0[k], self._segment_t0[k] + (b - a) / self.rate

    def _check_dead(self, drop_dead: bool) -> None:
        n = self.n_samples
        width = max(2, min(n, int(self.rate)))
        starts = sorted({0, max(0, n // 2 - width // 2), max(0, n - width)})
        pieces = [self._read_scaled(s, min(n, s + width), self._columns, check=False)[0] for s in starts]
        block = np.concatenate(pieces, axis=0)
        with np.errstate(invalid="ignore"):
            span = np.nanmax(block, axis=0) - np.nanmin(block, axis=0)
        dead = [self._all_muscles[c] for c, s in zip(self._columns, span, strict=True) if not s > 0]
        if not dead:
            return
        if not drop_dead:
            raise EMGDataError(describe(self.location, self.series_path,
                                        f"constant (dead) channel(s): {', '.join(dead)}; pass --drop-dead to leave them out"))
        self._columns = [c for c in self._columns if self._all_muscles[c] not in dead]
        if not self._columns:
            raise EMGDataError(describe(self.location, self.series_path, "every channel is constant (dead)"))
        self.muscles = [self._all_muscles[c] for c in self._columns]
        self.dropped_muscles = dead

    # ----- reading ------------------------------------------------------------------------
    @property
    def duration_s(self) -> float:
        """Duration of the recording in seconds."""
        return self.n_samples / self.rate

    def _read_error(self, exc: BaseException) -> NwbLfadsEmgError:
        problem = self._opened.stream_problem() if self._opened is not None else None
        if problem:
            return SourceError(describe(self.location, self.series_path, f"streaming failed: {problem}"))
        text = one_line(exc)
        return SourceError(describe(self.location, self.series_path, f"cannot read the data (truncated or damaged file?): {text}"))

    def _raw(self, i0: int, i1: int, columns: list[int], watcher: _ArrivalCheck | None = None) -> np.ndarray:
        """Rows [i0, i1) of ``columns``, scaled; sets ``_known_finite`` when no value can be NaN/Inf (no check needed).
        A streamed read tells ``watcher`` of its progress."""
        single = self.source_kind in ("ElectricalSeries", "TimeSeries")  # one 2-D dataset, else 1-D per muscle
        fetched = None
        self._known_finite = False
        if hasattr(self._opened, "prefetch_rows"):  # streamed: fetch the covering chunks concurrently
            datasets = [self._objects[0].data] if single else [self._objects[c].data for c in columns]
            fetched = self._opened.read_rows(datasets, i0, i1, columns if single else None, watcher)
            if fetched is None:  # compressed or unusual layout: prefetch, then h5py reads from memory
                self._opened.prefetch_rows(datasets, i0, i1, columns if single else None)
        if single:
            es = self._objects[0]
            ncol = es.data.shape[1]
            if fetched is not None:
                raw = fetched[0]
            elif len(columns) == ncol and columns == list(range(ncol)):
                raw = es.data[i0:i1, :]
            elif len(columns) > ncol // 2:
                raw = es.data[i0:i1, :][:, columns]
            else:
                order = sorted(set(columns))
                part = es.data[i0:i1, order]
                raw = part[:, [order.index(c) for c in columns]]
            dtype = np.result_type(raw.dtype, np.float32)
            out = raw.astype(dtype, copy=False)
            scale = float(es.conversion)
            factors = np.float64(scale)
            if self._channel_conversion is not None:
                factors = self._channel_conversion[columns] * scale
                out = out * factors.astype(dtype)
            elif scale != 1.0:
                out = out * dtype.type(scale)
            offset = float(getattr(es, "offset", 0.0) or 0.0)
            if raw.dtype.kind in "iu":  # finite by the type's bounds: |int| * |factor| + |offset| below the float's max
                top = max(abs(float(np.iinfo(raw.dtype).min)), float(np.iinfo(raw.dtype).max))
                with np.errstate(all="ignore"):
                    bound = top * float(np.max(np.abs(factors), initial=0.0)) + abs(offset)
                self._known_finite = bool(np.isfinite(bound) and bound < 0.5 * float(np.finfo(dtype).max))
            return out + dtype.type(offset) if offset else out
        cols = []
        for k, c in enumerate(columns):
            ts = self._objects[c]
            raw = np.asarray(fetched[k] if fetched is not None else ts.data[i0:i1]).reshape(-1)
            dtype = np.result_type(raw.dtype, np.float32)
            v = raw.astype(dtype, copy=False)
            conv = float(ts.conversion)
            offset = float(getattr(ts, "offset", 0.0) or 0.0)
            if conv != 1.0:
                v = v * dtype.type(conv)
            if offset:
                v = v + dtype.type(offset)
            cols.append(v)
        return np.stack(cols, axis=1)

    def _times(self, i0: int, i1: int) -> np.ndarray:
        if self._timestamps is not None and self._resample_stamps is None:
            return np.asarray(self._timestamps[i0:i1], dtype=np.float64)
        times = np.arange(i0, i1, dtype=np.float64)  # in place: one array rather than three
        times /= self.rate
        times += self.starting_time
        return times

    def _read_scaled(self, i0: int, i1: int, columns: list[int], check: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        data, unchecked = self._read_unchecked(i0, i1, columns)
        return self._checked(data, i0, columns) if check and unchecked else (data, None)

    def _checked(self, data: np.ndarray, i0: int, columns: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """``data`` as it is when it holds no NaN/Inf (no mask), else as `_nonfinite` leaves it."""
        return (data, None) if _all_finite(data) else self._nonfinite(data, i0, columns)

    def _read_unchecked(self, i0: int, i1: int, columns: list[int],
                        watcher: _ArrivalCheck | None = None) -> tuple[np.ndarray, bool]:
        """Rows [i0, i1) of ``columns``, scaled, and whether they may hold NaN/Inf (so still need the check)."""
        try:
            with self._read_lock:  # iter_chunks' read-ahead thread and the caller's own reads, one at a time
                if self._resample_stamps is not None:
                    data = self._resampled(i0, i1, columns)
                else:
                    data = self._raw(i0, i1, columns, watcher)
                known_finite = self._known_finite and self._resample_stamps is None
        except NwbLfadsEmgError:
            raise
        except Exception as exc:  # h5py/remfile failures while reading (network, truncation)
            raise self._read_error(exc) from None
        return data, bool(data.size) and data.dtype.kind == "f" and not known_finite

    def _nonfinite(self, data: np.ndarray, i0: int, columns: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows with NaN/Inf: refused with the first one named, or (``on_nonfinite="mask"``) zeroed and masked."""
        finite = np.isfinite(data)
        if self.on_nonfinite == "raise":
            rows, cols = np.nonzero(~finite)
            muscle = self._all_muscles[columns[int(cols[0])]]
            t = float(self._times(i0 + int(rows[0]), i0 + int(rows[0]) + 1)[0])
            raise EMGDataError(describe(self.location, self.series_path,
                                        f"{int((~finite).sum())} NaN/Inf sample(s), first in muscle {muscle} at t={t:.4f} s; "
                                        "pass --on-nonfinite mask to mask them"))
        data = np.where(finite, data, 0).astype(data.dtype, copy=False)
        return data, finite

    def _resampled(self, i0: int, i1: int, columns: list[int]) -> np.ndarray:
        stamps = self._resample_stamps
        assert stamps is not None
        grid = self._times(i0, i1)
        if grid.size == 0:
            return np.zeros((0, len(columns)), dtype=np.float32)
        j0 = max(0, int(np.searchsorted(stamps, grid[0], side="right")) - 1)
        j1 = min(self._raw_n, int(np.searchsorted(stamps, grid[-1], side="left")) + 1)
        raw = self._raw(j0, j1, columns)
        src = stamps[j0:j1]
        out = np.empty((grid.size, len(columns)), dtype=raw.dtype)
        for k in range(len(columns)):
            out[:, k] = np.interp(grid, src, raw[:, k])
        return out

    def _index(self, t: float) -> int:
        k = max(0, int(np.searchsorted(self._segment_t0, t, side="right")) - 1)
        a, b = self.segments[k]
        return int(min(b, max(a, a + math.ceil((t - self._segment_t0[k]) * self.rate - 1e-6))))

    def _columns_for(self, muscles: Sequence[str] | None) -> list[int]:
        if muscles is None:
            return list(self._columns)
        cols = []
        for m in muscles:
            if m not in self._all_muscles or self._all_muscles.index(m) not in self._columns:
                raise EMGDataError(describe(self.location, self.series_path,
                                            f"no muscle {m!r}; muscles: {', '.join(self.muscles)}"))
            cols.append(self._all_muscles.index(m))
        return cols

    def _muscle_coord(self, columns: list[int]) -> Any:
        """The ``muscle`` coordinate of these columns, built once per reader (pandas' string index costs ~0.3-1 ms)."""
        key = tuple(columns)
        coord = self._muscle_coords.get(key)
        if coord is None:
            if len(self._muscle_coords) >= 8:
                self._muscle_coords.clear()
            names = [self._all_muscles[c] for c in columns]
            coord = self._muscle_coords[key] = xr.DataArray(names, dims="muscle", coords={"muscle": names})["muscle"]
        return coord

    def _dataarray(self, i0: int, i1: int, columns: list[int]) -> xr.DataArray:
        arrival = None
        if getattr(self._opened, "is_remote", False) and self._resample_stamps is None:  # checked as it arrives
            arrival = _ArrivalCheck(lambda data: self._wrap(data, None, i0, columns))
        data, unchecked = self._read_unchecked(i0, i1, columns, arrival)
        finite = arrival.all_finite(data) if arrival is not None and unchecked else None
        if finite is not None:
            return arrival.wrapped if finite else self._wrap(*self._nonfinite(data, i0, columns), i0, columns)
        if unchecked and data.size >= OVERLAP_CHECK_MIN and data.ndim == 2:
            # a large window: most of the NaN/Inf check on a second core while this thread wraps the array
            cut = int(data.shape[0] * OVERLAP_CHECK_SHARE)
            head = _check_pool().submit(_all_finite, data[:cut])
            wrapped = self._wrap(data, None, i0, columns)
            if _all_finite(data[cut:]) & head.result():
                return wrapped
            return self._wrap(*self._nonfinite(data, i0, columns), i0, columns)
        return self._wrap(*(self._checked(data, i0, columns) if unchecked else (data, None)), i0, columns)

    def _wrap(self, data: np.ndarray, valid: np.ndarray | None, i0: int, columns: list[int]) -> xr.DataArray:
        """Rows from ``i0`` as the reader's DataArray: time and muscle coordinates, the NaN/Inf mask if any."""
        i1 = i0 + data.shape[0]
        coords: dict[str, Any] = {"time": pd.Index(self._times(i0, i1), copy=False, name="time"),  # xarray's own
                                  "muscle": self._muscle_coord(columns)}  # cast would copy it again
        if valid is not None:
            coords["valid"] = (("time", "muscle"), valid)
        return xr.DataArray(
            data, dims=("time", "muscle"), coords=coords, name="emg",
            attrs={"units": self.unit, "rate": self.rate, "series_path": self.series_path,
                   "source": self.location, "start_index": i0},
        )

    def window(self, t0: float, t1: float, muscles: Sequence[str] | None = None) -> xr.DataArray:
        """Samples with t0 <= t < t1 (seconds, file time base) of the chosen muscles, read on demand."""
        end = self.segment_times(len(self.segments) - 1)[1]
        if not t1 > t0:
            raise EMGDataError(describe(self.location, self.series_path, f"empty window [{t0}, {t1}) s"))
        if t1 <= self.starting_time or t0 >= end:
            raise EMGDataError(describe(self.location, self.series_path,
                                        f"window [{t0:g}, {t1:g}) s lies outside the recording [{self.starting_time:g}, {end:g}) s"))
        return self._dataarray(self._index(t0), self._index(t1), self._columns_for(muscles))

    def iter_chunks(self, chunk_s: float = 10.0, muscles: Sequence[str] | None = None,
                    t0: float | None = None, t1: float | None = None, *, segment: int | None = None
                    ) -> Iterator[xr.DataArray]:
        """Walk the recording (or [t0, t1), or one segment) in chunks of ``chunk_s`` seconds; memory ~ one chunk
        (two when streamed: the next one is read ahead while the caller works on this one)."""
        step = max(1, int(round(chunk_s * self.rate)))
        columns = self._columns_for(muscles)
        lo, hi = self.segments[segment] if segment is not None else (0, self.n_samples)
        i = max(lo, self._index(t0)) if t0 is not None else lo
        stop = min(hi, self._index(t1)) if t1 is not None else hi
        bounds = [(a, min(stop, a + step)) for a in range(i, stop, step)]
        if not getattr(self._opened, "is_remote", False) or len(bounds) < 2:
            for a, b in bounds:
                yield self._dataarray(a, b, columns)
            return
        # Streamed: read the next chunk in a background thread while the caller works on this one
        # (memory: one chunk ahead). Reads are serialised by the reader's lock.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nwb-read-ahead")
        ahead: Future | None = pool.submit(self._dataarray, *bounds[0], columns)
        try:
            for k in range(len(bounds)):
                current = ahead.result()  # re-raises the read's one-line error here
                ahead = pool.submit(self._dataarray, *bounds[k + 1], columns) if k + 1 < len(bounds) else None
                yield current
        finally:
            if ahead is not None:
                ahead.cancel()
                wait([ahead])
            pool.shutdown(wait=True)

    def to_dataarray(self, muscles: Sequence[str] | None = None, *, segment: int | None = None) -> xr.DataArray:
        """The whole recording (or one segment) in memory."""
        i0, i1 = self.segments[segment] if segment is not None else (0, self.n_samples)
        return self._dataarray(i0, i1, self._columns_for(muscles))

    def __repr__(self) -> str:
        return (f"EMGReader({self.location!r}, {self.series_path!r}, {len(self.muscles)} muscles, "
                f"{self.rate:g} Hz, {self.duration_s:.1f} s)")


def choose_series(nwbfile: Any, spec: str, candidates: list[SeriesInfo], location: str) -> SeriesInfo:
    """The series named by ``--emg``: a candidate's path or name, any series' path or name, a glob
    ('TimeSeriesEMG*') or a comma-separated list. An explicit choice of any numeric (time, channels)
    series, or of several 1-D series on one time base, is honoured (with a warning when it does not look like EMG).
    """
    key = spec.strip().strip("/")
    for c in candidates:
        if key in (c.path, c.path.rsplit("/", 1)[-1]):
            return c
    items = [k.strip().strip("/") for k in key.split(",") if k.strip().strip("/")]
    every = [(p, ts, parent) for p, ts, parent in walk_series(nwbfile) if _is_input(p, ts)]
    matched: list[tuple[str, Any, Any]] = []
    whole: list[str] = []
    for item in items:
        field = (lambda p, ts: p) if "/" in item else (lambda p, ts: ts.name)
        hits = [e for e in every if fnmatch.fnmatchcase(field(e[0], e[1]), item)]
        if not hits:  # a container: a BehavioralTimeSeries (or similar) of per-muscle series
            hits = [e for e in every if e[2] is not None and item in (e[0].rsplit("/", 1)[0], e[2].name)]
            whole.extend({e[0].rsplit("/", 1)[0] for e in hits})
        if not hits:
            listed = ", ".join(c.path for c in candidates) or "none"
            raise EMGDataError(describe(location, item, f"no EMG-like series by this name; candidates: {listed}; "
                                        f"every series (any may be named with --emg): "
                                        f"{', '.join(all_series_summary(nwbfile)) or 'none'}"))
        matched.extend(e for e in hits if all(e[0] != m[0] for m in matched))
    for p, ts, _ in matched:
        if not _numeric(ts) or not _shape(ts):
            raise EMGDataError(describe(location, p, f"not a numeric time series (dtype {getattr(ts.data, 'dtype', '?')}); "
                                        "choose another with --emg"))
    looks_emg = any(_text_reason(series_text(p, ts, parent)) or (parent is not None and _text_reason(
        {"container": parent.name})) for p, ts, parent in matched)
    from pynwb.ecephys import ElectricalSeries

    if not looks_emg:
        looks_emg = any(isinstance(ts, ElectricalSeries) and any(p == c.path for c in candidates)
                        for p, ts, _ in matched)
    warning = "" if looks_emg else ("nothing in its name, description, unit, electrodes or container says "
                                    "EMG/muscle; using it because --emg names it")
    why = f"chosen with --emg {spec}"
    if len(matched) == 1:
        p, ts, _ = matched[0]
        if len(_shape(ts)) > 2:
            raise EMGDataError(describe(location, p, f"data has shape {_shape(ts)}; expected (time) or (time, channels)"))
        return multichannel_info(p, ts, why, warning)
    wide = [p for p, ts, _ in matched if len(_shape(ts)) != 1 and not (len(_shape(ts)) == 2 and _shape(ts)[1] == 1)]
    if wide:
        raise EMGDataError(describe(location, spec, f"--emg matches {len(matched)} series, and {', '.join(wide)} has "
                                    "several columns; name one (time, channels) series, or several 1-D series"))
    containers = {p.rsplit("/", 1)[0] for p, _, _ in matched}
    if len(items) == 1 and len(containers) == 1:
        container = containers.pop()
        path = container if whole else f"{container}/{items[0].rsplit('/', 1)[-1]}"
    else:
        path = ",".join(p for p, _, _ in matched)
    return group_info(path, [(p, ts) for p, ts, _ in matched], why, warning)


def read_behavior(nwbfile: Any, name: str | None = None, times: np.ndarray | None = None) -> xr.DataArray:
    """A behaviour series as (time x output); linearly interpolated onto ``times`` (NaN outside) when given."""
    nwbfile, location, _ = _location_of(nwbfile)
    infos = find_behavior_series(nwbfile)
    if name is None:
        behavioral = [b for b in infos if b.behavioral]
        if len(behavioral) != 1:
            listed = ", ".join(b.path for b in (behavioral or infos)) or "none"
            raise EMGDataError(describe(location, None, f"{'several' if behavioral else 'no'} behaviour series; "
                                        f"choose one by name: {listed}"))
        info = behavioral[0]
    else:
        key = name.strip("/")
        matches = [b for b in infos if key in (b.path, b.name)]
        if not matches:
            raise EMGDataError(describe(location, name, "no such behaviour series; candidates: "
                                        + (", ".join(b.path for b in infos) or "none")))
        info = matches[0]
    return read_series(info.obj, location, info.path, times)


def read_series(ts: Any, location: str, path: str, times: np.ndarray | None = None) -> xr.DataArray:
    """Any TimeSeries as (time x output) in physical units (conversion, offset applied); linearly
    interpolated onto ``times`` (NaN outside) when given. ``attrs['rate']`` is its rate (None when timestamped)."""
    try:
        data = np.asarray(ts.data[:], dtype=np.float64)
        stamps = (np.asarray(ts.timestamps[:], dtype=np.float64) if ts.rate is None
                  else float(ts.starting_time or 0.0) + np.arange(data.shape[0]) / float(ts.rate))
    except (OSError, RuntimeError) as exc:
        raise SourceError(describe(location, path, f"cannot read the data: {one_line(exc)}")) from None
    data = data * float(ts.conversion) + float(getattr(ts, "offset", 0.0) or 0.0)
    if data.ndim == 1:
        data = data[:, None]
        outputs = [ts.name]
    else:
        data = data.reshape(data.shape[0], -1)
        outputs = column_names(ts, data.shape[1])
    rate = None if ts.rate is None else float(ts.rate)
    if times is not None:
        t = np.asarray(times, dtype=np.float64)
        data = np.stack([np.interp(t, stamps, data[:, j], left=np.nan, right=np.nan)
                         for j in range(data.shape[1])], axis=1)
        stamps, rate = t, None
    return xr.DataArray(data, dims=("time", "output"), coords={"time": stamps, "output": outputs},
                        name=ts.name, attrs={"units": ts.unit, "series_path": path, "source": location,
                                             "rate": rate})


def read_spikes_binned(nwbfile: Any, bin_edges: np.ndarray) -> np.ndarray:
    """Spike counts of every unit in the bins given by ``bin_edges`` (seconds): (n_bins x n_units) int64."""
    nwbfile, location, _ = _location_of(nwbfile)
    units = nwbfile.units
    if units is None or len(units) == 0:
        raise EMGDataError(describe(location, "units", "the file has no Units table (no spikes)"))
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise EMGDataError(describe(location, "units", "bin_edges must be a strictly increasing 1-D array of >= 2 edges"))
    try:
        flat = np.asarray(units.spike_times.data[:], dtype=np.float64)
        ends = np.asarray(units.spike_times_index.data[:], dtype=np.int64)
    except (OSError, RuntimeError) as exc:
        raise SourceError(describe(location, "units/spike_times", f"cannot read: {one_line(exc)}")) from None
    out = np.zeros((edges.size - 1, ends.size), dtype=np.int64)
    start = 0
    for u, end in enumerate(ends):
        out[:, u] = np.histogram(flat[start:end], bins=edges)[0]
        start = int(end)
    return out


def _input_hint(c: SeriesInfo) -> str:
    """What `--input auto` would take the candidate for, from its rate, words and the signs of a few values."""
    from ..preprocess import PreprocessConfig, decide_input

    if not c.rate:
        return ""
    texts = [c.path] + [str(getattr(ts, "description", "") or "") for ts in c.objects[:16]]
    texts += [str(getattr(ts, "comments", "") or "") for ts in c.objects[:16]]
    try:
        sample = np.concatenate([np.asarray(ts.data[:2000], dtype=np.float64).reshape(-1) for ts in c.objects[:16]])
    except Exception:  # noqa: BLE001 - a hint only
        sample = None
    d = decide_input(float(c.rate), PreprocessConfig(), texts, sample)
    return f"{d.kind}, {'; '.join(d.reasons)}; bins {d.bin_ms:g} ms"


def _other_line(path: str, ts: Any) -> str:
    rate, _start, dur, stamped = series_timing(ts)
    r = f"{rate:g} Hz" if rate else "rate ?"
    d = f"{dur:.1f} s" if dur is not None else "duration ?"
    return (f"  {path} [{type(ts).__name__}] shape {_shape(ts)}, {r}, {d}, unit {getattr(ts, 'unit', '?')}"
            + (", timestamped" if stamped else ""))


def inventory(nwbfile: Any, location: str) -> str:
    """Human-readable inventory: EMG candidates first, then Units, behaviour and every other time series."""
    lines = [f"file: {location}"]
    ident = getattr(nwbfile, "identifier", None)
    if ident:
        lines.append(f"identifier: {ident}; session: {nwbfile.session_description}")
    cands = find_emg_candidates(nwbfile)
    lines.append(f"EMG candidates ({len(cands)}; choose one with --emg):")
    for c in cands:
        hint = _input_hint(c)
        lines.append(f"  {c.describe()}  (why: {c.why}" + (f"; input: {hint}" if hint else "") + ")")
    if not cands:
        lines.append("  none (any series below may still be named with --emg)")
    units = nwbfile.units
    if units is not None and len(units):
        ends = np.asarray(units.spike_times_index.data[:])
        n_spikes = int(ends[-1]) if ends.size else 0
        lines.append(f"Units: units ({len(units)} units, {n_spikes} spikes)")
    else:
        lines.append("Units: none")
    beh = find_behavior_series(nwbfile)
    lines.append(f"Behaviour series ({len(beh)}):")
    lines += [f"  {b.describe()}" + ("" if b.behavioral else "  (not obviously behaviour)") for b in beh] or ["  none"]
    listed = {id(ts) for c in cands for ts in c.objects} | {id(b.obj) for b in beh}
    other = [(p, ts) for p, ts, _ in walk_series(nwbfile) if id(ts) not in listed]
    lines.append(f"Other time series ({len(other)}):")
    lines += [_other_line(p, ts) for p, ts in other] or ["  none"]
    return "\n".join(lines)


def inspect_source(source: str, cache_dir: Any = None) -> str:
    """Open ``source`` and list its EMG candidates, Units and behaviour series (for `nwb-lfads-emg inspect`)."""
    from .opened import open_source

    with open_source(source, cache_dir=cache_dir) as opened:
        try:
            text = inventory(opened.nwbfile, opened.location)
        except NwbLfadsEmgError:
            raise
        except (OSError, RuntimeError) as exc:
            problem = opened.stream_problem() or one_line(exc)
            raise SourceError(describe(opened.location, None, f"cannot read the file's contents: {problem}")) from None
        if opened.dandi_url:
            text = text.replace(f"file: {opened.location}", f"file: {opened.location}\ndandi: {opened.dandi_url}", 1)
        return text
