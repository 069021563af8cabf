"""The whole job in a few calls: read -> preprocess -> fit (LFADS or AutoLFADS) -> infer -> write.

This module only wires the stages together; each stage lives in its own module (sources,
preprocess, baselines, training, writeback) and can be used alone. The CLI is a thin shell over it.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NwbLfadsEmgError, TrainingError, WriteBackError
from .preprocess import Binned, PreprocessConfig, bin_to, preprocess_chunks, rectify_highpass
from .writeback import (
    ActivationEstimate,
    SessionResults,
    refuse_existing_output,
    write_into_copy,
    write_new_file,
)

JOB_FILE = "job.json"


@dataclass
class JobConfig:
    """One run's settings beyond the model's own (serialised whole into the provenance record)."""

    preset: str = "auto"  # "auto": sizes, bins, segments and epochs from the data (lfads.auto, timescales)
    seed: int = 0
    device: str = "auto"
    max_epochs: int | None = None
    pbt: bool = False
    population: int = 4
    ray_address: str | None = None
    gpus_per_trial: float | None = None
    pbt_interval: int | None = None
    n_posterior_samples: int = 20
    lowpass_cutoff_hz: float | None = None  # None: chosen per session by held-out prediction (baselines.tuning)
    bayes: dict[str, Any] = field(default_factory=dict)  # diffusion/jump not given: maximum marginal likelihood
    chunk_s: float = 60.0
    progress: bool = True
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    lfads_overrides: dict[str, Any] = field(default_factory=dict)
    bin_ms: float | None = None  # the user's bin width (None: auto preset from the data, others 5 ms)
    segment_ms: float | None = None  # the user's segment length (None: auto preset from the data, others the preset's)
    time_scales: dict[str, Any] = field(default_factory=dict)  # what `choose_job_time_scales` chose and why


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


def read(source: str | Path, emg: str | None = None, cache_dir: str | None = None,
         config: PreprocessConfig | None = None, chunk_s: float = 60.0, keep_open: bool = False
         ) -> tuple[EMGInput, Any]:
    """Open a local file or DANDI asset, pick the EMG series and preprocess it chunk by chunk.

    Returns the preprocessed input and the opened source (closed unless `keep_open`).
    """
    from .sources import EMGReader, open_source

    opened = open_source(str(source), cache_dir=cache_dir)
    try:
        reader = EMGReader(opened, emg)
        binned = preprocess_chunks(reader.iter_chunks(chunk_s), reader.rate, config or PreprocessConfig(),
                                   starting_time=reader.starting_time, muscles=reader.muscles)
        emg_input = EMGInput(
            binned=binned,
            series_path=reader.series_path,
            muscles=list(reader.muscles),
            electrode_indices=reader.electrode_indices,
            file_identifier=str(opened.nwbfile.identifier),
            location=str(opened.location),
            dandi_url=opened.dandi_url,
            is_remote=opened.is_remote,
        )
    except BaseException:
        opened.close()
        raise
    if not keep_open:
        opened.close()
        return emg_input, None
    return emg_input, (opened, reader)


def choose_job_time_scales(source: str | Path, emg: str | None, cache_dir: str | None, job: JobConfig) -> None:
    """Settle the job's bin width and segment length (into `job.preprocess`, `job.segment_ms`, `job.time_scales`).

    Values the user gave (`job.bin_ms`, `job.segment_ms`) are kept. With the auto preset the others
    come from the recording: it is read once at fine (2 ms) bins to find its envelope's bandwidth
    (`timescales.choose_time_scales`). Other presets keep their own segments and 5 ms bins.
    """
    if job.bin_ms is not None:
        job.preprocess = replace(job.preprocess, bin_ms=float(job.bin_ms))
    if job.preset != "auto" or (job.bin_ms is not None and job.segment_ms is not None):
        job.time_scales = {"bin_ms": job.preprocess.bin_ms, "segment_ms": job.segment_ms, "chosen_by": "given"}
        return
    from .timescales import choose_time_scales

    probe, _ = read(source, emg, cache_dir, replace(job.preprocess, bin_ms=2.0, clip_percentile=None),
                    job.chunk_s)
    b = probe.binned
    rect = np.asarray(b.data, dtype=np.float64) * np.asarray(b.scale)[None, :]
    chosen = choose_time_scales(rect, b.bin_rate).to_dict() | {"chosen_by": "data", "raw_rate": b.raw_rate,
                                                              "probe_bin_ms": 2.0}
    if job.bin_ms is not None:
        chosen["bin_ms"], chosen["bin_ms_given"] = float(job.bin_ms), True
    if job.segment_ms is not None:
        chosen["segment_ms"], chosen["segment_ms_given"] = float(job.segment_ms), True
    job.preprocess = replace(job.preprocess, bin_ms=float(chosen["bin_ms"]))
    job.segment_ms = float(chosen["segment_ms"])
    job.time_scales = chosen


def lfads_config(job: JobConfig, n_bins: int | None = None, n_channels: int | None = None,
                 bin_ms: float | None = None) -> Any:
    """The LFADS configuration of a job: its preset (auto: sized from the data) with the job's overrides."""
    from .lfads.config import preset

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


def _device_name(job: JobConfig) -> str:
    """"cuda" or "cpu": where training will run."""
    if job.device != "auto":
        return job.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    return infer_model(model, emg_input.binned.data, config, n_samples=n_samples, device=device, seed=seed)


def baseline_estimates(emg_da: Any, binned: Binned, job: JobConfig) -> list[ActivationEstimate]:
    """Low-pass envelope and Bayesian filter of the rectified EMG, on the model's bins and scale."""
    from .baselines.bayes import bayes_filter
    from .baselines.lowpass import lowpass_envelope
    from .baselines.tuning import select_cutoff_cv, tune_bayes

    rate = float(1.0 / float(emg_da.coords["time"].values[1] - emg_da.coords["time"].values[0]))
    start = float(emg_da.coords["time"].values[0])
    rectified = rectify_highpass(np.asarray(emg_da.values), rate, binned.config)
    scale = binned.scale[None, :]
    tuned = job.lowpass_cutoff_hz is None
    cutoff = select_cutoff_cv(rectified, rate) if tuned else float(job.lowpass_cutoff_hz)  # type: ignore[arg-type]
    lowpass = bin_to(lowpass_envelope(rectified, rate, cutoff), rate, binned, start) / scale
    bayes_params = dict(job.bayes)
    if "diffusion" not in bayes_params and "jump" not in bayes_params:
        bayes_params.update(tune_bayes(rectified, rate) | {"chosen_by": "maximum marginal likelihood"})
    chosen = bayes_params.pop("chosen_by", "given")
    bayes = bin_to(bayes_filter(rectified, rate, **bayes_params), rate, binned, start) / scale
    return [
        ActivationEstimate("LowPass", lowpass.astype(np.float32),
                           parameters={"cutoff_hz": cutoff, "order": 4, "zero_phase": True,
                                       "cutoff_chosen_by": "held-out prediction of rectified EMG" if tuned
                                       else "given (--lowpass-hz)"}),
        ActivationEstimate("BayesianFilter", bayes.astype(np.float32),
                           parameters={"likelihood": "laplace", **bayes_params, "parameters_chosen_by": chosen}),
    ]


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
    emg_input, handle = read(source, emg, cache_dir, job.preprocess, job.chunk_s, keep_open=True)
    opened, reader = handle
    try:
        _check_destination(source, out, in_place, emg_input)
        inference = infer(run_dir, emg_input, job.n_posterior_samples, job.device, job.seed)
        baselines = baseline_estimates(reader.to_dataarray(), emg_input.binned, job)
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
    choose_job_time_scales(source, emg, cache_dir, job)
    emg_input, _ = read(source, emg, cache_dir, job.preprocess, job.chunk_s)
    _check_destination(source, out, in_place, emg_input)
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
    "JobConfig", "EMGInput", "read", "choose_job_time_scales", "fit", "infer", "annotate", "run", "write", "baseline_estimates", "build_results",
    "load_run", "lfads_config", "NwbLfadsEmgError",
]
