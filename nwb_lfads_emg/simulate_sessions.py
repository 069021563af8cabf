"""Several sessions of one animal: one shared locomotor pattern generator, per-session recordings.

The multi-session (stitching) claims are judged on these. Every session is driven by the same
central pattern generator (each muscle of the animal's pool keeps its preferred phase, burst widths
and double bursts) but is its own recording: another stretch of walking (stride-speed drift and
cycle-to-cycle gains), another subset of the pool's muscles (the channels that worked that day),
other electrode gains and another level of cross-talk between neighbouring electrodes. The EMG
stage otherwise follows `simulate.simulate_session` (same `SimulationConfig` noise and carrier
settings), so each session is a `SimulatedSession` that `write_session_nwb` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import signal

from .simulate import (
    LOCOMOTION_MUSCLES,
    SimulatedSession,
    SimulationConfig,
    _block_mean,
    _smooth_noise,
    _twitch,
    _wrap,
)


@dataclass
class SessionSetConfig:
    """Settings of a set of sessions of one animal (`base` holds the per-session EMG settings)."""

    n_sessions: int = 5
    pool_size: int = 10  # muscles of the animal; each session records a subset
    muscles_per_session: tuple[int, int] = (6, 8)  # fewest, most channels of one session
    duration_s: float = 20.0
    gain_sd: float = 0.5  # SD of the log electrode gain
    crosstalk: tuple[float, float] = (0.05, 0.3)  # range of the per-session cross-talk level
    seed: int = 0
    base: SimulationConfig = field(default_factory=lambda: SimulationConfig(emg_model="carrier", n_units=10))


@dataclass
class PatternGenerator:
    """The animal's locomotor pattern generator: per pool muscle, when and how it bursts."""

    muscle_names: list[str]
    preferred: np.ndarray
    widths_on: np.ndarray
    widths_off: np.ndarray
    second: np.ndarray
    behavior_weights: np.ndarray  # (pool, 3) muscles -> hip, knee, ankle

    def activation(self, cfg: SimulationConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Activation of every pool muscle over n samples of walking; returns (activation, latent)."""
        rate = cfg.emg_rate
        speed = cfg.stride_hz * np.exp(cfg.stride_drift * _smooth_noise(rng, n, rate, 0.05))
        phase = 2 * np.pi * np.cumsum(speed) / rate
        cycle = np.floor(phase / (2 * np.pi)).astype(int)
        gains = np.exp(0.25 * rng.standard_normal((cycle[-1] + 2, len(self.muscle_names))))
        act = np.empty((n, len(self.muscle_names)))
        for j in range(len(self.muscle_names)):
            delta = _wrap(phase - self.preferred[j])
            burst = np.exp(-0.5 * (delta / np.where(delta < 0, self.widths_on[j], self.widths_off[j])) ** 2)
            if self.second[j]:
                d2 = _wrap(phase - self.preferred[j] - np.pi)
                burst = burst + 0.5 * np.exp(-0.5 * (d2 / np.where(d2 < 0, self.widths_on[j], self.widths_off[j])) ** 2)
            act[:, j] = 0.03 + 0.9 * gains[cycle, j] * burst
        return np.clip(act, 0.0, 1.0), np.column_stack([np.cos(phase), np.sin(phase), speed])


def pattern_generator(config: SessionSetConfig) -> PatternGenerator:
    """The shared pattern generator of an animal (deterministic for `config.seed`)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 10_000]))
    p, b = config.pool_size, config.base
    names = [LOCOMOTION_MUSCLES[i] if i < len(LOCOMOTION_MUSCLES) else f"M{i}" for i in range(p)]
    return PatternGenerator(
        muscle_names=names,
        preferred=(np.arange(p) / p + rng.uniform(-0.05, 0.05, p)) * 2 * np.pi,
        widths_on=b.onset_width * rng.uniform(0.7, 1.3, p) * 2 * np.pi,
        widths_off=b.offset_width * rng.uniform(0.6, 1.5, p) * 2 * np.pi,
        second=rng.random(p) < 0.3,
        behavior_weights=0.6 * rng.standard_normal((p, 3)) / np.sqrt(p),
    )


def simulate_sessions(config: SessionSetConfig | None = None) -> list[SimulatedSession]:
    """Simulate `n_sessions` sessions of one animal; each keeps only its own muscles' truth and EMG."""
    config = config or SessionSetConfig()
    lo, hi = config.muscles_per_session
    if not 1 <= lo <= hi <= config.pool_size:
        raise ValueError(f"muscles_per_session {config.muscles_per_session} must lie in [1, pool_size={config.pool_size}]")
    cpg = pattern_generator(config)
    return [_session(config, cpg, k) for k in range(config.n_sessions)]


def _session(config: SessionSetConfig, cpg: PatternGenerator, k: int) -> SimulatedSession:
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([config.seed, k]).spawn(5)]
    rng_act, rng_rec, rng_carrier, rng_noise, rng_spikes = streams
    cfg = replace(config.base, duration_s=config.duration_s, seed=config.seed * 1000 + k, task="locomotion")
    rate = cfg.emg_rate
    n = int(round(cfg.duration_s * rate))
    act_pool, latent = cpg.activation(cfg, rng_act, n)
    # the recording: which muscles, their electrode gains, how much neighbours leak into each channel
    m = int(rng_rec.integers(config.muscles_per_session[0], config.muscles_per_session[1] + 1))
    idx = np.sort(rng_rec.choice(config.pool_size, m, replace=False))
    gains = np.exp(config.gain_sd * rng_rec.standard_normal(m))
    crosstalk = float(rng_rec.uniform(*config.crosstalk))
    activation = act_pool[:, idx]

    sos = signal.butter(4, cfg.carrier_band_hz, btype="bandpass", fs=rate, output="sos")
    carrier = signal.sosfilt(sos, rng_carrier.standard_normal((n, m)), axis=0)
    carrier /= carrier.std(axis=0, keepdims=True)
    mix = np.eye(m)
    for j in range(m):
        if m > 1:
            mix[j, (j - 1) % m] = mix[j, (j + 1) % m] = crosstalk
    emg = (activation * carrier) @ mix.T
    emg += cfg.sensor_noise * rng_noise.standard_normal((n, m))
    emg += cfg.motion_artifact * _smooth_noise(rng_noise, n, rate, 5.0, (m,))
    t = np.arange(n)[:, None] / rate
    emg += cfg.mains_amplitude * np.sin(2 * np.pi * cfg.mains_hz * t + rng_noise.uniform(0, 2 * np.pi, m))
    emg *= cfg.emg_amplitude_v * gains

    # behaviour from every muscle of the pool (recorded or not); cortex driven by the pool as well
    factor = int(round(rate / cfg.behavior_rate))
    behavior = _block_mean(_twitch(act_pool, rate, cfg.twitch_tau_s) @ cpg.behavior_weights + [0.3, 0.8, 1.6], factor)
    drive = _block_mean(act_pool, int(round(rate / 1000.0)))
    lead = int(round(cfg.spike_lead_s * 1000.0))
    ahead = np.vstack([drive[lead:], np.repeat(drive[-1:], lead, axis=0)])
    w = rng_spikes.standard_normal((config.pool_size, cfg.n_units)) * (rng_spikes.random((config.pool_size, cfg.n_units)) < 0.4)
    base = rng_spikes.uniform(*cfg.base_rate_hz, cfg.n_units)
    counts = rng_spikes.poisson(base * np.exp(np.clip(1.5 * (ahead - ahead.mean(0)) @ w, -5, 3)) / 1000.0)
    spikes = [np.sort((np.repeat(np.nonzero(c)[0], c[c > 0]) + rng_spikes.random(int(c.sum()))) / 1000.0)
              for c in counts.T]
    return SimulatedSession(
        emg=emg.astype(np.float32), emg_rate=rate, activation=activation.astype(np.float32),
        muscle_names=[cpg.muscle_names[i] for i in idx], behavior=behavior.astype(np.float32),
        behavior_rate=cfg.behavior_rate, behavior_names=["hip", "knee", "ankle"], behavior_unit="radians",
        spike_times=spikes, config=cfg, latent=latent.astype(np.float32),
    )


__all__ = ["SessionSetConfig", "PatternGenerator", "pattern_generator", "simulate_sessions"]
