"""The whole job in a few calls: read -> preprocess -> fit (LFADS or AutoLFADS) -> infer -> write.

This module only wires the stages together; each stage lives in its own module (sources,
preprocess, baselines, training, writeback) and can be used alone. The CLI is a thin shell over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NwbLfadsEmgError, TrainingError, WriteBackError
from .files import (
    FileStamp,
    check_free_space,
    check_output_dir,
    check_output_file,
    check_writable_file,
    remove_stale_partials,
    signals_interrupt,
    target_lock,
)
from .preprocess import (
    Binned,
    PreprocessConfig,
    SpilledSegment,
    bin_like,
    bin_samples_for,
    decide_input,
    preprocess_chunks,
    preprocess_segments,
    rectify_highpass,
    resolved_config,
)
from .writeback import (
    ActivationEstimate,
    SessionResults,
    write_into_copy,
    write_new_file,
)

JOB_FILE = "job.json"
log = logging.getLogger("nwb_lfads_emg")


@dataclass
class PBTSettings:
    """AutoLFADS (population-based training) settings of a job; `fit_pbt`'s arguments beyond the data.

    `population` None: sized for the compute (`training.pbt.default_population`: 4-6 on CPU, 20+ on
    CUDA; the choice is recorded in the history). `interval` (epochs per generation) defaults to
    max_epochs // 4 (at most 25); the number of generations follows from the job's epoch limit.
    `search_space` maps a hyper-parameter to [low, high] (or null to drop it) over AutoLFADS' space.
    """

    population: int | None = None
    ray_address: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    interval: int | None = None
    burn_in: int | None = None
    patience_generations: int = 4
    min_improvement: float = 5e-4
    quantile_fraction: float = 0.25
    storage_path: str | None = None
    shared_data_path: str | None = None
    resume: bool = True
    start_from_config: bool = True
    search_space: dict[str, list[float] | None] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], what: str = "PBT settings") -> PBTSettings:
        """Settings from a plain dict (a config file or a recorded job); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TrainingError(f"{what}: unknown setting(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(names))})")
        return cls(**values)


# PBT settings that were top-level JobConfig fields in earlier records (job.json)
_LEGACY_PBT_KEYS = {"population": "population", "ray_address": "ray_address",
                    "gpus_per_trial": "gpus_per_trial", "pbt_interval": "interval"}


def read_pbt_settings(path: str | Path | None, overrides: dict[str, Any] | None = None) -> PBTSettings:
    """PBT settings from a JSON file (or the defaults when `path` is None), then `overrides` applied."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = json.loads(Path(path).read_text())
        except OSError as exc:
            raise TrainingError(f"{path}: cannot read the PBT settings (--pbt-config): {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}: not valid JSON (--pbt-config): {exc.msg} at line {exc.lineno}") from None
        if not isinstance(values, dict):
            raise TrainingError(f"{path}: expected a JSON object of PBT settings (--pbt-config)")
    return PBTSettings.from_dict({**values, **(overrides or {})}, what=f"{path or 'PBT settings'} (--pbt-config)")


@dataclass
class JobConfig:
    """One run's settings beyond the model's own (serialised whole into the provenance record)."""

    preset: str = "auto"  # "auto": sizes, bins, segments and epochs from the data (lfads.auto, timescales)
    seed: int = 0
    device: str = "auto"
    max_epochs: int | None = None
    pbt: bool = False
    pbt_settings: PBTSettings = field(default_factory=PBTSettings)
    n_posterior_samples: int | None = None  # None: training.inference.POSTERIOR_SAMPLES
    lowpass_cutoff_hz: float | None = None  # None: chosen per session by held-out prediction (baselines.tuning)
    bayes: dict[str, Any] = field(default_factory=dict)  # diffusion/jump not given: maximum marginal likelihood
    chunk_s: float = 10.0
    """Seconds of raw EMG per read, at most (the one pass's memory: 10 s x 32 ch at 2 kHz = 5 MB per float64
    copy); fast, wide arrays read fewer seconds, `MAX_CHUNK_VALUES` samples x channels at most."""
    progress: bool = True
    irregular: str = "raise"
    """Irregular timestamps: "raise" or "resample" onto a uniform grid (`--irregular`)."""
    on_nonfinite: str = "raise"
    """NaN/Inf samples: "raise" or "mask" them to 0 (`--on-nonfinite`)."""
    drop_dead: bool = False
    """Leave constant (dead) channels out instead of refusing them (`--drop-dead`)."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    lfads_overrides: dict[str, Any] = field(default_factory=dict)
    bin_ms: float | None = None  # the user's bin width (None: auto preset from the data, others 5 ms)
    segment_ms: float | None = None  # the user's segment length (None: auto preset from the data, others the preset's)
    time_scales: dict[str, Any] = field(default_factory=dict)  # what `choose_job_time_scales` chose and why

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobConfig:
        """A job from its recorded form (`job.json`), nested settings included."""
        values = dict(values)
        pbt = dict(values.pop("pbt_settings", None) or {})
        for old, new in _LEGACY_PBT_KEYS.items():
            if old in values:
                pbt.setdefault(new, values.pop(old))
        prep = values.pop("preprocess", None)
        job = cls(**values, pbt_settings=PBTSettings.from_dict(pbt))
        if prep is not None:
            job.preprocess = PreprocessConfig(**prep)
        return job


@dataclass
class EMGInput:
    """The chosen EMG of one source, preprocessed for the model, with where it came from."""

    binned: Binned
    series_path: str
    muscles: list[str]
    electrode_indices: list[int] | None
    file_identifier: str
    location: str
    dandi_url: str | None
    is_remote: bool
    segments: list[int] | None = None
    """Indices of the reader's segments (trials) that were used, when the series has gaps."""
    streams: Any = None
    """What the baselines need of the raw series, gathered in the same pass (`baselines.streaming`), if asked."""


#: Segments (trials) shorter than this many samples are left out (a filter needs a few samples).
MIN_SEGMENT_SAMPLES = 32


def _long_enough(segment: tuple[int, int], n_bin: int) -> bool:
    """Whether a segment (first, end sample) holds a bin of `n_bin` samples and `MIN_SEGMENT_SAMPLES`."""
    return segment[1] - segment[0] >= max(n_bin, MIN_SEGMENT_SAMPLES)


#: Samples x channels of one read of the pass, at most (32 MB as float64; 30 kHz x 32 ch: 4.4 s).
MAX_CHUNK_VALUES = 1 << 22


def read(source: str | Path, emg: str | None = None, cache_dir: str | None = None,
         config: PreprocessConfig | None = None, chunk_s: float | None = None, keep_open: bool = False,
         *, irregular: str = "raise", on_nonfinite: str = "raise", drop_dead: bool = False,
         baselines: JobConfig | None = None, spill_dir: str | Path | None = None,
         time_scales: JobConfig | None = None) -> tuple[EMGInput, Any]:
    """Open a local file or DANDI asset, pick the EMG series, decide what it holds (raw EMG or an
    envelope, `decide_input`) and preprocess it chunk by chunk, each contiguous segment on its own.

    With `baselines` (the job) the same pass also gathers what the baselines need (`EMGInput.streams`,
    for `finish_baselines`; the low-pass input spills to an unlinked file in `spill_dir`), so the raw
    series is read once and never held whole. With `time_scales` (the job; its `preprocess` is used, not
    `config`) the job's bin width and segment length are settled too (`choose_job_time_scales`'s rule), from
    the same pass: the auto preset's probe bins (2 ms) are kept in an unlinked file in `spill_dir` and, when
    the bin width is chosen from them, the model's input is averaged from them (every width the choice can
    give is a whole number of probe bins). Returns the preprocessed input and (opened source, reader) when
    `keep_open`, else None.
    """
    from .sources import EMGReader, open_source

    chunk_s = JobConfig.chunk_s if chunk_s is None else chunk_s
    opened = open_source(str(source), cache_dir=cache_dir)
    tap = probe = None
    try:
        reader = EMGReader(opened, emg, on_nonfinite=on_nonfinite, drop_dead=drop_dead, irregular=irregular)
        rate = float(reader.rate)
        probe_n = None
        if time_scales is not None:
            if not _time_scales_given(time_scales):  # (settles job.preprocess's bin first)
                probe_n = bin_samples_for(rate, probe_bin_ms(rate))
            config = time_scales.preprocess
        config = config or PreprocessConfig()
        deferred = probe_n is not None and config.bin_ms is None  # the model's bin is chosen from the probe
        texts, head = reader.texts(), reader.head()
        pass_config = replace(config, bin_ms=probe_n * 1000.0 / rate) if deferred else config
        decision = decide_input(rate, pass_config, texts, head)
        cfg = resolved_config(pass_config, decision)
        used: list[int] | None = None
        n_bin = bin_samples_for(rate, cfg.bin_ms)
        chunk_s = min(chunk_s, MAX_CHUNK_VALUES / (rate * max(1, len(reader.muscles))))
        if reader.timestamped:
            used = [k for k, segment in enumerate(reader.segments) if _long_enough(segment, n_bin)]
        if baselines is not None:
            check_lowpass(baselines, rate)  # refused before the pass reads anything
            tap = baseline_streams(reader, n_bin, decision.kind == "envelope", used, baselines, spill_dir)
        if probe_n is not None:
            from .preprocess import BinSpill

            probe = BinSpill(probe_n, len(reader.muscles), spill_dir)
        if reader.timestamped:
            assert used is not None
            chunks = [reader.iter_chunks(chunk_s, segment=k) for k in used]
            starts = [reader.segment_times(k)[0] for k in used]
        else:
            chunks, starts = [reader.iter_chunks(chunk_s)], [reader.starting_time]
        if deferred:
            from .preprocess import spill_segments

            assert probe is not None and time_scales is not None
            spill_segments(chunks, rate, cfg, probe, starting_times=starts, muscles=reader.muscles, tap=tap)
            _choose_from_probe(probe, cfg, list(reader.muscles), rate, time_scales)
            decision = decide_input(rate, time_scales.preprocess, texts, head)  # as if read at the chosen bin
            cfg = resolved_config(time_scales.preprocess, decision)
            n_bin = bin_samples_for(rate, cfg.bin_ms)
            keep = None
            if used is not None:
                keep = [i for i, k in enumerate(used) if _long_enough(reader.segments[k], n_bin)]
                used = [used[i] for i in keep]
            if tap is not None:
                tap.rebin(n_bin, keep)
            binned = probe.rebinned(n_bin, rate, cfg, reader.muscles, segmented=reader.timestamped, keep=keep)
        elif reader.timestamped:
            binned = preprocess_segments(chunks, rate, cfg, starting_times=starts, muscles=reader.muscles, tap=tap,
                                         probe=probe)
        else:
            binned = preprocess_chunks(chunks[0], rate, cfg, starting_time=starts[0], muscles=reader.muscles,
                                       tap=tap, probe=probe)
        if probe is not None and not deferred:
            assert time_scales is not None
            probe.segments = [SpilledSegment(0, probe.n_rows, float(binned.starting_time), None)]
            _choose_from_probe(probe, cfg, list(reader.muscles), rate, time_scales)  # the segment length
        if used is not None:
            left_out = len(reader.segments) - len(used)
            if left_out:
                log.warning(f"{opened.location}: {reader.series_path}: {left_out} of {len(reader.segments)} "
                            f"segments are shorter than {max(n_bin, MIN_SEGMENT_SAMPLES)} samples; left out")
        binned.decision = decision
        emg_input = EMGInput(
            binned=binned,
            series_path=reader.series_path,
            muscles=list(reader.muscles),
            electrode_indices=reader.electrode_indices,
            file_identifier=str(opened.nwbfile.identifier),
            location=str(opened.location),
            dandi_url=opened.dandi_url,
            is_remote=opened.is_remote,
            segments=used,
            streams=tap,
        )
    except BaseException:
        opened.close()
        if tap is not None:
            tap.close()
        raise
    finally:
        if probe is not None:
            probe.close()
    if not keep_open:
        opened.close()
        return emg_input, None
    return emg_input, (opened, reader)


def baseline_streams(reader: Any, bin_samples: int, envelope: bool, used: list[int] | None, job: JobConfig,
                     spill_dir: str | Path | None) -> Any:
    """The collector of the baselines' inputs for one read pass (`baselines.streaming.BaselineStreams`)."""
    from .baselines.streaming import LOWPASS_MIN_RATE, BaselineStreams

    total = reader.n_samples if used is None else sum(b - a for a, b in (reader.segments[k] for k in used))
    lowpass_rate = max(LOWPASS_MIN_RATE, 4.0 * float(job.lowpass_cutoff_hz or 0.0))  # a given cutoff: far below Nyquist
    return BaselineStreams(reader.rate, len(reader.muscles), bin_samples, total, envelope=envelope,
                           bayes=job.bayes, spill_dir=spill_dir, lowpass_rate=lowpass_rate)


def choose_job_time_scales(source: str | Path, emg: str | None, cache_dir: str | None, job: JobConfig) -> None:
    """Settle the job's bin width and segment length (into `job.preprocess`, `job.segment_ms`, `job.time_scales`).

    Values the user gave (`job.bin_ms`, `job.segment_ms`) are kept. With the auto preset the others
    come from the recording, binned at fine (2 ms) probe bins: when neither is given, by held-out
    prediction of a few candidates' short runs on a common time base (`timescales.select_time_scales`;
    `--max-epochs` caps those runs too), else (or when the recording is too short for two candidates)
    from its envelope's bandwidth (`timescales.choose_time_scales`). Other presets keep their own
    segments and 5 ms bins. `run` and `fit` settle them in their one read pass (`read(..., time_scales=job)`);
    this reads the source for nothing else.
    """
    if _time_scales_given(job):
        return
    read(source, emg, cache_dir, job.preprocess, job.chunk_s, time_scales=job, **_read_options(job))


def _time_scales_given(job: JobConfig) -> bool:
    """Settle the time scales that need no data (given, or another preset's); True when none is left to choose."""
    if job.bin_ms is not None:
        job.preprocess = replace(job.preprocess, bin_ms=float(job.bin_ms))
    elif job.preset != "auto":
        job.preprocess = replace(job.preprocess, bin_ms=None)  # 5 ms, or the native interval of an envelope
    if job.preset != "auto" or (job.bin_ms is not None and job.segment_ms is not None):
        job.time_scales = {"bin_ms": job.preprocess.bin_ms, "segment_ms": job.segment_ms, "chosen_by": "given"}
        return True
    return False


def probe_bin_ms(rate: float) -> float:
    """The bin of the time-scale probe: 2 ms, or the input's own sample interval when that is coarser."""
    return max(2.0, 1000.0 / float(rate))


def _probe_signal(probe: Any, config: PreprocessConfig, muscles: list[str], rows: int | None = None) -> np.ndarray:
    """The probe's first `rows` bins (all when None) as the time-scale choice reads them: rectified EMG in raw
    units, as the model's input at the probe's bins, unclipped (its float32 rounding and floor included)."""
    stats = probe.stats(replace(config, clip_percentile=None), muscles)
    x = np.minimum(probe.rows(0, rows), stats.clip[None, :]) / stats.scale[None, :]
    data = np.maximum(x, config.positive_floor).astype(config.dtype)
    return np.asarray(data, dtype=np.float64) * np.asarray(stats.scale)[None, :]


def _choose_from_probe(probe: Any, config: PreprocessConfig, muscles: list[str], rate: float, job: JobConfig) -> None:
    """`choose_job_time_scales`'s choice from the probe bins of the read pass (`preprocess.BinSpill`)."""
    from .timescales import SELECT_MAX_SECONDS, choose_time_scales, select_time_scales

    bin_rate = rate / probe.n
    probe_ms = 1000.0 / bin_rate
    selected = None
    if job.bin_ms is None and job.segment_ms is None and len(probe.segments) == 1:
        head = _probe_signal(probe, config, muscles, int(SELECT_MAX_SECONDS * 1000.0 / probe_ms))
        selected = select_time_scales(head, probe_ms, job.preprocess, _device_name(job), job.seed,
                                      max_epochs=job.max_epochs)
    if selected is not None:
        chosen = selected | {"chosen_by": "data", "method": "held-out prediction", "raw_rate": rate,
                             "probe_bin_ms": probe_ms, "duration_s": probe.n_rows * probe_ms / 1000.0}
    else:
        chosen = choose_time_scales(_probe_signal(probe, config, muscles), bin_rate).to_dict() | {
            "chosen_by": "data", "method": "envelope bandwidth", "raw_rate": rate, "probe_bin_ms": probe_ms}
    chosen["bin_ms"] = max(float(chosen["bin_ms"]), probe_ms)  # never finer than the input's own samples
    if job.bin_ms is not None:
        chosen["bin_ms"], chosen["bin_ms_given"] = float(job.bin_ms), True
    if job.segment_ms is not None:
        chosen["segment_ms"], chosen["segment_ms_given"] = float(job.segment_ms), True
    job.preprocess = replace(job.preprocess, bin_ms=float(chosen["bin_ms"]))
    job.segment_ms = float(chosen["segment_ms"])
    job.time_scales = chosen


def check_job(job: JobConfig, run_dir: str | Path | None = None) -> None:
    """Refuse, before any data is read, settings that cannot give a trained model (one line naming the flag)."""
    if job.max_epochs is not None and int(job.max_epochs) < 1:
        raise TrainingError(f"--max-epochs {job.max_epochs}: must be at least 1 (with no training the results "
                            "would be an untrained model labelled AutoLFADS)")
    population = job.pbt_settings.population
    if job.pbt and population is not None and int(population) < 2:
        raise TrainingError(f"--population {population}: population-based training needs at least 2 members")
    if run_dir is not None:
        check_output_dir(run_dir, "--run-dir")


def _read_options(job: JobConfig) -> dict[str, Any]:
    return {"irregular": job.irregular, "on_nonfinite": job.on_nonfinite, "drop_dead": job.drop_dead}


def lfads_config(job: JobConfig, n_bins: int | None = None, n_channels: int | None = None,
                 bin_ms: float | None = None) -> Any:
    """The LFADS configuration of a job: its preset (auto: sized from the data) with the job's overrides."""
    from .lfads.config import preset

    check_job(job)
    if job.preset == "auto":
        from .lfads.auto import auto_config

        if n_bins is None or n_channels is None or bin_ms is None:
            raise TrainingError("the auto preset needs the data's size and bin width")
        config = auto_config(n_bins, n_channels, bin_ms, job.segment_ms or 100 * bin_ms, _device_name(job))
    else:
        config = preset(job.preset)
        if job.segment_ms is not None and bin_ms is not None:
            config.seg_len = max(10, int(round(job.segment_ms / bin_ms)))
            config.seg_overlap = config.seg_len // 2
    overrides = dict(job.lfads_overrides)
    if job.max_epochs is not None:
        overrides["max_epochs"] = job.max_epochs
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TrainingError(f"LFADS config: unknown setting {key!r}")
        setattr(config, key, value)
    return config


def fit(emg_input: EMGInput, run_dir: str | Path, job: JobConfig | None = None) -> Any:
    """Train one LFADS model (or an AutoLFADS population with `job.pbt`) on the preprocessed EMG."""
    job = job or JobConfig()
    run_dir = Path(run_dir)
    bin_ms = 1000.0 / float(emg_input.binned.bin_rate)
    config = lfads_config(job, *emg_input.binned.data.shape, bin_ms=bin_ms)
    config.bin_ms = bin_ms  # ms settings (temporal shift) -> bins
    data = emg_input.binned.data
    breaks = [a for a, _ in emg_input.binned.segment_ranges[1:]]  # trials: no training window spans a gap
    if job.pbt:
        from .training.pbt import fit_pbt

        result = fit_pbt(data, config, run_dir, breaks=breaks, **pbt_arguments(job, config))
    else:
        from .training.trainer import fit as fit_single

        result = fit_single(data, config, run_dir, device=job.device, seed=job.seed, progress=job.progress,
                            breaks=breaks)
    record = {
        "job": _job_dict(job),
        "muscles": emg_input.muscles,
        "bin_rate": emg_input.binned.bin_rate,
        "source_file_identifier": emg_input.file_identifier,
        "source_series_path": emg_input.series_path,
        "source_location": emg_input.location,
        "source_url": emg_input.dandi_url,
        "weights_sha256": result.weights_sha256,
        "best_val_loss": float(result.best_val_loss),
        "model_dir": str(_model_dir(result, run_dir)),
        "metrics": result.metrics,
        "pbt_history": getattr(result, "pbt_history", None),
        "device": str(result.device),
    }
    (run_dir / JOB_FILE).write_text(json.dumps(record, indent=1, default=str))
    return result


def _device_name(job: JobConfig) -> str:
    """"cuda" or "cpu": where training will run."""
    if job.device != "auto":
        return job.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pbt_arguments(job: JobConfig, config: Any) -> dict[str, Any]:
    """`fit_pbt`'s keyword arguments beyond the data and configuration, from the job's PBT settings."""
    from .training.search_space import autolfads_search_space

    p = job.pbt_settings
    interval, generations = pbt_schedule(job, config.max_epochs)
    try:
        space = autolfads_search_space({k: None if v is None else tuple(v) for k, v in p.search_space.items()})
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"PBT search space {p.search_space} (--pbt-config): {exc}") from None
    return {"population": p.population, "ray_address": p.ray_address, "gpus_per_trial": _gpus_per_trial(job),
            "cpus_per_trial": p.cpus_per_trial, "max_generations": generations, "perturbation_interval": interval,
            "burn_in": p.burn_in, "seed": job.seed, "progress": job.progress, "shared_data_path": p.shared_data_path,
            "search_space": space, "patience_generations": p.patience_generations,
            "min_improvement": p.min_improvement, "quantile_fraction": p.quantile_fraction,
            "storage_path": p.storage_path, "resume": p.resume, "start_from_config": p.start_from_config}


def pbt_schedule(job: JobConfig, max_epochs: int) -> tuple[int, int]:
    """(epochs between PBT selections, number of generations) so a search trains at most `max_epochs`."""
    interval = job.pbt_settings.interval or max(1, min(25, max_epochs // 4))
    return interval, max(1, max_epochs // interval)


def _gpus_per_trial(job: JobConfig) -> float:
    """GPU share of each PBT member: as given, else none on CPU and 1/population (at most 10 per GPU) on CUDA."""
    if job.pbt_settings.gpus_per_trial is not None:
        return float(job.pbt_settings.gpus_per_trial)
    if job.device == "cpu":
        return 0.0
    import torch

    if not torch.cuda.is_available():
        if job.device == "cuda":
            raise TrainingError("--device cuda: no CUDA device is visible to torch on this machine")
        return 0.0
    return 1.0 / min(10, max(1, job.pbt_settings.population or 20))


def _model_dir(result: Any, run_dir: Path) -> Path:
    """Where the exported best weights live (the run dir, or run_dir/best after PBT)."""
    return Path(getattr(result, "model_dir", None) or (run_dir / "best" if (run_dir / "best").is_dir() else run_dir))


def _job_dict(job: JobConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(job), default=str))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The record `fit` left in a run directory (raises a one-line error when there is none)."""
    path = Path(run_dir) / JOB_FILE
    if not path.is_file():
        raise TrainingError(f"{run_dir}: no trained model here ({JOB_FILE} missing); run `nwb-lfads-emg fit` first")
    return json.loads(path.read_text())


def infer(run_dir: str | Path, emg_input: EMGInput, n_samples: int | None = None, device: str = "auto",
          seed: int = 0, allocate: Any = None) -> Any:
    """Posterior means, spreads, factors and inferred inputs of a trained model on preprocessed EMG
    (`n_samples` posterior samples; None: `training.inference.POSTERIOR_SAMPLES`), into outputs made by
    `allocate` (`training.inference.Allocate`; e.g. an `EstimateStore`'s datasets) or arrays in memory."""
    from .training.inference import infer as infer_model
    from .training.inference import load_model
    from .training.trainer import set_torch_threads

    record = load_run(run_dir)
    if list(record["muscles"]) != list(emg_input.muscles):
        raise TrainingError(
            f"{emg_input.location}: {emg_input.series_path}: muscles {emg_input.muscles} differ from the "
            f"model's {record['muscles']}"
        )
    if abs(float(record["bin_rate"]) - emg_input.binned.bin_rate) > 1e-6:
        raise TrainingError(
            f"{emg_input.location}: bin rate {emg_input.binned.bin_rate} Hz differs from the model's "
            f"{record['bin_rate']} Hz"
        )
    model, config = load_model(record["model_dir"])
    set_torch_threads(config.num_threads)
    data = emg_input.binned.data
    ranges = emg_input.binned.segment_ranges
    if len(ranges) == 1:
        return infer_model(model, data, config, n_samples=n_samples, device=device, seed=seed, allocate=allocate)
    parts = []
    for a, b in ranges:  # each segment (trial) on its own; one shorter than a model window is edge-padded
        seg = data[a:b]
        if seg.shape[0] < config.seg_len:
            seg = np.pad(seg, ((0, config.seg_len - seg.shape[0]), (0, 0)), mode="edge")
        parts.append((b - a, infer_model(model, seg, config, n_samples=n_samples, device=device, seed=seed)))
    first = parts[0][1]
    joined = {key: np.concatenate([getattr(inf, key)[:n] for n, inf in parts])
              for key in ("rates", "rates_std", "factors", "inferred_inputs")}
    if allocate is not None:  # segments (trials) merged in memory, then stored like the continuous case
        for key, name in _INFERENCE_FIELDS.items():
            out = allocate(name, joined[key].shape)
            out[:] = joined[key]
            joined[key] = out
    return type(first)(**joined, n_samples=first.n_samples)


def baseline_estimates(emg_da: Any, binned: Binned, job: JobConfig) -> list[ActivationEstimate]:
    """Low-pass envelope and Bayesian filter of the rectified EMG (or of the envelope itself), on the
    model's bins and scale. `emg_da` is the EMG as a DataArray, or a list of them, one per segment.

    The whole-array reference of `finish_baselines` (which `run` and `annotate` use): it holds the raw
    series and float64 copies of it, so it suits short recordings only."""
    from .baselines.bayes import bayes_filter
    from .baselines.lowpass import lowpass_envelope
    from .baselines.tuning import select_cutoff_cv, tune_bayes

    pieces = emg_da if isinstance(emg_da, (list, tuple)) else [emg_da]
    ranges = binned.segment_ranges
    if len(pieces) != len(ranges):
        raise TrainingError(f"baselines: {len(pieces)} EMG segments for {len(ranges)} binned segments")
    rate = binned.raw_rate or float(1.0 / float(pieces[0].coords["time"].values[1] - pieces[0].coords["time"].values[0]))
    check_lowpass(job, rate)
    envelope = binned.decision is not None and binned.decision.kind == "envelope"
    rectified_pieces = []
    for da in pieces:
        rectified = rectify_highpass(np.asarray(da.values), rate, binned.config)
        rectified_pieces.append(np.maximum(rectified, 0.0) if envelope else rectified)
    scale = binned.scale[None, :]
    scale = binned.scale[None, :]
    pooled = np.concatenate(rectified_pieces) if len(rectified_pieces) > 1 else rectified_pieces[0]
    tuned = job.lowpass_cutoff_hz is None
    cutoff = select_cutoff_cv(pooled, rate) if tuned else float(job.lowpass_cutoff_hz)  # type: ignore[arg-type]
    bayes_params = dict(job.bayes)
    if "diffusion" not in bayes_params and "jump" not in bayes_params:
        bayes_params.update(tune_bayes(pooled, rate) | {"chosen_by": "maximum marginal likelihood"})
    chosen = bayes_params.pop("chosen_by", "given")
    lows, bayes = [], []
    for rectified, (a, b) in zip(rectified_pieces, ranges, strict=True):
        n = b - a
        lows.append(bin_like(lowpass_envelope(rectified, rate, cutoff), rate, binned.bin_rate, n))
        bayes.append(bin_like(bayes_filter(rectified, rate, **bayes_params), rate, binned.bin_rate, n))
    lowpass = np.concatenate(lows) / scale
    bayes_est = np.concatenate(bayes) / scale
    return [
        ActivationEstimate("LowPass", lowpass.astype(np.float32),
                           parameters={"cutoff_hz": cutoff, "order": 4, "zero_phase": True,
                                       "cutoff_chosen_by": "held-out prediction of rectified EMG" if tuned
                                       else "given (--lowpass-hz)"}),
        ActivationEstimate("BayesianFilter", bayes_est.astype(np.float32),
                           parameters={"likelihood": "laplace", **bayes_params, "parameters_chosen_by": chosen}),
    ]


def finish_baselines(emg_input: EMGInput, job: JobConfig, allocate: Any = None) -> list[ActivationEstimate]:
    """Low-pass envelope and Bayesian filter from what the read pass gathered (`read(..., baselines=job)`), on
    the model's bins and scale, segment by segment, into outputs made by `allocate` ((name, shape) -> array-like
    filled by row slices; default: arrays in memory); memory follows the bins, not the raw series.

    Same parameters and estimates as `baseline_estimates` on the whole raw series (kept as the reference),
    to float32 rounding, except that input faster than 2 kHz is low-passed after averaging to >= 2 kHz, and
    that on recordings over 10 minutes the low-pass cutoff is chosen on 10 minutes spread over the recording.
    """
    streams = emg_input.streams
    binned = emg_input.binned
    if streams is None:
        raise TrainingError(f"{emg_input.location}: baselines: the input was read without baselines=job")
    try:
        check_lowpass(job, binned.raw_rate)
        ranges = binned.segment_ranges
        if len(streams.segments) != len(ranges):
            raise TrainingError(f"baselines: {len(streams.segments)} EMG segments for {len(ranges)} binned segments")
        tuned = job.lowpass_cutoff_hz is None
        cutoff = streams.choose_cutoff() if tuned else float(job.lowpass_cutoff_hz)  # type: ignore[arg-type]
        bayes_params = dict(job.bayes)
        if "diffusion" not in bayes_params and "jump" not in bayes_params:
            bayes_params.update(streams.tune_bayes() | {"chosen_by": "maximum marginal likelihood"})
        chosen = bayes_params.pop("chosen_by", "given")
        allocate = allocate or (lambda name, shape: np.empty(shape, dtype=np.float32))
        lowpass = allocate("LowPass", binned.data.shape)
        bayes_est = allocate("BayesianFilter", binned.data.shape)
        for k, (a, b) in enumerate(ranges):  # on the model's scale, block by block
            streams.lowpass_bins(k, _Rows(lowpass, a, b), cutoff, binned.scale)
            streams.bayes_bins(k, _Rows(bayes_est, a, b), bayes_params, binned.scale)
    finally:
        streams.close()
    return [
        ActivationEstimate("LowPass", lowpass,
                           parameters={"cutoff_hz": cutoff, "order": 4, "zero_phase": True,
                                       "cutoff_chosen_by": "held-out prediction of rectified EMG" if tuned
                                       else "given (--lowpass-hz)",
                                       "filtered_at_hz": binned.raw_rate / streams.d}),
        ActivationEstimate("BayesianFilter", bayes_est,
                           parameters={"likelihood": "laplace", **bayes_params, "parameters_chosen_by": chosen}),
    ]


class _Rows:
    """Rows [a, b) of an output (array or on-disk dataset) written by slices relative to a (never read)."""

    def __init__(self, target: Any, a: int, b: int) -> None:
        self.target, self.a = target, a
        self.shape = (b - a, *target.shape[1:])

    def __setitem__(self, key: slice, value: np.ndarray) -> None:
        start, stop, _ = key.indices(self.shape[0])
        self.target[self.a + start: self.a + stop] = value


def check_lowpass(job: JobConfig, rate: float) -> None:
    """Refuse a low-pass baseline cutoff at or above the input's Nyquist frequency, naming --lowpass-hz."""
    if job.lowpass_cutoff_hz is None:  # chosen per session below the Nyquist frequency
        return
    if not 0 < job.lowpass_cutoff_hz < rate / 2:
        raise NwbLfadsEmgError(f"--lowpass-hz {job.lowpass_cutoff_hz:g}: must lie in (0, {rate / 2:g}) Hz for input "
                               f"sampled at {rate:g} Hz")


def software_versions() -> dict[str, str]:
    """Versions of the packages that made an estimate (for the provenance record)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("nwb-lfads-emg", "torch", "numpy", "scipy", "pynwb", "hdmf", "ray", "dandi", "h5py"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def build_results(emg_input: EMGInput, record: dict[str, Any], inference: Any,
                  baselines: list[ActivationEstimate]) -> SessionResults:
    """Gather the estimates and the provenance record into what the write-back stores."""
    binned = emg_input.binned
    preprocessing = asdict(binned.config) | {
        "bin_rate": binned.bin_rate,
        "bin_samples": binned.bin_samples,
        "raw_rate": binned.raw_rate,
        "scale": np.asarray(binned.scale).tolist(),
        "clip": None if binned.clip is None else np.asarray(binned.clip).tolist(),
        "input_decision": None if binned.decision is None else binned.decision.as_dict(),
        "segments": None if binned.segments is None else [list(r) for r in binned.segments],
        "time_base": "input timestamps" if binned.timestamps is not None else "rate",
    }
    job = record["job"]
    provenance = {
        "config": {"preset": job["preset"], "job": job, "lfads": _lfads_config_dict(record)},
        "preprocessing": preprocessing,
        "training_metrics": {"best_val_loss": record["best_val_loss"], "device": record["device"],
                             "per_epoch": record["metrics"]},
        "software_versions": software_versions(),
        "random_seed": int(job["seed"]),
        "weights_sha256": record["weights_sha256"],
        "source_file_identifier": record["source_file_identifier"],
        "source_series_path": record["source_series_path"],
    }
    if record.get("source_url"):
        provenance["source_url"] = record["source_url"]
    if record.get("pbt_history"):
        provenance["pbt_history"] = record["pbt_history"]
    input_source = {"input_file_identifier": emg_input.file_identifier, "input_series_path": emg_input.series_path,
                    "input_location": shareable_location(emg_input.location), "input_url": emg_input.dandi_url}
    trained_on = {"trained_on": record.get("source_url") or shareable_location(record.get("source_location") or ""),
                  "trained_on_file_identifier": record["source_file_identifier"],
                  "trained_on_series_path": record["source_series_path"]}
    autolfads = ActivationEstimate("AutoLFADS", _float32(inference.rates),
                                   uncertainty=_float32(inference.rates_std),
                                   parameters={"n_posterior_samples": int(inference.n_samples), **trained_on,
                                               **input_source})
    for estimate in baselines:
        estimate.parameters.update(input_source)
    provenance = shareable(provenance)
    for estimate in (autolfads, *baselines):
        estimate.parameters = shareable(estimate.parameters)
    return SessionResults(
        estimates=[autolfads, *baselines],
        rate=binned.bin_rate,
        starting_time=binned.starting_time,
        timestamps=None if binned.timestamps is None else np.asarray(binned.timestamps),
        muscles=emg_input.muscles,
        source_series_path=emg_input.series_path,
        electrode_indices=emg_input.electrode_indices,
        factors=_float32(inference.factors),
        inferred_inputs=_float32(inference.inferred_inputs),
        provenance=provenance,
    )


def _float32(values: Any) -> Any:
    """An estimate as float32: an array in memory converted, one in an estimate store left on disk."""
    from .store import StoredArray

    return values if isinstance(values, StoredArray) else np.asarray(values, dtype=np.float32)


def shareable_location(location: str) -> str:
    """How a source is named in files meant for sharing: a URL without its query, a local file by name only."""
    if "://" in location or location.startswith("DANDI:"):
        return location.split("?", 1)[0].split("#", 1)[0]
    return Path(location).name


def shareable(value: Any) -> Any:
    """A copy of JSON-like data in which no string holds an absolute local path (each becomes its name)."""
    if isinstance(value, dict):
        return {k: shareable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shareable(v) for v in value]
    if isinstance(value, str):
        if value.startswith("file://"):
            return Path(value[len("file://"):]).name
        if os.path.isabs(value) or value.startswith("~"):
            return Path(value).name
        for private in _private_dirs():
            value = value.replace(private + os.sep, "")
    return value


def _private_dirs() -> list[str]:
    """Local folders whose names must not appear inside shared text (home, working and temp folders)."""
    import tempfile

    dirs = {str(Path.home()), os.getcwd(), tempfile.gettempdir()}
    return sorted((d for d in dirs if len(d) > 1), key=len, reverse=True)


def _lfads_config_dict(record: dict[str, Any]) -> dict[str, Any]:
    """The trained model's LFADS configuration (read errors are one-line TrainingErrors, never dropped)."""
    from .training import checkpoint

    return dict(checkpoint.read_weights(record["model_dir"])["config"])


def _is_remote(source: str | Path) -> bool:
    text = str(source)
    return "://" in text or text.startswith("DANDI:")


def _check_destination(source: str | Path, out: str | Path | None, in_place: bool,
                       emg_input: EMGInput | None = None) -> None:
    """Refuse an ambiguous destination, and in-place writes into a read-only (remote) source."""
    if (out is None) == (not in_place):
        raise WriteBackError(f"{source}: give exactly one of --out OUT.nwb or --in-place")
    remote = emg_input.is_remote if emg_input is not None else _is_remote(source)
    if in_place and remote:
        location = emg_input.location if emg_input is not None else source
        raise WriteBackError(f"{location}: a remote (DANDI/URL) source is read-only; use --out OUT.nwb")


@dataclass
class Destination:
    """Where a job writes (a link resolved to its target) and the local source's stamp when first seen."""

    target: Path | None
    stamp: FileStamp | None


def check_destination(source: str | Path, out: str | Path | None = None, in_place: bool = False,
                      overwrite: bool = False) -> Destination:
    """Check the destination before any data is read: right kind, writable, not read-only, enough space.

    Raises a one-line WriteBackError naming the flag (--out/--in-place/--overwrite) otherwise.
    """
    _check_destination(source, out, in_place)
    local = None if _is_remote(source) else Path(source)
    if local is not None and not local.is_file():
        local = None  # the reader reports a missing or odd source in its own words
    size = local.stat().st_size if local is not None else 0
    if in_place:
        if local is None:
            return Destination(None, None)
        target = Path(os.path.realpath(local))
        check_writable_file(target, "--in-place")
        check_free_space(target.parent, size + size // 2, "--in-place", "the annotated temporary copy")
    else:
        check_output_file(out, "--out", overwrite)
        target = Path(os.path.realpath(out))
        check_free_space(target.parent, size + size // 2 if local is not None else 1 << 20, "--out",
                         "the annotated file")
    return Destination(target, FileStamp.of(local) if local is not None else None)


@contextlib.contextmanager
def _guarded(destination: Destination) -> Iterator[None]:
    """Hold the destination's lock for the whole job, turn SIGTERM/SIGHUP into clean interrupts, and
    remove temporary copies a killed run left beside it."""
    with signals_interrupt(), (target_lock(destination.target) if destination.target is not None
                               else contextlib.nullcontext()):
        if destination.target is not None:
            remove_stale_partials(destination.target)
        yield


def annotate(source: str | Path, run_dir: str | Path, out: str | Path | None = None, in_place: bool = False,
             emg: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
             job: JobConfig | None = None) -> Path:
    """Apply a trained model (and the baselines) to a session and write the results back into NWB."""
    destination = check_destination(source, out, in_place, overwrite)
    with _guarded(destination):
        return _annotate(source, run_dir, out, in_place, emg, overwrite, cache_dir, job, destination)


def _annotate(source: str | Path, run_dir: str | Path, out: str | Path | None, in_place: bool, emg: str | None,
              overwrite: bool, cache_dir: str | None, job: JobConfig | None, destination: Destination) -> Path:
    record = load_run(run_dir)
    job = job or JobConfig.from_dict(record["job"])  # a caller's job (and its preprocessing) is used as given
    emg_input, handle = read(source, emg, cache_dir, job.preprocess, job.chunk_s, keep_open=True,
                             **_read_options(job), baselines=job, spill_dir=run_dir)
    return _annotate_input(source, run_dir, emg_input, handle[0], out, in_place, overwrite, job, destination)


def _annotate_input(source: str | Path, run_dir: str | Path, emg_input: EMGInput, opened: Any,
                    out: str | Path | None, in_place: bool, overwrite: bool, job: JobConfig,
                    destination: Destination, infer_with: Any = None, results_with: Any = None) -> Path:
    """Infer, finish the baselines gathered by the read pass, write back; closes the source (and the streams).

    The estimates go to an `EstimateStore` in the run directory as they are made. `infer_with(allocate)` and
    `results_with(inference, baselines)` stand in for this module's `infer` and `build_results` (a stitched
    model's, `sessions.annotate_session`)."""
    from .store import EstimateStore

    record = load_run(run_dir)
    if infer_with is None:
        def infer_with(allocate: Any) -> Any:
            return infer(run_dir, emg_input, job.n_posterior_samples, job.device, job.seed, allocate=allocate)
    if results_with is None:
        def results_with(inference: Any, baselines: list[ActivationEstimate]) -> SessionResults:
            return build_results(emg_input, record, inference, baselines)
    store = None
    try:
        try:
            _check_destination(source, out, in_place, emg_input)
            store = EstimateStore(run_dir)  # estimates go to disk block by block, never whole in memory
            inference = infer_with(_store_allocator(store, "AutoLFADS"))
            _release_freed_memory()  # inference's freed batches, before the Bayesian filter's step arrays
            baselines = finish_baselines(emg_input, job, allocate=_store_allocator(store, ""))
            store.finish()
            _release_freed_memory()
            inference, baselines = _stored(store, inference), [_stored(store, e) for e in baselines]
            results = results_with(inference, baselines)
            del inference
            if emg_input.is_remote:
                return write(source, emg_input, results, out, in_place, overwrite, opened.nwbfile)
        finally:
            opened.close()
            if emg_input.streams is not None:
                emg_input.streams.close()
        return write(source, emg_input, results, out, in_place, overwrite, stamp=destination.stamp)
    finally:
        if store is not None:
            store.remove()


_INFERENCE_NAMES = {"rates": "AutoLFADS/data", "rates_var": "AutoLFADS/uncertainty", "factors": "LatentFactors/data",
                    "inputs": "LatentFactors/inferred_inputs"}
_INFERENCE_FIELDS = {"rates": "rates", "rates_std": "rates_var", "factors": "factors", "inferred_inputs": "inputs"}


def _store_allocator(store: Any, kind: str) -> Any:
    """`allocate` for inference ("AutoLFADS": its output keys) or the baselines (their method names) into `store`."""
    if kind == "AutoLFADS":
        return lambda key, shape: store.allocate(_INFERENCE_NAMES[key], shape)
    return lambda method, shape: store.allocate(f"{method}/data", shape)


def _stored(store: Any, value: Any) -> Any:
    """An inference or a baseline estimate whose arrays (datasets of the closed `store`) are read lazily."""
    if isinstance(value, ActivationEstimate):
        return replace(value, data=store.stored(f"{value.method}/data"))
    return replace(value, **{f: store.stored(_INFERENCE_NAMES[k]) for f, k in _INFERENCE_FIELDS.items()})


def write(source: str | Path, emg_input: EMGInput, results: SessionResults, out: str | Path | None = None,
          in_place: bool = False, overwrite: bool = False, opened_nwbfile: Any = None,
          stamp: FileStamp | None = None) -> Path:
    """Write results for `emg_input` back: into a copy of a local file (or in place), or a new file.

    `stamp` is the local source's FileStamp when it was read: a file changed since is not replaced.
    """
    _check_destination(source, out, in_place, emg_input)
    if emg_input.is_remote:
        if opened_nwbfile is None:
            raise WriteBackError(f"{emg_input.location}: a remote source needs its opened file to copy the session from")
        return write_new_file(opened_nwbfile, emg_input.dandi_url or emg_input.location, results, Path(out),
                              overwrite=overwrite)
    destination = Path(out) if out is not None else Path(emg_input.location)
    return write_into_copy(Path(emg_input.location), results, destination, overwrite=overwrite, expect=stamp)


def run(source: str | Path, run_dir: str | Path, out: str | Path | None = None, in_place: bool = False,
        emg: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
        job: JobConfig | None = None) -> Path:
    """The whole job: preprocess, train (single model or PBT), infer, baselines, write back.

    Settings and the destination are checked before any data is read; the destination stays locked
    until the results are written.
    """
    job = job or JobConfig()
    check_job(job, run_dir)
    destination = check_destination(source, out, in_place, overwrite)
    with _guarded(destination):
        if in_place and not overwrite:
            _refuse_if_annotated(source)
        # one pass over the raw series: the time scales, the model's bins and the baselines' inputs (the source
        # stays open)
        emg_input, handle = read(source, emg, cache_dir, job.preprocess, job.chunk_s, keep_open=True,
                                 **_read_options(job), baselines=job, spill_dir=run_dir, time_scales=job)
        try:
            _check_destination(source, out, in_place, emg_input)
            check_lowpass(job, emg_input.binned.raw_rate)
            _release_freed_memory()  # the pass's float64 bin pieces
            if job.lowpass_cutoff_hz is None:  # settled now, so its signal is not held through training
                emg_input.streams.choose_cutoff()
                _release_freed_memory()
            fit(emg_input, run_dir, job)
            _release_freed_memory()
        except BaseException:
            handle[0].close()
            emg_input.streams.close()
            raise
        return _annotate_input(source, run_dir, emg_input, handle[0], out, in_place, overwrite, job, destination)


def _release_freed_memory() -> None:
    """Hand memory the process has freed back to the system between stages (glibc `malloc_trim`; elsewhere
    nothing): the read pass frees ~10 s pieces that glibc keeps in its heap otherwise (measured on 10 min x
    32 ch: 364 -> 254 MB resident after the pass), and a forked write-back child would count them too."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to release this way
        pass


def _refuse_if_annotated(source: str | Path) -> None:
    """Fail before training when a local file already holds results and --overwrite was not given."""
    path = Path(source)
    if not path.is_file():
        return
    from pynwb import NWBHDF5IO

    from .writeback import RESULTS_MODULE, existing_results

    try:
        with NWBHDF5IO(str(path), "r") as io:
            found = existing_results(io.read())
    except Exception:  # noqa: BLE001 - the reader gives the proper error right after
        return
    if found:
        raise WriteBackError(
            f"{path}: processing/{RESULTS_MODULE}: already holds results ({', '.join(found)}); "
            "pass --overwrite to replace them"
        )


__all__ = [
    "JobConfig", "PBTSettings", "EMGInput", "read", "choose_job_time_scales", "fit", "infer", "annotate", "run",
    "write", "baseline_estimates", "finish_baselines", "build_results", "load_run", "lfads_config", "check_job", "check_destination",
    "Destination", "NwbLfadsEmgError",
]
