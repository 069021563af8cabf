"""The whole job in a few calls: read -> preprocess -> fit (LFADS or AutoLFADS) -> infer -> write.

This module only wires the stages together; each stage lives in its own module (sources,
preprocess, baselines, training, writeback) and can be used alone. The CLI is a thin shell over it.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NwbLfadsEmgError, TrainingError, WriteBackError
from .preprocess import (
    Binned,
    PreprocessConfig,
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
    refuse_existing_output,
    write_into_copy,
    write_new_file,
)

JOB_FILE = "job.json"
log = logging.getLogger("nwb_lfads_emg")


@dataclass
class JobConfig:
    """One run's settings beyond the model's own (serialised whole into the provenance record)."""

    preset: str = "demo"
    seed: int = 0
    device: str = "auto"
    max_epochs: int | None = None
    pbt: bool = False
    population: int = 4
    ray_address: str | None = None
    gpus_per_trial: float | None = None
    pbt_interval: int | None = None
    n_posterior_samples: int = 20
    lowpass_cutoff_hz: float = 10.0
    bayes: dict[str, Any] = field(default_factory=dict)
    chunk_s: float = 60.0
    progress: bool = True
    irregular: str = "raise"
    """Irregular timestamps: "raise" or "resample" onto a uniform grid (`--irregular`)."""
    on_nonfinite: str = "raise"
    """NaN/Inf samples: "raise" or "mask" them to 0 (`--on-nonfinite`)."""
    drop_dead: bool = False
    """Leave constant (dead) channels out instead of refusing them (`--drop-dead`)."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    lfads_overrides: dict[str, Any] = field(default_factory=dict)


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


#: Segments (trials) shorter than this many samples are left out (a filter needs a few samples).
MIN_SEGMENT_SAMPLES = 32


def read(source: str | Path, emg: str | None = None, cache_dir: str | None = None,
         config: PreprocessConfig | None = None, chunk_s: float = 60.0, keep_open: bool = False,
         *, irregular: str = "raise", on_nonfinite: str = "raise", drop_dead: bool = False
         ) -> tuple[EMGInput, Any]:
    """Open a local file or DANDI asset, pick the EMG series, decide what it holds (raw EMG or an
    envelope, `decide_input`) and preprocess it chunk by chunk, each contiguous segment on its own.

    Returns the preprocessed input and (opened source, reader) when `keep_open`, else None.
    """
    from .sources import EMGReader, open_source

    opened = open_source(str(source), cache_dir=cache_dir)
    try:
        reader = EMGReader(opened, emg, on_nonfinite=on_nonfinite, drop_dead=drop_dead, irregular=irregular)
        config = config or PreprocessConfig()
        decision = decide_input(reader.rate, config, reader.texts(), reader.head())
        cfg = resolved_config(config, decision)
        used: list[int] | None = None
        if reader.timestamped:
            n_bin = bin_samples_for(reader.rate, cfg.bin_ms)
            used = [k for k, (a, b) in enumerate(reader.segments) if b - a >= max(n_bin, MIN_SEGMENT_SAMPLES)]
            left_out = len(reader.segments) - len(used)
            if left_out:
                log.warning(f"{opened.location}: {reader.series_path}: {left_out} of {len(reader.segments)} "
                            f"segments are shorter than {max(n_bin, MIN_SEGMENT_SAMPLES)} samples; left out")
            binned = preprocess_segments([reader.iter_chunks(chunk_s, segment=k) for k in used], reader.rate, cfg,
                                         starting_times=[reader.segment_times(k)[0] for k in used],
                                         muscles=reader.muscles)
        else:
            binned = preprocess_chunks(reader.iter_chunks(chunk_s), reader.rate, cfg,
                                       starting_time=reader.starting_time, muscles=reader.muscles)
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
        )
    except BaseException:
        opened.close()
        raise
    if not keep_open:
        opened.close()
        return emg_input, None
    return emg_input, (opened, reader)


def _read_options(job: JobConfig) -> dict[str, Any]:
    return {"irregular": job.irregular, "on_nonfinite": job.on_nonfinite, "drop_dead": job.drop_dead}


def lfads_config(job: JobConfig) -> Any:
    """The LFADS configuration of a job: its preset with the job's overrides applied."""
    from .lfads.config import preset

    config = preset(job.preset)
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
    config = lfads_config(job)
    data = emg_input.binned.data
    if job.pbt:
        from .training.pbt import fit_pbt

        interval, generations = pbt_schedule(job, config.max_epochs)
        result = fit_pbt(data, config, run_dir, population=job.population, ray_address=job.ray_address,
                         gpus_per_trial=_gpus_per_trial(job), max_generations=generations,
                         perturbation_interval=interval, seed=job.seed, progress=job.progress)
    else:
        from .training.trainer import fit as fit_single

        result = fit_single(data, config, run_dir, device=job.device, seed=job.seed, progress=job.progress,
                            max_epochs=job.max_epochs)
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


def pbt_schedule(job: JobConfig, max_epochs: int) -> tuple[int, int]:
    """(epochs between PBT selections, number of generations) so a search trains at most `max_epochs`."""
    interval = job.pbt_interval or max(1, min(25, max_epochs // 4))
    return interval, max(1, max_epochs // interval)


def _gpus_per_trial(job: JobConfig) -> float:
    """GPU share of each PBT trial: as given, else none on CPU and 1/population (at most 4 per GPU) on CUDA."""
    if job.gpus_per_trial is not None:
        return float(job.gpus_per_trial)
    if job.device == "cpu":
        return 0.0
    import torch

    if not torch.cuda.is_available():
        if job.device == "cuda":
            raise TrainingError("--device cuda: no CUDA device is visible to torch on this machine")
        return 0.0
    return 1.0 / min(4, max(1, job.population))


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


def infer(run_dir: str | Path, emg_input: EMGInput, n_samples: int = 20, device: str = "auto",
          seed: int = 0) -> Any:
    """Posterior means, spreads, factors and inferred inputs of a trained model on preprocessed EMG."""
    from .training.trainer import infer as infer_model
    from .training.trainer import load_model

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
    if config.num_threads:
        import torch

        torch.set_num_threads(int(config.num_threads))
    data = emg_input.binned.data
    ranges = emg_input.binned.segment_ranges
    if len(ranges) == 1:
        return infer_model(model, data, config, n_samples=n_samples, device=device, seed=seed)
    parts = []
    for a, b in ranges:  # each segment (trial) on its own; one shorter than a model window is edge-padded
        seg = data[a:b]
        if seg.shape[0] < config.seg_len:
            seg = np.pad(seg, ((0, config.seg_len - seg.shape[0]), (0, 0)), mode="edge")
        parts.append((b - a, infer_model(model, seg, config, n_samples=n_samples, device=device, seed=seed)))
    first = parts[0][1]
    joined = {key: np.concatenate([getattr(inf, key)[:n] for n, inf in parts])
              for key in ("rates", "rates_std", "factors", "inferred_inputs")}
    return type(first)(**joined, n_samples=first.n_samples)


def baseline_estimates(emg_da: Any, binned: Binned, job: JobConfig) -> list[ActivationEstimate]:
    """Low-pass envelope and Bayesian filter of the rectified EMG (or of the envelope itself), on the
    model's bins and scale. `emg_da` is the EMG as a DataArray, or a list of them, one per segment."""
    from .baselines.bayes import bayes_filter
    from .baselines.lowpass import lowpass_envelope

    pieces = emg_da if isinstance(emg_da, (list, tuple)) else [emg_da]
    ranges = binned.segment_ranges
    if len(pieces) != len(ranges):
        raise TrainingError(f"baselines: {len(pieces)} EMG segments for {len(ranges)} binned segments")
    rate = binned.raw_rate or float(1.0 / float(pieces[0].coords["time"].values[1] - pieces[0].coords["time"].values[0]))
    check_lowpass(job, rate)
    envelope = binned.decision is not None and binned.decision.kind == "envelope"
    lows, bayes = [], []
    for da, (a, b) in zip(pieces, ranges, strict=True):
        rectified = rectify_highpass(np.asarray(da.values), rate, binned.config)
        if envelope:
            rectified = np.maximum(rectified, 0.0)
        n = b - a
        lows.append(bin_like(lowpass_envelope(rectified, rate, job.lowpass_cutoff_hz), rate, binned.bin_rate, n))
        bayes.append(bin_like(bayes_filter(rectified, rate, **job.bayes), rate, binned.bin_rate, n))
    scale = binned.scale[None, :]
    lowpass = np.concatenate(lows) / scale
    bayes_est = np.concatenate(bayes) / scale
    return [
        ActivationEstimate("LowPass", lowpass.astype(np.float32),
                           parameters={"cutoff_hz": job.lowpass_cutoff_hz, "order": 4, "zero_phase": True}),
        ActivationEstimate("BayesianFilter", bayes_est.astype(np.float32), parameters={"likelihood": "laplace",
                                                                                       **job.bayes}),
    ]


def check_lowpass(job: JobConfig, rate: float) -> None:
    """Refuse a low-pass baseline cutoff at or above the input's Nyquist frequency, naming --lowpass-hz."""
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
                    "input_location": emg_input.location, "input_url": emg_input.dandi_url}
    autolfads = ActivationEstimate("AutoLFADS", inference.rates.astype(np.float32),
                                   uncertainty=inference.rates_std.astype(np.float32),
                                   parameters={"n_posterior_samples": int(inference.n_samples),
                                               "trained_on": record["source_location"], **input_source})
    for estimate in baselines:
        estimate.parameters.update(input_source)
    return SessionResults(
        estimates=[autolfads, *baselines],
        rate=binned.bin_rate,
        starting_time=binned.starting_time,
        timestamps=None if binned.timestamps is None else np.asarray(binned.timestamps),
        muscles=emg_input.muscles,
        source_series_path=emg_input.series_path,
        electrode_indices=emg_input.electrode_indices,
        factors=inference.factors.astype(np.float32),
        inferred_inputs=inference.inferred_inputs.astype(np.float32),
        provenance=provenance,
    )


def _lfads_config_dict(record: dict[str, Any]) -> dict[str, Any]:
    from .training import checkpoint

    try:
        return dict(checkpoint.read_weights(record["model_dir"])["config"])
    except Exception:  # noqa: BLE001 - provenance still records the job and preset
        return {}


def _check_destination(source: str | Path, out: str | Path | None, in_place: bool,
                       emg_input: EMGInput | None = None) -> None:
    """Refuse an ambiguous destination, and in-place writes into a read-only (remote) source."""
    if (out is None) == (not in_place):
        raise WriteBackError(f"{source}: give exactly one of --out OUT.nwb or --in-place")
    if in_place and emg_input is not None and emg_input.is_remote:
        raise WriteBackError(f"{emg_input.location}: a remote (DANDI/URL) source is read-only; use --out OUT.nwb")


def annotate(source: str | Path, run_dir: str | Path, out: str | Path | None = None, in_place: bool = False,
             emg: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
             job: JobConfig | None = None) -> Path:
    """Apply a trained model (and the baselines) to a session and write the results back into NWB."""
    _check_destination(source, out, in_place)
    record = load_run(run_dir)
    job = job or JobConfig(**{k: v for k, v in record["job"].items() if k not in ("preprocess",)})
    job.preprocess = PreprocessConfig(**record["job"]["preprocess"])
    emg_input, handle = read(source, emg, cache_dir, job.preprocess, job.chunk_s, keep_open=True,
                             **_read_options(job))
    opened, reader = handle
    try:
        _check_destination(source, out, in_place, emg_input)
        inference = infer(run_dir, emg_input, job.n_posterior_samples, job.device, job.seed)
        if emg_input.segments is None:
            emg_da: Any = reader.to_dataarray()
        else:
            emg_da = [reader.to_dataarray(segment=k) for k in emg_input.segments]
        baselines = baseline_estimates(emg_da, emg_input.binned, job)
        results = build_results(emg_input, record, inference, baselines)
        if emg_input.is_remote:
            return write(source, emg_input, results, out, in_place, overwrite, opened.nwbfile)
    finally:
        opened.close()
    return write(source, emg_input, results, out, in_place, overwrite)


def write(source: str | Path, emg_input: EMGInput, results: SessionResults, out: str | Path | None = None,
          in_place: bool = False, overwrite: bool = False, opened_nwbfile: Any = None) -> Path:
    """Write results for `emg_input` back: into a copy of a local file (or in place), or a new file."""
    _check_destination(source, out, in_place, emg_input)
    if emg_input.is_remote:
        if opened_nwbfile is None:
            raise WriteBackError(f"{emg_input.location}: a remote source needs its opened file to copy the session from")
        return write_new_file(opened_nwbfile, emg_input.dandi_url or emg_input.location, results, Path(out),
                              overwrite=overwrite)
    destination = Path(out) if out is not None else Path(emg_input.location)
    return write_into_copy(Path(emg_input.location), results, destination, overwrite=overwrite)


def run(source: str | Path, run_dir: str | Path, out: str | Path | None = None, in_place: bool = False,
        emg: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
        job: JobConfig | None = None) -> Path:
    """The whole job: preprocess, train (single model or PBT), infer, baselines, write back."""
    job = job or JobConfig()
    _check_destination(source, out, in_place)
    if out is not None:
        refuse_existing_output(out, overwrite)
    if in_place and not overwrite:
        _refuse_if_annotated(source)
    emg_input, _ = read(source, emg, cache_dir, job.preprocess, job.chunk_s, **_read_options(job))
    _check_destination(source, out, in_place, emg_input)
    check_lowpass(job, emg_input.binned.raw_rate)
    fit(emg_input, run_dir, job)
    return annotate(source, run_dir, out=out, in_place=in_place, emg=emg, overwrite=overwrite,
                    cache_dir=cache_dir, job=job)


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
    "JobConfig", "EMGInput", "read", "fit", "infer", "annotate", "run", "write", "baseline_estimates", "build_results",
    "load_run", "lfads_config", "NwbLfadsEmgError",
]
