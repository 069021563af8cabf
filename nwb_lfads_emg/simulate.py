"""Ground-truth session simulator: multi-muscle EMG with known activation, spikes and behaviour.

Every accuracy claim of the package is judged against the activation this module generates. A
session is latent dynamics (a locomotion cycle with drifting speed, or an isometric task with
ramps and holds) -> per-muscle activation in [0, 1] -> raw EMG (activation-modulated band-limited
noise, cross-talk, sensor noise, motion artefact, mains hum), cortical spikes driven by the
upcoming activation, and behaviour (joint angles or force) produced by twitch-filtered activation.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import signal

LOCOMOTION_MUSCLES = [
    "GM", "GL", "SO", "TA", "VL", "VM", "RF", "BF", "ST", "GMax", "GMed", "TFL", "PL", "EDL", "FHL", "AddM",
]
ISOMETRIC_MUSCLES = [
    "FCR", "FCU", "ECRL", "ECRB", "ECU", "EDC", "FDS", "FDP", "PL", "APL", "EPL", "FPL", "BR", "PT", "ED4", "FDI",
]


@dataclass
class SimulationConfig:
    """Settings of one simulated session; `asdict` of it is stored with the file for provenance."""

    n_muscles: int = 8
    duration_s: float = 60.0
    emg_rate: float = 2000.0
    task: str = "locomotion"  # "locomotion" or "isometric"
    n_units: int = 30
    seed: int = 0
    # locomotion: mean stride frequency and its slow drift (relative SD)
    stride_hz: float = 1.2
    stride_drift: float = 0.15
    # activation bursts: rising/falling widths as fractions of a cycle (sharp onsets, slower offsets)
    onset_width: float = 0.015
    offset_width: float = 0.06
    # isometric: hold durations (s) and physiological oscillation added during holds
    hold_s: tuple[float, float] = (1.0, 2.0)
    tremor_hz: float = 10.0
    tremor_amplitude: float = 0.05
    """Physiological tremor added to the activation during holds (0 gives none)."""
    # locomotion: fraction of each cycle (from touchdown, phase 0) spent in stance
    stance_fraction: float = 0.6
    # EMG generation: "motor_units" (the default for accuracy claims: pools of `motor_units_per_muscle` motor
    # units, nwb_lfads_emg.motor_units) or "carrier" (activation-modulated band-limited noise, carrier_band_hz);
    # truth is the activation
    emg_model: str = "motor_units"
    motor_units_per_muscle: int = 100
    carrier_band_hz: tuple[float, float] = (30.0, 250.0)
    emg_amplitude_v: float = 2e-4
    crosstalk: float = 0.1
    sensor_noise: float = 0.05  # relative to emg_amplitude_v
    motion_artifact: float = 0.5  # relative to emg_amplitude_v
    mains_hz: float = 60.0
    mains_amplitude: float = 0.02
    # behaviour
    behavior_rate: float = 100.0
    twitch_tau_s: float = 0.04
    # cortex: lead of spikes before activation, base rate range (Hz)
    spike_lead_s: float = 0.05
    base_rate_hz: tuple[float, float] = (5.0, 30.0)


@dataclass
class SimulatedSession:
    """A simulated session held in memory: raw EMG, its true activation, behaviour and spikes."""

    emg: np.ndarray
    emg_rate: float
    activation: np.ndarray
    muscle_names: list[str]
    behavior: np.ndarray
    behavior_rate: float
    behavior_names: list[str]
    behavior_unit: str
    spike_times: list[np.ndarray]
    config: SimulationConfig
    latent: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    intervals: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """(start, stop) times (s): the gait cycles (locomotion) or the holds (isometric)."""

    @property
    def duration_s(self) -> float:
        """Length of the recording in seconds."""
        return self.emg.shape[0] / self.emg_rate


def _muscle_names(task: str, n: int) -> list[str]:
    pool = LOCOMOTION_MUSCLES if task == "locomotion" else ISOMETRIC_MUSCLES
    return [pool[i] if i < len(pool) else f"M{i}" for i in range(n)]


def _smooth_noise(rng: np.random.Generator, n: int, rate: float, cutoff_hz: float, shape=()) -> np.ndarray:
    """Unit-variance Gaussian noise low-passed at `cutoff_hz` (slow random drifts)."""
    white = rng.standard_normal((n, *shape))
    sos = signal.butter(2, cutoff_hz, fs=rate, output="sos")
    slow = signal.sosfiltfilt(sos, white, axis=0)
    return slow / (slow.std(axis=0, keepdims=True) + 1e-12)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _locomotion(cfg: SimulationConfig, rng: np.random.Generator, n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activation of a gait cycle with drifting speed; returns (activation, latent [cos, sin, speed],
    complete cycles as (start, stop) times: phase 0 is touchdown)."""
    rate = cfg.emg_rate
    speed = cfg.stride_hz * np.exp(cfg.stride_drift * _smooth_noise(rng, n, rate, 0.05))
    phase = 2 * np.pi * np.cumsum(speed) / rate
    cycle_index = np.floor(phase / (2 * np.pi)).astype(int)
    n_cycles = cycle_index[-1] + 2
    m = cfg.n_muscles
    preferred = (np.arange(m) / m + rng.uniform(-0.05, 0.05, m)) * 2 * np.pi
    widths_on = cfg.onset_width * rng.uniform(0.7, 1.3, m) * 2 * np.pi
    widths_off = cfg.offset_width * rng.uniform(0.6, 1.5, m) * 2 * np.pi
    second = rng.random(m) < 0.3  # bi-articular muscles burst twice a cycle
    gains = np.exp(0.25 * rng.standard_normal((n_cycles, m)))
    activation = np.empty((n, m))
    for j in range(m):
        delta = _wrap(phase - preferred[j])
        width = np.where(delta < 0, widths_on[j], widths_off[j])
        burst = np.exp(-0.5 * (delta / width) ** 2)
        if second[j]:
            delta2 = _wrap(phase - preferred[j] - np.pi)
            width2 = np.where(delta2 < 0, widths_on[j], widths_off[j])
            burst = burst + 0.5 * np.exp(-0.5 * (delta2 / width2) ** 2)
        activation[:, j] = 0.03 + 0.9 * gains[cycle_index, j] * burst
    latent = np.column_stack([np.cos(phase), np.sin(phase), speed])
    edges = (np.flatnonzero(np.diff(cycle_index)) + 1) / rate
    return activation, latent, np.column_stack([edges[:-1], edges[1:]])


def _isometric(cfg: SimulationConfig, rng: np.random.Generator, n: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activation in ramp-and-hold isometric force trials; returns (activation, latent force target,
    holds as (start, stop) times)."""
    rate = cfg.emg_rate
    target = np.zeros((n, 2))
    holds: list[tuple[float, float]] = []
    t = 0
    while t < n:
        rest, ramp = int(rng.uniform(0.4, 0.8) * rate), int(rng.uniform(0.2, 0.4) * rate)
        hold = int(rng.uniform(*cfg.hold_s) * rate)
        angle, magnitude = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0)
        goal = magnitude * np.array([np.cos(angle), np.sin(angle)])
        t += rest
        if t >= n:
            break
        up = np.linspace(0, 1, ramp)[:, None] * goal
        segment = np.vstack([up, np.repeat(goal[None], hold, 0), up[::-1]])
        stop = min(n, t + len(segment))
        target[t:stop] = segment[: stop - t]
        if t + ramp + hold <= n:
            holds.append(((t + ramp) / rate, (t + ramp + hold) / rate))
        t += len(segment)
    m = cfg.n_muscles
    directions = np.arange(m) / m * 2 * np.pi + rng.uniform(-0.2, 0.2, m)
    tuning = np.column_stack([np.cos(directions), np.sin(directions)])
    drive = np.clip(target @ tuning.T, 0, None)
    magnitude = np.linalg.norm(target, axis=1, keepdims=True)
    holding = signal.sosfiltfilt(signal.butter(2, 2.0, fs=rate, output="sos"), magnitude, axis=0)
    tremor_phase = 2 * np.pi * cfg.tremor_hz * np.arange(n)[:, None] / rate + rng.uniform(0, 2 * np.pi, m)
    tremor = cfg.tremor_amplitude * holding * (1 + np.sin(tremor_phase))
    slow = 0.1 * _smooth_noise(rng, n, rate, 0.5, (m,))
    activation = 0.04 + 0.85 * drive * (1 + slow) + 0.1 * magnitude + tremor
    return activation, target, np.asarray(holds, dtype=np.float64).reshape(-1, 2)


def _twitch(x: np.ndarray, rate: float, tau_s: float) -> np.ndarray:
    """Critically damped second-order twitch response (activation -> force), causal."""
    a = np.exp(-1.0 / (tau_s * rate))
    b = [(1 - a) ** 2]
    return signal.lfilter(b, [1, -2 * a, a * a], x, axis=0)


def _block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    n = (x.shape[0] // factor) * factor
    return x[:n].reshape(n // factor, factor, *x.shape[1:]).mean(axis=1)


def simulate_session(config: SimulationConfig | None = None) -> SimulatedSession:
    """Simulate one session; deterministic for `config.seed`."""
    cfg = config or SimulationConfig()
    if cfg.task not in ("locomotion", "isometric"):
        raise ValueError(f"SimulationConfig.task must be 'locomotion' or 'isometric', not {cfg.task!r}")
    if cfg.emg_model not in ("carrier", "motor_units"):
        raise ValueError(f"SimulationConfig.emg_model must be 'carrier' or 'motor_units', not {cfg.emg_model!r}")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6)]
    rng_act, rng_carrier, rng_noise, rng_behavior, rng_spikes, rng_misc = streams
    rate = cfg.emg_rate
    n = int(round(cfg.duration_s * rate))
    m = cfg.n_muscles

    make = _locomotion if cfg.task == "locomotion" else _isometric
    activation, latent, intervals = make(cfg, rng_act, n)
    activation = np.clip(activation, 0.0, 1.0)

    if cfg.emg_model == "motor_units":
        from .motor_units import MotorUnitPool, motor_unit_emg

        emg = motor_unit_emg(activation, rate, rng_carrier, cfg.crosstalk,
                             MotorUnitPool(n_units=cfg.motor_units_per_muscle))
    else:
        # EMG: activation-modulated band-limited carrier, mixed by cross-talk between neighbours.
        sos_band = signal.butter(4, cfg.carrier_band_hz, btype="bandpass", fs=rate, output="sos")
        carrier = signal.sosfilt(sos_band, rng_carrier.standard_normal((n, m)), axis=0)
        carrier /= carrier.std(axis=0, keepdims=True)
        sources = activation * carrier
        mix = np.eye(m)
        for j in range(m):
            mix[j, (j - 1) % m] = mix[j, (j + 1) % m] = cfg.crosstalk if m > 1 else 0.0
        emg = sources @ mix.T
    emg += cfg.sensor_noise * rng_noise.standard_normal((n, m))
    t = np.arange(n)[:, None] / rate
    emg += cfg.motion_artifact * _smooth_noise(rng_noise, n, rate, 5.0, (m,))
    emg += cfg.mains_amplitude * np.sin(2 * np.pi * cfg.mains_hz * t + rng_noise.uniform(0, 2 * np.pi, m))
    emg *= cfg.emg_amplitude_v

    # Behaviour: twitch-filtered activation mixed into joint angles or force.
    factor = int(round(rate / cfg.behavior_rate))
    if abs(rate / factor - cfg.behavior_rate) > 1e-9:
        raise ValueError("SimulationConfig.behavior_rate must divide emg_rate")
    force = _twitch(activation, rate, cfg.twitch_tau_s)
    if cfg.task == "locomotion":
        names, unit = ["hip", "knee", "ankle"], "radians"
        weights = 0.6 * rng_behavior.standard_normal((m, 3)) / np.sqrt(m)
        offsets = np.array([0.3, 0.8, 1.6])
    else:
        names, unit = ["force_x", "force_y"], "newtons"
        directions = np.arange(m) / m * 2 * np.pi
        weights = 10.0 * np.column_stack([np.cos(directions), np.sin(directions)])
        offsets = np.zeros(2)
    behavior = _block_mean(force @ weights + offsets, factor)

    # Cortex: Poisson units driven by the activation `spike_lead_s` ahead (1 ms resolution).
    spike_rate = 1000.0
    drive = _block_mean(activation, int(round(rate / spike_rate))) if rate >= spike_rate else activation
    lead = int(round(cfg.spike_lead_s * spike_rate))
    ahead = np.vstack([drive[lead:], np.repeat(drive[-1:], lead, axis=0)])
    weights_u = rng_spikes.standard_normal((m, cfg.n_units)) * (rng_spikes.random((m, cfg.n_units)) < 0.4)
    base = rng_spikes.uniform(*cfg.base_rate_hz, cfg.n_units)
    rates = base * np.exp(np.clip(1.5 * (ahead - ahead.mean(0)) @ weights_u, -5, 3))
    counts = rng_spikes.poisson(rates / spike_rate)
    spike_times = []
    for u in range(cfg.n_units):
        bins = np.repeat(np.nonzero(counts[:, u])[0], counts[:, u][counts[:, u] > 0])
        times = (bins + rng_spikes.random(bins.size)) / spike_rate
        spike_times.append(np.sort(times))

    return SimulatedSession(
        emg=emg.astype(np.float32),
        emg_rate=rate,
        activation=activation.astype(np.float32),
        muscle_names=_muscle_names(cfg.task, m),
        behavior=behavior.astype(np.float32),
        behavior_rate=cfg.behavior_rate,
        behavior_names=names,
        behavior_unit=unit,
        spike_times=spike_times,
        config=cfg,
        latent=latent.astype(np.float32),
        intervals=intervals,
    )


def true_activation_binned(session: SimulatedSession, bin_rate: float) -> np.ndarray:
    """The true activation averaged in bins of 1/bin_rate s (the model's time base)."""
    factor = session.emg_rate / bin_rate
    if abs(factor - round(factor)) > 1e-9:
        raise ValueError(f"bin rate {bin_rate} Hz does not divide the EMG rate {session.emg_rate} Hz")
    return _block_mean(session.activation, int(round(factor)))


def _add_intervals(nwbfile: object, session: SimulatedSession) -> None:
    """The task's events as TimeIntervals: `gait_cycles` (touchdown to touchdown, with the lift-off
    that ends stance) for locomotion, `holds` (constant force target) for the isometric task."""
    from pynwb.epoch import TimeIntervals

    cfg = session.config
    if session.intervals.shape[0] == 0:
        return
    if cfg.task == "locomotion":
        table = TimeIntervals(name="gait_cycles", description="Simulated gait cycles, touchdown to next "
                              f"touchdown; stance is the first {cfg.stance_fraction:.0%} of each cycle.")
        table.add_column("liftoff_time", "Time of lift-off (end of stance, start of swing), s.")
        for start, stop in session.intervals:
            table.add_interval(start_time=float(start), stop_time=float(stop),
                               liftoff_time=float(start + cfg.stance_fraction * (stop - start)))
    else:
        table = TimeIntervals(name="holds", description="Isometric holds: the force target is constant "
                              f"(tremor at {cfg.tremor_hz} Hz, amplitude {cfg.tremor_amplitude}).")
        for start, stop in session.intervals:
            table.add_interval(start_time=float(start), stop_time=float(stop))
    nwbfile.add_time_intervals(table)  # type: ignore[attr-defined]


def write_session_nwb(
    session: SimulatedSession,
    path: str | Path,
    layout: str = "electrical",
    store_truth: bool = True,
    compression: str | None = "gzip",
    timestamps: bool = False,
) -> Path:
    """Write a simulated session as an NWB file (Myomatrix-like or FALCON-like EMG layout).

    `timestamps=True` stores the per-muscle series with explicit (shared) timestamps, as FALCON
    does, instead of starting_time and rate.
    """
    import json

    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject
    from pynwb.misc import Units

    if layout not in ("electrical", "per_muscle"):
        raise ValueError(f"layout must be 'electrical' or 'per_muscle', not {layout!r}")
    cfg = session.config
    path = Path(path)
    n, m = session.emg.shape
    rate = session.emg_rate

    def wrap(data: np.ndarray, chunk_rows: int) -> object:
        if compression is None:
            return data
        chunks = (min(chunk_rows, data.shape[0]),) + tuple(data.shape[1:])
        return H5DataIO(data, compression=compression, compression_opts=1 if compression == "gzip" else None,
                        chunks=chunks)

    key = json.dumps(asdict(cfg), sort_keys=True, default=list) + layout
    nwbfile = NWBFile(
        session_description=f"Simulated {cfg.task} session: {m}-muscle EMG with known activation, "
        f"{cfg.n_units} cortical units and behaviour (nwb-lfads-emg simulator).",
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, "nwb-lfads-emg-sim:" + key)),
        session_start_time=datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc),
        experimenter=["Simulator, NWB LFADS EMG"],
        lab="nwb-lfads-emg",
        institution="nwb-lfads-emg simulator",
        experiment_description="Ground-truth simulation: " + json.dumps(asdict(cfg), default=list),
        session_id=f"sim-{cfg.task}-seed{cfg.seed}",
        keywords=["EMG", "muscle activation", "simulation", "motor cortex"],
    )
    nwbfile.subject = Subject(
        subject_id=f"sim{cfg.seed:03d}",
        species="Rattus norvegicus" if cfg.task == "locomotion" else "Macaca mulatta",
        sex="M",
        age="P90D" if cfg.task == "locomotion" else "P6Y",
        description="Simulated subject.",
    )

    if layout == "electrical":
        device = nwbfile.create_device(name="EMGAmplifier", description="Simulated bipolar EMG amplifier.")
        group = nwbfile.create_electrode_group(
            name="EMG",
            description="Bipolar intramuscular EMG electrodes, one pair per muscle.",
            location="hindlimb" if cfg.task == "locomotion" else "forearm",
            device=device,
        )
        for name in session.muscle_names:
            nwbfile.add_electrode(location=name, group=group)
        region = nwbfile.create_electrode_table_region(list(range(m)), "one bipolar EMG channel per muscle")
        conversion = cfg.emg_amplitude_v * 20 / 32767  # int16 counts -> volts, +-20 x the amplitude
        counts = np.clip(np.round(session.emg / conversion), -32767, 32767).astype(np.int16)
        nwbfile.add_acquisition(
            ElectricalSeries(
                name="EMG",
                description="Raw EMG (simulated), one bipolar channel per muscle; muscle in electrodes.location.",
                data=wrap(counts, max(1, int(rate))),
                electrodes=region,
                rate=rate,
                starting_time=0.0,
                conversion=conversion,
                filtering="none (simulated raw signal)",
            )
        )
    else:
        container = BehavioralTimeSeries(name="preprocessed_emg")
        first = None
        for j, name in enumerate(session.muscle_names):
            if timestamps:
                timing = {"timestamps": first if first is not None else wrap(np.arange(n) / rate, int(rate))}
            else:
                timing = {"rate": rate, "starting_time": 0.0}
            ts = TimeSeries(
                name=name,
                description=f"EMG of muscle {name} (simulated raw signal).",
                data=wrap(session.emg[:, j], max(1, int(rate))),
                unit="volts",
                **timing,
            )
            if first is None:
                first = ts
            container.add_timeseries(ts)
        nwbfile.add_acquisition(container)

    behavior_module = nwbfile.create_processing_module("behavior", "Behaviour produced by the muscles.")
    behavior_module.add(
        TimeSeries(
            name="joint_angles" if cfg.task == "locomotion" else "force",
            description="Behaviour: " + ", ".join(session.behavior_names) + " (columns in this order).",
            data=session.behavior,
            unit=session.behavior_unit,
            rate=session.behavior_rate,
            starting_time=0.0,
        )
    )

    _add_intervals(nwbfile, session)

    units = Units(name="units", description="Simulated motor-cortex units.", resolution=1e-3)
    for times in session.spike_times:
        units.add_unit(spike_times=times)
    nwbfile.units = units

    if store_truth:
        truth_rate = 1000.0 if rate % 1000 == 0 else rate
        truth = true_activation_binned(session, truth_rate)
        truth_module = nwbfile.create_processing_module(
            "ground_truth", "Known ground truth of the simulation (not available in real recordings)."
        )
        truth_module.add(
            TimeSeries(
                name="true_activation",
                description="True muscle activation in [0, 1], columns in the order: "
                + ", ".join(session.muscle_names),
                data=wrap(truth.astype(np.float32), 1000),
                unit="n.a.",
                rate=truth_rate,
                starting_time=0.0,
            )
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path
