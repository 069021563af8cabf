"""AutoLFADS: population-based training of LFADS with Ray Tune (embedded local Ray, or a Ray cluster).

Ray Tune does the work: `PopulationBasedTraining` (asynchronous: each member is ranked against the
others every `perturbation_interval` epochs on the smoothed held-out sample-validation loss; one in
the bottom quarter copies the checkpoint of one in the top quarter, then explores), the
trial checkpointing, `Tuner.restore` for an interrupted search. This module adds the LFADS
trainable, the AutoLFADS explore rule (multiplicative perturbation within bounds, see
`search_space`), a stopper on population stagnation, the history for the provenance record, the
export of the best model into `run_dir/best/` (readable by `trainer.load_model`) and a plot.

Data reach the trials through Ray's object store (`tune.with_parameters`) unless `shared_data_path`
names a file on a filesystem every node sees. Checkpoints live under `run_dir/pbt/`; on a cluster of
several machines `run_dir` (or `storage_path`) must be on a shared filesystem.
"""

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
import torch
from ray import tune

from ..errors import TrainingError
from ..lfads.config import MUTABLE_HYPERPARAMETERS, LFADSConfig
from . import checkpoint as ckpt
from .search_space import (
    Explorer,
    HyperParam,
    autolfads_search_space,
    sample_population,
    validate_space,
)
from .trainer import FitResult, Trainer, _data_digest, check_data, load_model

METRIC = "val_loss_smoothed"
EXPERIMENT_NAME = "pbt"
BEST_DIR = "best"
HISTORY_FILE = "pbt_history.json"
PLOT_FILE = "pbt_progress.png"
SETTINGS_FILE = "pbt_settings.json"
RESULTS_FILE = "pbt_results.jsonl"
DATA_FILE = "pbt_data.npy"
_STATE_FILE = "trainer_state.pt"

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


# ---------------------------------------------------------------------------- the Ray Tune trainable
def _member_of(trial_id: str) -> int:
    """Population index from a Tune trial id ('<prefix>_00003' -> 3)."""
    try:
        return int(str(trial_id).rsplit("_", 1)[-1])
    except ValueError:
        return 0


class LFADSTrainable(tune.Trainable):
    """One population member: a `Trainer` advanced one epoch per Tune iteration."""

    def setup(self, config: dict[str, Any], data: np.ndarray | None = None, data_path: str | None = None,
              base_config: dict[str, Any] | None = None, seed: int = 0, device: str = "cpu",
              threads: int = 1) -> None:
        torch.set_num_threads(max(1, int(threads)))
        if data is None:
            if data_path is None:
                raise TrainingError("PBT trial: neither data nor a shared data path was given")
            try:
                data = np.load(data_path)
            except OSError as exc:
                raise TrainingError(f"{data_path}: cannot read the shared training data on node "
                                    f"{_node_id()} ({exc})") from None
        self._data = np.array(data, dtype=np.float32)  # own, writable copy (object-store arrays are read-only)
        self._base = dict(base_config or {})
        self._seed = int(seed)
        self._device = device
        self._origin: str | None = None
        self._diverged: str | None = None
        self._build()

    def _hp(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k in MUTABLE_HYPERPARAMETERS}

    def _build(self) -> None:
        cfg = LFADSConfig.from_dict({**self._base, **self._hp()})
        self.trainer = Trainer(self._data, cfg, device=self._device, seed=self._seed)
        self._built_for = self.trial_id

    def step(self) -> dict[str, Any]:
        if self._diverged is None:
            try:
                metrics = self.trainer.train_epoch()
            except TrainingError as exc:  # e.g. NaN loss: rank last until an exploit replaces this member
                self._diverged = str(exc)
        if self._diverged is not None:
            metrics = {"epoch": self.trainer.epoch, METRIC: math.inf, "val_loss": math.inf, "diverged": True}
        out: dict[str, Any] = {k: v for k, v in metrics.items()
                               if isinstance(v, (int, float, bool)) and k != "epoch"}
        out["epoch"] = int(metrics["epoch"])
        out["hp"] = dict(self.trainer.hyperparameters())
        out["node_id"] = _node_id()
        out["member"] = _member_of(self.trial_id)
        out["exploited_from"] = self._origin or ""
        self._origin = None
        return out

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {"trainer": self.trainer.state_dict(), "trial_id": self.trial_id,
                 "iteration": self.iteration, METRIC: self.trainer.val_smoothed}
        ckpt.save_atomic(state, Path(checkpoint_dir) / _STATE_FILE)

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        if checkpoint is None or isinstance(checkpoint, dict):
            raise TrainingError("PBT trial: checkpoint format not understood")
        state = ckpt.load_checkpoint(Path(checkpoint) / _STATE_FILE)
        self.trainer.load_state_dict(state["trainer"])
        self._diverged = None
        self.trainer.set_hyperparameters(self._hp())  # an exploit brings perturbed values in the config
        source = str(state.get("trial_id", ""))
        if source and source != self.trial_id:
            self._origin = source
            # continue the copied lineage with this member's own batch order and masks
            self.trainer.generator.manual_seed(self._seed + 1_000_003 * (_member_of(self.trial_id) + 1)
                                               + int(state.get("iteration", 0)))

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self.config = new_config
        self._origin = None
        self._diverged = None
        self._build()  # a reused actor may serve another member: start clean, a restore follows if any
        return True



def _node_id() -> str:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return ""


# ---------------------------------------------------------------------------- stopper, progress
class PopulationPlateauStopper(tune.Stopper):
    """Stop the search when the population's best metric has improved by less than `min_improvement`
    over `patience` generations, or when trials reach `max_iterations` (a Tune Stopper)."""

    def __init__(self, interval: int, max_iterations: int, patience: int = 4, min_improvement: float = 5e-4,
                 min_generations: int = 1) -> None:
        self.interval = int(interval)
        self.max_iterations = int(max_iterations)
        self.patience = int(patience)
        self.min_improvement = float(min_improvement)
        self.min_generations = int(min_generations)
        self.best = math.inf
        self.improved_generation = 0
        self.generation = 0
        self.reason = ""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        it = int(result.get("training_iteration", 0))
        value = result.get(METRIC)
        gen = it // self.interval
        self.generation = max(self.generation, gen)
        if value is not None and math.isfinite(value) and value < self.best - self.min_improvement:
            self.best = float(value)
            self.improved_generation = gen
        if it >= self.max_iterations:
            self.reason = self.reason or f"reached {self.max_iterations} epochs"
            return True
        return False

    def stop_all(self) -> bool:
        if self.generation >= max(self.min_generations, 1) and \
                self.generation - self.improved_generation >= self.patience:
            self.reason = (f"best {METRIC} improved by less than {self.min_improvement:g} over "
                           f"{self.patience} generations")
            return True
        return False


_RECORD_KEYS = ("trial_id", "training_iteration", METRIC, "val_loss", "train_recon", "hp", "node_id",
                "exploited_from", "time_total_s", "member")


class PBTRecorder(tune.Callback):
    """Driver-side Tune callback: appends every trial result to a JSON-lines file (the history's
    source, which survives a resume) and shows progress (tqdm bar, one line per exploit)."""

    def __init__(self, path: str | Path, total: int, interval: int, progress: bool) -> None:
        self.path = str(path)
        self.total = total
        self.interval = interval
        self.progress = progress
        self.bar: Any = None
        self.best = math.inf
        self.exploits = 0
        self.generation = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["bar"] = None
        return state

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = {k: result.get(k) for k in _RECORD_KEYS}
        row["trial_id"] = trial.trial_id
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        value = result.get(METRIC)
        if value is not None and math.isfinite(value):
            self.best = min(self.best, float(value))
        self.generation = max(self.generation, int(result.get("training_iteration", 0)) // self.interval)
        if result.get("exploited_from"):
            self.exploits += 1
        if not self.progress:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="AutoLFADS", unit="epoch", dynamic_ncols=True)
        if result.get("exploited_from"):
            hp = ", ".join(f"{k}={_fmt(v)}" for k, v in (result.get("hp") or {}).items())
            self.bar.write(f"[pbt] generation {self.generation}: member {_member_of(trial.trial_id)} copied member "
                           f"{_member_of(result['exploited_from'])} and explored: {hp}")
        self.bar.update(1)
        self.bar.set_postfix(gen=self.generation, best=f"{self.best:.5f}", exploits=self.exploits)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the progress bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


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
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        where = f"Ray cluster at {address}"
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            ray.init(address="auto" if address == "auto" else "local", num_cpus=num_cpus,
                     include_dashboard=False, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise TrainingError(f"local Ray: cannot start ({type(exc).__name__}: {exc})") from None
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
            raise TrainingError(f"PBT: every trial failed; first error: {_one_line(errors[0])}")
        for err in errors:
            log.warning("PBT: a trial failed: %s", _one_line(err))
        history = collect_history(run_dir / RESULTS_FILE, results, exp_path, space, perturbation_interval)
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


def _one_line(err: Any) -> str:
    text = str(err).strip().splitlines()
    last = [line for line in text if line.strip()]
    return (last[-1] if last else type(err).__name__)[:300]


def _quiet_ray_loggers() -> None:
    for name in ("ray.tune", "ray.train", "ray.air", "ray.tune.schedulers.pbt"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------- history
def read_results(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The recorded results grouped by trial, in arrival order (a torn last line is skipped)."""
    out: dict[str, list[dict[str, Any]]] = {}
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.setdefault(str(row["trial_id"]), []).append(row)
    return out


def _clean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop rows replayed after a resume (an iteration reported again without an exploit)."""
    kept: list[dict[str, Any]] = []
    for row in rows:
        it = int(row.get("training_iteration", 0))
        if kept and it <= int(kept[-1]["training_iteration"]):
            if not row.get("exploited_from"):
                kept = [r for r in kept if int(r["training_iteration"]) < it]
            elif any(r.get("exploited_from") == row["exploited_from"] and r["training_iteration"] == it
                     for r in kept):
                continue  # the same copy restored again after a resume
        kept.append(row)
    return kept


def _read_policy_log(exp_path: Path) -> list[dict[str, Any]]:
    """Ray's own record of exploit/explore steps (pbt_global.txt)."""
    path = Path(exp_path) / "pbt_global.txt"
    out = []
    if path.is_file():  # (a local experiment directory; not read from remote storage)
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, ValueError):
                target, source, target_it, source_it, old_cfg, new_cfg = json.loads(line)
                out.append({"target_tag": target, "source_tag": source, "target_iteration": target_it,
                            "source_iteration": source_it, "source_config": old_cfg, "new_config": new_cfg})
    return out


def _r(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.7g}") if math.isfinite(v) else None
    return v


def collect_history(results_file: str | Path, results: list[Any], exp_path: Path,
                    space: Mapping[str, HyperParam], interval: int) -> dict[str, Any]:
    """JSON-serialisable record: per trial its metric per epoch, hyper-parameter segments and exploits."""
    trials: dict[str, Any] = {}
    exploits: list[dict[str, Any]] = []
    recorded = read_results(results_file)
    for res in results:
        tid = str(res.metrics.get("trial_id") or "")
        rows = _clean_rows(recorded.get(tid, []))
        segments: list[dict[str, Any]] = []
        prev_hp: dict[str, Any] | None = None
        for row in rows:
            it = int(row["training_iteration"])
            hp = {k: _r(v) for k, v in (row.get("hp") or {}).items() if k in space}
            if row.get("exploited_from"):
                exploits.append({"trial": tid, "source": row["exploited_from"], "iteration": it - 1,
                                 "hp_before": prev_hp, "hp_after": hp})
            if not segments or hp != segments[-1]["hp"] or row.get("exploited_from"):
                segments.append({"start": it, "end": it, "hp": hp, "exploited_from": row.get("exploited_from") or None})
            else:
                segments[-1]["end"] = it
            prev_hp = hp
        trials[tid] = {
            "member": _member_of(tid),
            "iterations": [int(r["training_iteration"]) for r in rows],
            METRIC: [_r(r.get(METRIC)) for r in rows],
            "val_loss": [_r(r.get("val_loss")) for r in rows],
            "hp_segments": segments,
            "initial_hp": segments[0]["hp"] if segments else {},
            "final_hp": segments[-1]["hp"] if segments else {},
            "nodes": sorted({str(r.get("node_id", "")) for r in rows if r.get("node_id")}),
            "status": "error" if res.error is not None else "ok",
        }
    generations = max((max(t["iterations"], default=0) for t in trials.values()), default=0) // interval
    return {
        "metric": METRIC, "mode": "min", "population": len(results), "perturbation_interval": interval,
        "generations": generations, "search_space": {k: p.to_dict() for k, p in space.items()},
        "trials": trials, "exploits": exploits, "ray_policy_log": _read_policy_log(exp_path),
        "experiment_path": str(exp_path),
    }


def _lineage(history: dict[str, Any], trial: str, iteration: int) -> list[dict[str, Any]]:
    """The winner's hyper-parameter trajectory through the members it copied, oldest first."""
    out: list[dict[str, Any]] = []
    seen = 0
    while trial in history["trials"] and seen < 1000:
        seen += 1
        segs = [s for s in history["trials"][trial]["hp_segments"] if s["start"] <= iteration]
        src = None
        for s in reversed(segs):
            out.append({"trial": trial, "start": s["start"], "end": min(s["end"], iteration), "hp": s["hp"]})
            if s["exploited_from"]:
                src, iteration = s["exploited_from"], s["start"] - 1
                break
        if src is None:
            break
        trial = src
    return list(reversed(out))


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


# ---------------------------------------------------------------------------- summary and plot
def summary_table(history: dict[str, Any]) -> str:
    """A text table: one row per member with its final and best metric, exploits and nodes."""
    n_exploits: dict[str, int] = {}
    for e in history["exploits"]:
        n_exploits[e["trial"]] = n_exploits.get(e["trial"], 0) + 1
    winner = history.get("winner", {}).get("trial")
    lines = [f"AutoLFADS: {history['population']} members, {history['generations']} generations, "
             f"{len(history['exploits'])} exploit/explore steps ({history.get('stop_reason', '')})",
             f"{'member':>6} {'final ' + METRIC:>24} {'best':>10} {'exploits':>8} {'nodes':>5}"]
    for tid, t in sorted(history["trials"].items(), key=lambda kv: kv[1]["member"]):
        vals = [v for v in t[METRIC] if v is not None]
        mark = " *" if tid == winner else ""
        lines.append(f"{t['member']:>6} {vals[-1] if vals else float('nan'):>24.6f} "
                     f"{min(vals) if vals else float('nan'):>10.6f} {n_exploits.get(tid, 0):>8} "
                     f"{len(t['nodes']):>5}{mark}")
    if winner:
        w = history["winner"]
        lines.append(f"best: member {w['member']} at epoch {w['iteration']}, {METRIC} {w[METRIC]:.6f}; "
                     + ", ".join(f"{k}={_fmt(v)}" for k, v in w["hp"].items()))
    return "\n".join(lines)


def plot_history(history: dict[str, Any], path: str | Path) -> Path:
    """Metric per member over epochs (exploits drawn as jumps from the copied member) and the
    hyper-parameter trajectories; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = history["search_space"]
    n_hp = len(space)
    ncols = 4
    nrows = 1 + math.ceil(n_hp / ncols)
    fig = plt.figure(figsize=(14, 3.2 * nrows))
    gs = fig.add_gridspec(nrows, ncols)
    ax = fig.add_subplot(gs[0, :])
    cmap = plt.get_cmap("tab10")
    winner = history.get("winner", {}).get("trial")
    trials = history["trials"]
    colour = {tid: cmap(t["member"] % 10) for tid, t in trials.items()}
    for tid, t in trials.items():
        its, vals = t["iterations"], t[METRIC]
        # split the trace at exploits so a copied trajectory is drawn as a jump
        starts = [0] + [i for i in range(1, len(its)) if its[i] <= its[i - 1] or
                        (t["hp_segments"] and any(s["start"] == its[i] and s["exploited_from"]
                                                  for s in t["hp_segments"]))]
        bounds = starts + [len(its)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            ax.plot(its[a:b], vals[a:b], color=colour[tid], lw=2.5 if tid == winner else 1.2,
                    label=f"member {t['member']}" + (" (best)" if tid == winner else "") if a == 0 else None)
    for e in history["exploits"]:
        src = trials.get(e["source"])
        dst = trials.get(e["trial"])
        if not src or not dst:
            continue
        it = e["iteration"]
        if it in src["iterations"] and it + 1 in dst["iterations"]:
            y0 = src[METRIC][src["iterations"].index(it)]
            y1 = dst[METRIC][dst["iterations"].index(it + 1)]
            ax.plot([it, it + 1], [y0, y1], ls=":", color=colour[e["trial"]], lw=1)
            ax.plot([it], [y0], marker="o", ms=4, color=colour[e["trial"]])
    k = history["perturbation_interval"]
    for g in range(1, history["generations"] + 1):
        ax.axvline(g * k, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(f"epoch (generation lines every {k})")
    ax.set_ylabel(METRIC)
    ax.set_title(f"AutoLFADS population ({len(history['exploits'])} exploit/explore steps; dotted = copy)")
    ax.legend(fontsize=8, ncol=min(len(trials), 6))
    for j, (name, p) in enumerate(space.items()):
        axh = fig.add_subplot(gs[1 + j // ncols, j % ncols])
        for tid, t in trials.items():
            xs, ys = [], []
            for s in t["hp_segments"]:
                xs += [s["start"], s["end"]]
                ys += [s["hp"].get(name), s["hp"].get(name)]
            axh.plot(xs, ys, color=colour[tid], lw=2 if tid == winner else 1)
        if p.get("log"):
            axh.set_yscale("log")
        axh.set_title(name, fontsize=9)
        axh.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["PBTResult", "fit_pbt", "collect_history", "plot_history", "summary_table", "ray_session",
           "PopulationPlateauStopper", "HyperParam", "autolfads_search_space", "METRIC", "LFADSTrainable"]
