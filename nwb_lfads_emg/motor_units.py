"""Motor-unit EMG model (after Fuglevand, Winter & Patla, J. Neurophysiol. 70:2470, 1993), pure numpy.

Per muscle a pool of motor units whose recruitment thresholds are exponentially distributed over
the excitation range (many small low-threshold units, few large ones; the last is recruited at
`last_recruited`); above threshold each fires at a rate rising linearly with excitation from a
minimum at threshold to its peak rate at full excitation (later units peak lower), with interspike intervals of a gamma renewal
process (coefficient of variation `isi_cv`) in operational time. Each unit's action potential
grows with its threshold and has its own shape per electrode (a mix of the first two
Hermite-Rodriguez functions with unit-specific width); an electrode also sees the units of the
neighbouring muscles, attenuated by `crosstalk` and widened (volume conduction low-passes them).
Sensor noise, motion artefact and mains hum are added by the simulator, as for the carrier model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MotorUnitPool:
    """Settings of the motor-unit pools (one per muscle)."""

    n_units: int = 100
    recruitment_range: float = 30.0  # ratio of the last to the first unit's threshold
    last_recruited: float = 0.6  # excitation at which the last unit is recruited (of 1)
    min_rate_hz: float = 8.0
    peak_rate_first_hz: float = 35.0
    peak_rate_last_hz: float = 25.0
    isi_cv: float = 0.2
    amplitude_range: float = 10.0  # ratio of the largest to the smallest action potential
    width_ms: tuple[float, float] = (0.8, 2.5)  # Hermite-Rodriguez scale of the action potentials
    crosstalk_width: float = 2.0  # cross-talk potentials are this much wider


def thresholds(pool: MotorUnitPool) -> np.ndarray:
    """Recruitment thresholds (excitation in (0, 1]), exponentially distributed, ascending."""
    i = np.arange(pool.n_units)
    rte = np.exp(np.log(pool.recruitment_range) * i / max(pool.n_units - 1, 1))
    return rte / rte[-1] * pool.last_recruited


def firing_rates(excitation: np.ndarray, pool: MotorUnitPool) -> np.ndarray:
    """Firing rate (Hz) of every unit, (units, time) float32, for an excitation time course in [0, 1]."""
    th = thresholds(pool).astype(np.float32)
    frac = np.arange(pool.n_units) / max(pool.n_units - 1, 1)
    peak = (pool.peak_rate_first_hz - (pool.peak_rate_first_hz - pool.peak_rate_last_hz) * frac).astype(np.float32)
    # each unit's rate rises linearly from the minimum at its threshold to its peak at full excitation
    gain = ((peak - pool.min_rate_hz) / np.maximum(1.0 - th, 1e-6)).astype(np.float32)
    e = np.asarray(excitation, dtype=np.float32)[None, :]
    above = e - th[:, None]  # (units, time)
    rate = np.minimum(np.float32(pool.min_rate_hz) + gain[:, None] * above, peak[:, None])
    rate[above < 0] = 0.0
    return rate


def spike_indices(excitation: np.ndarray, fs: float, pool: MotorUnitPool, rng: np.random.Generator,
                  step: int = 4) -> list[np.ndarray]:
    """Sample indices of each unit's discharges: a gamma renewal process in operational time.

    The rates are integrated on every `step`-th sample (excitation changes slowly) and the discharge
    times interpolated linearly within a step.
    """
    n = len(excitation)
    coarse = np.asarray(excitation, dtype=np.float64)[::step]
    rates = firing_rates(coarse, pool)
    phase = np.cumsum(rates, axis=1, dtype=np.float64) * (step / fs)  # expected discharges so far
    phase = np.concatenate([np.zeros((rates.shape[0], 1)), phase[:, :-1]], axis=1)  # at each coarse sample
    shape = 1.0 / pool.isi_cv**2
    out = []
    for u in range(rates.shape[0]):
        row = phase[u]
        total = row[-1]
        if total < 1:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        n_draw = int(total + 5 * np.sqrt(total) + 10)
        marks = np.cumsum(rng.gamma(shape, 1.0 / shape, n_draw)) + rng.uniform(0.0, 1.0)
        marks = marks[marks < total]
        i = np.clip(np.searchsorted(row, marks), 1, len(row) - 1)
        lo, hi = row[i - 1], row[i]
        frac = np.clip((marks - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
        idx = np.minimum(((i - 1 + frac) * step).astype(np.int64), n - 1)
        out.append(idx)
    return out


def _waveforms(n_units: int, fs: float, widths_s: np.ndarray, mix: np.ndarray, amps: np.ndarray
               ) -> tuple[np.ndarray, int]:
    """(units, L) action potentials: amps * (mix0 * HR1 + mix1 * HR2) of scale widths_s, unit energy before amps."""
    half = int(np.ceil(3 * widths_s.max() * fs))
    t = np.arange(-half, half + 1) / fs
    x = t[None, :] / widths_s[:, None]
    hr1 = x * np.exp(-(x**2))
    hr2 = (1 - 2 * x**2) * np.exp(-(x**2))
    w = mix[:, :1] * hr1 + mix[:, 1:] * hr2
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w * amps[:, None], half


def _scatter(n: int, spikes: list[np.ndarray], waves: np.ndarray, half: int) -> np.ndarray:
    """Sum of every unit's waveform at its discharge indices (one bincount, no Python loop over spikes)."""
    length = waves.shape[1]
    counts = np.array([s.size for s in spikes])
    if counts.sum() == 0:
        return np.zeros(n)
    starts = (np.concatenate(spikes) - half).astype(np.int32)
    unit_of = np.repeat(np.arange(len(spikes), dtype=np.int32), counts)
    idx = (starts[:, None] + np.arange(length, dtype=np.int32)[None, :]).ravel()
    val = waves.astype(np.float32)[unit_of].ravel()
    ok = (idx >= 0) & (idx < n)
    return np.bincount(idx[ok], weights=val[ok], minlength=n)


def motor_unit_emg(excitation: np.ndarray, fs: float, rng: np.random.Generator, crosstalk: float = 0.1,
                   pool: MotorUnitPool | None = None) -> np.ndarray:
    """EMG (time, electrodes) of muscles with excitation (time, muscles) in [0, 1]; electrode j faces muscle j
    and sees muscles j-1 and j+1 through cross-talk. Scaled so a muscle at full excitation has unit RMS."""
    pool = pool or MotorUnitPool()
    exc = np.clip(np.asarray(excitation, dtype=np.float64), 0.0, 1.0)
    n, m = exc.shape
    k = pool.n_units
    frac = np.arange(k) / max(k - 1, 1)
    amps = pool.amplitude_range**frac  # grows with the threshold's rank
    lo, hi = pool.width_ms
    full_rate = firing_rates(np.ones(1), pool)[:, 0].astype(np.float64)
    emg = np.zeros((n, m))
    for j in range(m):
        spikes = spike_indices(exc[:, j], fs, pool, rng)
        widths = rng.uniform(lo, hi, k) * 1e-3
        # Campbell: the variance of a sum of renewal trains at full excitation ~ sum rate * energy
        norm = np.sqrt(float((full_rate * amps**2).sum()))
        targets = [(j, 1.0, 1.0)]
        if m > 1 and crosstalk > 0:
            targets += [((j - 1) % m, crosstalk, pool.crosstalk_width), ((j + 1) % m, crosstalk, pool.crosstalk_width)]
        seen: set[int] = set()
        for electrode, gain, widen in targets:
            if electrode in seen:
                continue
            seen.add(electrode)
            mix = rng.standard_normal((k, 2))  # shape differs per unit and per electrode
            waves, half = _waveforms(k, fs, widths * widen, mix, amps * gain / norm * np.sqrt(fs))
            emg[:, electrode] += _scatter(n, spikes, waves, half)
    return emg
