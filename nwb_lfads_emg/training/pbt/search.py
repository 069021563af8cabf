"""The AutoLFADS search: Ray session, PBT scheduler set-up, the run (fresh or resumed) and the export
of the best member's checkpoint into `run_dir/best/`."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune

from ...errors import TrainingError, one_line
from ...lfads.config import LFADSConfig
from .. import checkpoint as ckpt
from ..inference import load_model
from ..search_space import (
    Explorer,
    HyperParam,
    autolfads_search_space,
    sample_population,
    validate_space,
)
from ..trainer import FitResult, _data_digest, check_data
from .history import _lineage, _r, collect_history, keep_policy_log, plot_history, summary_table
from .trainable import _STATE_FILE, METRIC, LFADSTrainable, PBTRecorder, PopulationPlateauStopper, _member_of

EXPERIMENT_NAME = "pbt"
BEST_DIR = "best"
HISTORY_FILE = "pbt_history.json"
PLOT_FILE = "pbt_progress.png"
SETTINGS_FILE = "pbt_settings.json"
RESULTS_FILE = "pbt_results.jsonl"
DATA_FILE = "pbt_data.npy"
POLICY_BEFORE_RESUME_FILE = "pbt_policy_before_resume.txt"

log = logging.getLogger(__name__)


@dataclass
class PBTResult(FitResult):
    """`FitResult` of the exported best model, plus the population's history and the winner's id."""

    pbt_history: dict[str, Any] = field(default_factory=dict)
    best_trial: str = ""
    model_dir: Path | None = None
    experiment_path: str = ""
    plot_path: Path | None = None
    wall_time_s: float = 0.0


# ---------------------------------------------------------------------------- Ray session
def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with one line when a host:port Ray address does not answer."""
    if address.startswith("ray://"):
        raise TrainingError(f"Ray address {address}: Ray Client addresses (ray://) are not supported; give the "
                            "head node's GCS address host:port and run this on a node of the cluster")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TrainingError(f"Ray address {address!r}: expected host:port of the head node (e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise TrainingError(f"Ray address {address}: cannot reach the Ray head node ({exc.strerror or exc})") \
            from None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[str]:
    """Attach to the Ray cluster at `address` (or $RAY_ADDRESS), else start an embedded local Ray.

    Yields a description; shuts Ray down afterwards only if it was started here.
    """
    if ray.is_initialized():
        yield "existing Ray session"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address and address not in ("local", "auto"):
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to attach is the user's to fix
            raise TrainingError(f"Ray address {address}: cannot attach to the Ray cluster "
                                f"({type(exc).__name__}: {one_line(exc)})") from None
        where = f"Ray cluster at {address}"
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            ray.init(address="auto" if address == "auto" else "local", num_cpus=num_cpus,
                     include_dashboard=False, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise TrainingError(f"local Ray: cannot start ({type(exc).__name__}: {one_line(exc)})") from None
        where = "embedded local Ray"
    try:
        yield where
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------- the search
def _tune_domain(p: HyperParam) -> Any:
    if p.integer:
        return tune.randint(int(p.low), int(p.high) + 1)
    if p.log:
        return tune.loguniform(p.low, p.high)
    return tune.uniform(p.low, p.high)


def _settings(data: np.ndarray, config: LFADSConfig, space: Mapping[str, HyperParam], population: int,
              interval: int, seed: int) -> dict[str, Any]:
    base = {k: v for k, v in config.to_dict().items() if k not in space}
    return {"data_sha256": _data_digest(data), "shape": list(data.shape), "config": base,
            "search_space": {k: p.to_dict() for k, p in space.items()}, "population": population,
            "perturbation_interval": interval, "seed": seed}


def fit_pbt(data: np.ndarray, config: LFADSConfig, run_dir: str | Path, population: int = 4,
            ray_address: str | None = None, gpus_per_trial: float = 0.0, cpus_per_trial: float = 1.0,
            max_generations: int = 20, perturbation_interval: int = 25, burn_in: int | None = None,
            seed: int = 0, progress: bool = True, shared_data_path: str | Path | None = None,
            search_space: Mapping[str, HyperParam] | None = None, patience_generations: int = 4,
            min_improvement: float = 5e-4, quantile_fraction: float = 0.25,
            storage_path: str | Path | None = None, resume: bool = True,
            start_from_config: bool = True) -> PBTResult:
    """Run AutoLFADS on (bins, channels) data; exports the best model to run_dir/best and returns it.

    `max_generations` * `perturbation_interval` epochs at most; selection every `perturbation_interval`
    epochs after `burn_in` epochs (default: one interval). Member 0 starts from `config`'s values
    (clipped into the bounds) unless `start_from_config` is False; the others are drawn from the
    space. All members share `seed` (same held-out entries and initial weights) and differ by their
    hyper-parameters. An interrupted search in run_dir resumes.
    """
    t_start = time.perf_counter()
    if population < 2:
        raise TrainingError(f"PBT: a population needs at least 2 members, not {population}")
    if perturbation_interval < 1 or max_generations < 1:
        raise TrainingError("PBT: perturbation_interval and max_generations must be >= 1")
    try:
        config.validate()
    except ValueError as exc:
        raise TrainingError(f"configuration: {exc}") from None
    arr = check_data(data, config.likelihood)
    space = dict(search_space) if search_space is not None else autolfads_search_space()
    try:
        validate_space(space, config)
    except ValueError as exc:
        raise TrainingError(f"PBT search space: {exc}") from None
    run_dir = Path(run_dir).resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"{run_dir}: cannot create the run directory ({exc.strerror})") from None
    # storage_path may be a URI (s3://, gs://, ...) that every node can write to
    remote = storage_path is not None and "://" in str(storage_path)
    storage = str(storage_path).rstrip("/") if remote else str(Path(storage_path or run_dir).resolve())
    exp_uri = f"{storage}/{EXPERIMENT_NAME}"
    exp_path = Path(storage) / EXPERIMENT_NAME  # only read when local
    burn_in = perturbation_interval if burn_in is None else int(burn_in)
    max_iterations = int(max_generations * perturbation_interval)

    settings = _settings(arr, config, space, population, perturbation_interval, seed)
    settings_path = run_dir / SETTINGS_FILE
    if settings_path.is_file() and (remote or (exp_path / "tuner.pkl").exists()):
        old = json.loads(settings_path.read_text())
        if resume and old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in settings if json.dumps(old.get(k)) != json.dumps(settings[k]))
            raise TrainingError(f"{run_dir}: holds a different PBT search (differs in {', '.join(diff)}); "
                                "use another run directory")
    if not resume and not remote and exp_path.exists():
        shutil.rmtree(exp_path)
    if not resume:
        (run_dir / POLICY_BEFORE_RESUME_FILE).unlink(missing_ok=True)
    settings_path.write_text(json.dumps(settings, indent=1))

    data_path: str | None = None
    if shared_data_path is not None:
        p = Path(shared_data_path)
        if p.is_dir() or p.suffix != ".npy":
            p = p / DATA_FILE
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.is_file() or _data_digest(np.load(p)) != settings["data_sha256"]:
                np.save(p, arr)
        except OSError as exc:
            raise TrainingError(f"{p}: cannot write the shared training data ({exc.strerror or exc})") from None
        data_path = str(p.resolve())

    points = sample_population(space, population, seed=seed,
                               first=config.to_dict() if start_from_config else None)
    device = "cuda" if gpus_per_trial > 0 else "cpu"
    threads = max(1, int(cpus_per_trial))

    _quiet_ray_loggers()
    with ray_session(ray_address) as where:
        from ray.tune.schedulers import PopulationBasedTraining
        from ray.tune.search.basic_variant import BasicVariantGenerator

        log.info("PBT on %s", where)
        trainable = tune.with_resources(
            tune.with_parameters(LFADSTrainable, data=None if data_path else arr, data_path=data_path,
                                 base_config=config.to_dict(), seed=seed, device=device, threads=threads),
            {"cpu": float(cpus_per_trial), "gpu": float(gpus_per_trial)},
        )
        recorder = PBTRecorder(run_dir / RESULTS_FILE, population * max_iterations, perturbation_interval,
                               progress)
        stopper = PopulationPlateauStopper(perturbation_interval, max_iterations, patience_generations,
                                           min_improvement, min_generations=max(1, burn_in // perturbation_interval))
        if resume and tune.Tuner.can_restore(exp_uri):
            if not remote:  # Ray's resume unpickles state: only from a folder no one else may write
                ckpt.refuse_shared_dir(exp_path, "the PBT search")
            log.info("resuming the PBT search in %s", exp_uri)
            if not remote:
                keep_policy_log(exp_path, run_dir / POLICY_BEFORE_RESUME_FILE)
            tuner = tune.Tuner.restore(exp_uri, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            scheduler = PopulationBasedTraining(
                time_attr="training_iteration",
                perturbation_interval=perturbation_interval,
                burn_in_period=burn_in,
                hyperparam_mutations={name: _tune_domain(p) for name, p in space.items()},
                quantile_fraction=quantile_fraction,
                resample_probability=0.0,  # AutoLFADS only perturbs; the explore function does it
                perturbation_factors=(1.0, 1.0),
                custom_explore_fn=Explorer(space, seed=seed + 1),
                synch=False,  # Ray's synchronous mode can deadlock when a search is resumed
            )
            tuner = tune.Tuner(
                trainable,
                param_space={name: _tune_domain(p) for name, p in space.items()},
                tune_config=tune.TuneConfig(
                    metric=METRIC, mode="min", scheduler=scheduler, num_samples=population,
                    search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=seed),
                    # reuse the trial actors only on the embedded local Ray: on a cluster a reused actor
                    # on one node can keep taking every paused member before another node's actor has
                    # started, leaving that node idle (actor start-up is small next to a real interval)
                    reuse_actors=where == "embedded local Ray",
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT_NAME, storage_path=storage, stop=stopper, verbose=0,
                    callbacks=[recorder],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=4, checkpoint_frequency=perturbation_interval,
                                                            checkpoint_at_end=True),
                    failure_config=tune.FailureConfig(max_failures=1),
                ),
            )
        try:
            grid = tuner.fit()
        finally:
            recorder.close()
        results = [grid[i] for i in range(len(grid))]
        if grid.num_terminated + grid.num_errors < len(grid):
            raise TrainingError(f"PBT: the search was interrupted; its state is saved in {exp_uri}: run again "
                                "with the same run directory to resume it")
        errors = [r.error for r in results if r.error is not None]
        if errors and len(errors) == len(results):
            raise TrainingError(f"PBT: every trial failed; first error: {one_line(errors[0], 300, last_line=True)}")
        for err in errors:
            log.warning("PBT: a trial failed: %s", one_line(err, 300, last_line=True))
        history = collect_history(run_dir / RESULTS_FILE, results, exp_path, space, perturbation_interval,
                                  run_dir / POLICY_BEFORE_RESUME_FILE)
        history["experiment_path"] = exp_uri
        last = [t["iterations"][-1] for t in history["trials"].values() if t["iterations"]]
        history["stop_reason"] = (f"reached {max_iterations} epochs" if last and min(last) >= max_iterations
                                  else f"best {METRIC} improved by less than {min_improvement:g} over "
                                       f"{patience_generations} generations")
        history["ray"] = where
        best = _export_best(results, run_dir / BEST_DIR, history)
    history["wall_time_s"] = time.perf_counter() - t_start
    (run_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    plot_path = None
    try:
        plot_path = plot_history(history, run_dir / PLOT_FILE)
    except Exception as exc:  # noqa: BLE001 - a missing plot must not lose a finished search
        log.warning("PBT: could not draw the progress plot (%s)", exc)
    if progress:
        print(summary_table(history))
    model, cfg = load_model(run_dir / BEST_DIR)
    return PBTResult(model=model, config=cfg, metrics=best["metrics"], run_dir=run_dir,
                     best_val_loss=float(best[METRIC]), weights_sha256=best["sha256"], device=device, seed=seed,
                     best_epoch=int(best["iteration"]), pbt_history=history, best_trial=best["trial"],
                     model_dir=run_dir / BEST_DIR, experiment_path=exp_uri, plot_path=plot_path,
                     wall_time_s=history["wall_time_s"])


def _quiet_ray_loggers() -> None:
    for name in ("ray.tune", "ray.train", "ray.air", "ray.tune.schedulers.pbt"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------- export of the best model
def _export_best(results: list[Any], best_dir: Path, history: dict[str, Any]) -> dict[str, Any]:
    """Copy the checkpoint with the lowest metric over all members into best_dir (trainer's format)."""
    candidates = []
    for res in results:
        for cp, metrics in (res.best_checkpoints or []):
            value = metrics.get(METRIC)
            if value is not None and math.isfinite(value):
                candidates.append((float(value), cp, metrics))
    candidates.sort(key=lambda c: c[0])
    for value, cp, metrics in candidates:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = cp.to_directory(os.path.join(tmp, "ckpt"))
                state = ckpt.load_checkpoint(Path(local) / _STATE_FILE)
        except Exception as exc:  # noqa: BLE001 - a pruned or unreadable checkpoint: take the next best
            log.debug("PBT: skipping checkpoint %s (%s)", cp, exc)
            continue
        tstate = state["trainer"]
        if best_dir.exists():
            shutil.rmtree(best_dir)
        best_dir.mkdir(parents=True)
        _, sha = ckpt.export_weights(best_dir, tstate["model"], tstate["config"], int(tstate["n_channels"]))
        (best_dir / "config.json").write_text(json.dumps(tstate["config"], indent=1))
        trial = str(metrics.get("trial_id", ""))
        iteration = int(metrics.get("training_iteration", tstate["epoch"]))
        lineage_metrics = [dict(m) for m in tstate.get("metrics", [])]
        info = {"trial": trial, "member": _member_of(trial), "iteration": iteration, METRIC: value,
                "val_loss": _r(metrics.get("val_loss")), "hp": {k: _r(v) for k, v in (metrics.get("hp") or {}).items()},
                "sha256": sha, "lineage": _lineage(history, trial, iteration)}
        (best_dir / "pbt_winner.json").write_text(json.dumps(info, indent=1))
        history["winner"] = info
        return {**info, "metrics": lineage_metrics}
    raise TrainingError(f"PBT: no readable checkpoint of any trial under {history['experiment_path']}")
