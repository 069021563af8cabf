"""Several sessions, one model: fit a stitched LFADS on many sources and annotate each (or a new one).

The multi-session counterpart of `pipeline`: `fit_sources` reads every source (local paths, DANDI
assets, or a dandiset with a `match` glob) and trains one model with a read-in/read-out per session
(`training.multisession`); `annotate_session` writes a session's estimates with its own
read-in/read-out, or first fits one for a session the model never saw (`adapt=True`: its read-in,
read-out and own copy of the encoders and controller fitted, the shared generator frozen); `run_sources` does both for all sources. The run directory's `job.json` lists
every training session; each written file's provenance says which read-in/read-out it used.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import TrainingError, WriteBackError
from .pipeline import (
    JOB_FILE,
    Destination,
    EMGInput,
    JobConfig,
    _annotate_input,
    _guarded,
    _job_dict,
    _read_options,
    _refuse_if_annotated,
    build_results,
    check_destination,
    check_job,
    lfads_config,
    load_run,
    pbt_arguments,
    read,
)
from .writeback import refuse_existing_output

KIND = "multisession"
ADAPTED_DIR = "adapted"


def read_sources(sources: list[str], emg: str | None = None, cache_dir: str | None = None,
                 job: JobConfig | None = None, match: str | None = None) -> list[EMGInput]:
    """Every source (a dandiset or folder with `match` gives its matching assets) read and preprocessed
    with the job's preprocessing and read options."""
    from .sources.many import expand_sources

    job = job or JobConfig()
    return [read(s, emg, cache_dir, job.preprocess, job.chunk_s, **_read_options(job))[0]
            for s in expand_sources(sources, match)]


def _session_entry(k: int, e: EMGInput) -> dict[str, Any]:
    return {"index": k, "file_identifier": e.file_identifier, "series_path": e.series_path, "location": e.location,
            "source_url": e.dandi_url, "muscles": list(e.muscles), "n_bins": int(e.binned.data.shape[0])}


def fit_many(emg_inputs: list[EMGInput], run_dir: str | Path, job: JobConfig | None = None) -> Any:
    """Train one stitched model on several preprocessed sessions; writes run_dir/model.pt and job.json."""
    from .training.multisession import fit_sessions

    job = job or JobConfig()
    run_dir = Path(run_dir)
    first = emg_inputs[0]
    for e in emg_inputs:
        if abs(e.binned.bin_rate - first.binned.bin_rate) > 1e-6:
            raise TrainingError(f"{e.location}: {e.series_path}: bin rate {e.binned.bin_rate} Hz differs from "
                                f"{first.location}'s {first.binned.bin_rate} Hz (--bin-ms)")
        dup = sorted({m for m in e.muscles if list(e.muscles).count(m) > 1})
        if dup:
            raise TrainingError(f"{e.location}: {e.series_path}: muscle name(s) {dup} appear more than once; "
                                "names tie sessions together, so each must be unique (pick another series with --emg)")
    rates = {float(e.binned.bin_rate) for e in emg_inputs}
    if len(rates) > 1:
        raise TrainingError(f"{emg_inputs[0].location}: the sessions are binned at different rates ({sorted(rates)} Hz); "
                            "give one bin width for all (--bin-ms)")
    bin_ms = 1000.0 / rates.pop()
    # the auto preset sizes the shared model from all sessions' bins and the widest session; the bin width is
    # the input's (5 ms, or an envelope's own interval) and segments the preset's default (no per-session probe)
    config = lfads_config(job, n_bins=sum(e.binned.n_bins for e in emg_inputs),
                          n_channels=max(len(e.muscles) for e in emg_inputs), bin_ms=bin_ms)
    config.bin_ms = bin_ms  # ms settings (temporal shift) -> bins
    data, muscles = [e.binned.data for e in emg_inputs], [e.muscles for e in emg_inputs]
    if job.pbt:  # AutoLFADS on the stitched model: selection on the held-out loss pooled over sessions
        from .training.pbt import fit_pbt

        result = fit_pbt(data, config, run_dir, muscles=muscles, **pbt_arguments(job, config))
    else:
        result = fit_sessions(data, muscles, config, run_dir, device=job.device, seed=job.seed,
                              progress=job.progress, max_epochs=job.max_epochs)
    sessions = [_session_entry(k, e) for k, e in enumerate(emg_inputs)]
    record = {
        "kind": KIND,
        "job": _job_dict(job),
        "sessions": sessions,
        "muscles": result.model.union,
        "bin_rate": first.binned.bin_rate,
        "source_file_identifier": first.file_identifier,
        "source_series_path": first.series_path,
        "source_location": first.location,
        "source_url": first.dandi_url,
        "weights_sha256": result.weights_sha256,
        "best_val_loss": float(result.best_val_loss),
        "model_dir": str(getattr(result, "model_dir", None) or run_dir),
        "metrics": result.metrics,
        "training_seconds": result.seconds,
        "pbt_history": getattr(result, "pbt_history", None),
        "device": str(result.device),
    }
    (run_dir / JOB_FILE).write_text(json.dumps(record, indent=1, default=str))
    return result


def _find_session(record: dict[str, Any], emg_input: EMGInput) -> int | None:
    for s in record["sessions"]:
        if s["file_identifier"] == emg_input.file_identifier and s["series_path"] == emg_input.series_path:
            return int(s["index"])
    return None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "session"


def infer_session(run_dir: str | Path, emg_input: EMGInput, job: JobConfig, adapt: bool = False,
                  record: dict[str, Any] | None = None, allocate: Any = None
                  ) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Posterior estimates of a session with its read-in/read-out (fitted first when `adapt` and new), into
    outputs made by `allocate` (`training.inference.Allocate`; e.g. an `EstimateStore`'s) or arrays in memory.

    Returns (inference, which read-in/read-out was used, adaptation metrics).
    """
    import torch

    from .training.inference import infer as infer_model
    from .training.multisession import ADAPT_FITS, ADAPT_FREEZES, ADAPT_WEIGHT_EMA, load_multisession
    from .training.multisession import adapt as adapt_model

    record = record or load_run(run_dir)
    where = f"{emg_input.location}: {emg_input.series_path}"
    if abs(float(record["bin_rate"]) - emg_input.binned.bin_rate) > 1e-6:
        raise TrainingError(f"{where}: bin rate {emg_input.binned.bin_rate} Hz differs from the model's "
                            f"{record['bin_rate']} Hz")
    model = load_multisession(record["model_dir"])
    config = model.config
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    index = _find_session(record, emg_input)
    metrics: list[dict[str, Any]] = []
    if index is not None:
        trained = record["sessions"][index]
        if list(trained["muscles"]) != list(emg_input.muscles):
            raise TrainingError(f"{where}: muscles {emg_input.muscles} differ from those the model was trained on "
                                f"for this session ({trained['muscles']})")
        used = {"session_index": index, "adapted": False, "training_session": trained}
    elif adapt:
        path = Path(run_dir) / ADAPTED_DIR / f"{_safe(emg_input.file_identifier)}_{_safe(emg_input.series_path)}.pt"
        index, result = adapt_model(model, emg_input.binned.data, emg_input.muscles, config, device=job.device,
                                    seed=job.seed, progress=job.progress, max_epochs=job.max_epochs,
                                    weights_path=path, weight_ema=ADAPT_WEIGHT_EMA)
        metrics = result.metrics
        used = {"session_index": index, "adapted": True, "adapted_weights": str(path),
                "adapted_weights_sha256": result.weights_sha256, "adapt_epochs": len(metrics),
                "adapt_best_val_loss": float(result.best_val_loss),
                "muscles_known_to_model": [m for m in emg_input.muscles if m in model.union],
                "shared_weights_frozen": True, "frozen": ADAPT_FREEZES, "fitted": ADAPT_FITS,
                "fitted_weights_moving_average": ADAPT_WEIGHT_EMA}
    else:
        raise TrainingError(
            f"{where}: not one of the {len(record['sessions'])} sessions the model in {run_dir} was trained on; "
            "pass --adapt to fit its read-in/read-out, encoders and controller with the shared generator frozen"
        )
    used["muscles"] = list(emg_input.muscles)
    inference = infer_model(model.session_view(index), emg_input.binned.data, config,
                            n_samples=job.n_posterior_samples, device=job.device, seed=job.seed, allocate=allocate)
    return inference, used, metrics


def annotate_session(source: str | Path, run_dir: str | Path, out: str | Path | None = None, in_place: bool = False,
                     emg: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
                     job: JobConfig | None = None, adapt: bool = False, adapt_epochs: int | None = None) -> Path:
    """Estimates of one session from a stitched model (its own read-in/read-out) written back into NWB.

    `adapt`: a session the model was not trained on first gets its read-in/read-out fitted (at most
    `adapt_epochs` epochs, default the training's limit) with the shared weights frozen."""
    destination = check_destination(source, out, in_place, overwrite)
    with _guarded(destination):
        return _annotate_session(source, run_dir, out, in_place, emg, overwrite, cache_dir, job, adapt,
                                 adapt_epochs, destination)


def _annotate_session(source: str | Path, run_dir: str | Path, out: str | Path | None, in_place: bool,
                      emg: str | None, overwrite: bool, cache_dir: str | None, job: JobConfig | None, adapt: bool,
                      adapt_epochs: int | None, destination: Destination) -> Path:
    record = load_run(run_dir)
    if record.get("kind") != KIND:
        raise TrainingError(f"{run_dir}: holds a model of one session; --adapt needs one trained on several "
                            "(fit SOURCE SOURCE ...), or annotate without --adapt")
    job = job or JobConfig.from_dict(record["job"])  # a caller's job (and its preprocessing) is used as given
    if adapt_epochs is not None:
        job.max_epochs = int(adapt_epochs)
    emg_input, handle = read(source, emg, cache_dir, job.preprocess, job.chunk_s, keep_open=True,
                             **_read_options(job), baselines=job, spill_dir=run_dir)
    found: dict[str, Any] = {}

    def infer_with(allocate: Any) -> Any:  # the session's own read-in/read-out, into the estimate store
        inference, found["used"], found["metrics"] = infer_session(run_dir, emg_input, job, adapt, record, allocate)
        return inference

    def results_with(inference: Any, baselines: list) -> Any:
        return _results(emg_input, record, inference, baselines, found["used"], found["metrics"])

    # inference and the baselines (gathered by the read pass) go to an estimate store, then written back
    return _annotate_input(source, run_dir, emg_input, handle[0], out, in_place, overwrite, job, destination,
                           infer_with=infer_with, results_with=results_with)


def annotate_any(source: str | Path, run_dir: str | Path, out: str | Path | None = None, in_place: bool = False,
                 emg: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
                 job: JobConfig | None = None, adapt: bool = False, adapt_epochs: int | None = None) -> Path:
    """`annotate` for a model of one session or of several: a stitched model (or `adapt`) uses the session's
    own read-in/read-out (`annotate_session`), a single-session model `pipeline.annotate`."""
    from .pipeline import annotate

    check_destination(source, out, in_place, overwrite)  # before the run directory or the data are read
    if adapt or load_run(run_dir).get("kind") == KIND:
        return annotate_session(source, run_dir, out, in_place, emg, overwrite, cache_dir, job, adapt=adapt,
                                adapt_epochs=adapt_epochs)
    if adapt_epochs is not None:
        raise TrainingError(f"{run_dir}: --max-epochs applies to annotate only with --adapt")
    return annotate(source, run_dir, out=out, in_place=in_place, emg=emg, overwrite=overwrite, cache_dir=cache_dir,
                    job=job)


def _results(emg_input: EMGInput, record: dict[str, Any], inference: Any, baselines: list, used: dict[str, Any],
             adapt_metrics: list[dict[str, Any]]) -> Any:
    """`build_results` with the provenance of a stitched model: training sessions, the read-in/read-out used."""
    rec = dict(record)
    trained = used.get("training_session")
    if trained is not None:  # the training data behind this session's read-in/read-out
        rec.update(source_file_identifier=trained["file_identifier"], source_series_path=trained["series_path"],
                   source_location=trained["location"], source_url=trained["source_url"])
    results = build_results(emg_input, rec, inference, baselines)
    prov = results.provenance
    prov["config"]["multisession"] = {"training_sessions": record["sessions"], "readin_readout": used,
                                      "union_muscles": record["muscles"]}
    if adapt_metrics:
        prov["training_metrics"]["adaptation_per_epoch"] = adapt_metrics
    if not trained and "source_url" not in prov and record.get("source_url"):
        prov["source_url"] = record["source_url"]
    results.estimates[0].parameters.update(readin_session=int(used["session_index"]), adapted=bool(used["adapted"]))
    return results


def _output_name(source: str, taken: set[str]) -> str:
    parts = urlsplit(source)
    path = parse_qs(parts.query).get("path", [None])[0] or parts.path or source
    stem = Path(unquote(path).rstrip("/")).stem or "session"
    name, k = f"{stem}_annotated.nwb", 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}_annotated.nwb"
    taken.add(name)
    return name


def fit_sources(sources: list[str], run_dir: str | Path, emg: str | None = None, cache_dir: str | None = None,
                job: JobConfig | None = None, match: str | None = None) -> Any:
    """`fit` for one or more sources: one source trains a single-session model, several a stitched one."""
    from .pipeline import fit
    from .sources.many import expand_sources

    job = job or JobConfig()
    check_job(job, run_dir)
    expanded = expand_sources(sources, match)
    if len(expanded) == 1:  # one session: its time scales may come from the data (auto preset), in the same pass
        emg_input, _ = read(expanded[0], emg, cache_dir, job.preprocess, job.chunk_s, **_read_options(job),
                            time_scales=job)
        return fit(emg_input, run_dir, job)
    return fit_many(read_sources(expanded, emg, cache_dir, job), run_dir, job)


def run_sources(sources: list[str], run_dir: str | Path, out: str | Path | None = None, in_place: bool = False,
                emg: str | None = None, overwrite: bool = False, cache_dir: str | None = None,
                job: JobConfig | None = None, match: str | None = None) -> list[Path]:
    """`run` for one or more sources; with several, `out` is a folder receiving `<name>_annotated.nwb` each."""
    from .pipeline import run
    from .sources.many import expand_sources

    job = job or JobConfig()
    check_job(job, run_dir)
    expanded = expand_sources(sources, match)
    if len(expanded) == 1:
        return [run(expanded[0], run_dir, out, in_place, emg, overwrite, cache_dir, job)]
    if (out is None) == (not in_place):
        raise WriteBackError(f"{expanded[0]}: give exactly one of --out FOLDER or --in-place")
    taken: set[str] = set()
    targets: list[Path | None] = []
    for s in expanded:  # every destination checked before any training
        if out is not None:
            if Path(out).is_file():
                raise WriteBackError(f"{out}: with several sources --out names a folder, and this is a file")
            target = Path(out) / _output_name(s, taken)
            if Path(out).is_dir():
                check_destination(s, target, False, overwrite)  # writable, free space, not already there
            else:
                refuse_existing_output(target, overwrite)
            targets.append(target)
        else:
            if not Path(s).is_file():
                raise WriteBackError(f"{s}: a remote (DANDI/URL) source is read-only; use --out FOLDER")
            check_destination(s, None, True, overwrite)  # writable, not read-only, room for the copy
            if not overwrite:
                _refuse_if_annotated(s)
            targets.append(None)
    inputs = [read(s, emg, cache_dir, job.preprocess, job.chunk_s, **_read_options(job))[0] for s in expanded]
    fit_many(inputs, run_dir, job)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    return [annotate_session(s, run_dir, out=t, in_place=in_place, emg=emg, overwrite=overwrite,
                             cache_dir=cache_dir, job=job) for s, t in zip(expanded, targets, strict=True)]


__all__ = ["read_sources", "fit_many", "fit_sources", "infer_session", "annotate_session", "run_sources"]
