"""The AutoLFADS search: generations of a fixed number of epochs on Ray, truncation selection between
them, the population's state in the run directory (resumable), and the export of the best model.

Each generation, every member trains `perturbation_interval` epochs as a Ray task; the driver waits
for all of them (a synchronous barrier, so members are always compared at the same epoch), ranks
them on the smoothed held-out loss and replaces the worst `quantile_fraction` by copies of members
drawn from the best `quantile_fraction`, with perturbed hyper-parameters. Member 0 (the anchor)
trains the configuration's own hyper-parameters throughout and is never replaced, so the exported
model (the lowest held-out loss of any member at any epoch) is never worse on that loss than one
model of the configuration trained as long.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import TrainingError, one_line
from ...files import write_atomic
from ...lfads.config import MUTABLE_HYPERPARAMETERS, LFADSConfig
from .. import checkpoint as ckpt
from ..search_space import (
    Explorer,
    HyperParam,
    autolfads_search_space,
    sample_population,
    validate_space,
    widen_to_include,
)
from ..trainer import FitResult, _data_digest, check_data
from .history import _lineage, _r, build_history, plot_history, summary_table
from .trainable import METRIC, PopulationPlateauStopper, _fmt, member_name, sha256_bytes, train_member

EXPERIMENT_NAME = "pbt"
BEST_DIR = "best"
HISTORY_FILE = "pbt_history.json"
PLOT_FILE = "pbt_progress.png"
SETTINGS_FILE = "pbt_settings.json"
STATE_FILE = "population.json"
CHAMPION_FILE = "champion.pt"
DATA_FILE = "pbt_data.npy"
STATE_FORMAT = "nwb-lfads-emg-pbt/1"
SELECTION = "truncation"

log = logging.getLogger(__name__)


@dataclass
class PBTResult(FitResult):
    """`FitResult` of the exported best model, plus the population's history and the winner's name."""

    pbt_history: dict[str, Any] = field(default_factory=dict)
    best_trial: str = ""
    model_dir: Path | None = None
    experiment_path: str = ""
    plot_path: Path | None = None
    wall_time_s: float = 0.0
    seconds: float = 0.0


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
    import ray

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


# ---------------------------------------------------------------------------- population size, selection
def default_population(device: str, n_cpus: int, n_gpus: int = 0) -> tuple[int, str]:
    """(population, the rule that chose it) for the compute at hand: on CUDA 20 per search (10 per GPU
    beyond two GPUs), the paper's scale; on CPU one member per core, 4 to 6 (a CPU trains them a few at a time)."""
    if device.startswith("cuda") and n_gpus > 0:
        n = max(20, 10 * int(n_gpus))
        return n, f"CUDA: {n_gpus} GPU(s) -> max(20, 10 per GPU) = {n}"
    n = int(min(6, max(4, n_cpus)))
    return n, f"CPU: {n_cpus} core(s) -> one per core, clipped to 4-6 = {n}"


def truncation_selection(values: Mapping[int, float], fraction: float, protected: Sequence[int],
                         rng: random.Random) -> list[tuple[int, int]]:
    """(target, source) pairs: each member ranked in the worst `fraction` (at least one, at most half)
    copies one drawn from the best `fraction`; `protected` members are never targets; ties by index."""
    order = sorted(values, key=lambda i: (values[i] if math.isfinite(values[i]) else math.inf, i))
    k = min(max(1, int(round(fraction * len(order)))), len(order) // 2)
    top = order[:k]
    return [(t, rng.choice(top)) for t in order[len(order) - k:] if t not in protected]


# ---------------------------------------------------------------------------- data and its description
def _spec(data: Any, config: LFADSConfig, muscles: Sequence[Sequence[str]] | None, breaks: Sequence[int] | None,
          readin_dim: int | None, seed: int) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(what a member needs to build its trainer, the checked data, the data's description for the settings)."""
    base = config.to_dict()
    if muscles is not None:
        if not isinstance(data, (list, tuple)) or len(data) != len(muscles) or len(data) < 1:
            raise TrainingError("PBT over several sessions: give one (bins, channels) array per muscle list")
        arrays = [check_data(x, config.likelihood, what=f"training data of session {k}") for k, x in enumerate(data)]
        for k, (a, m) in enumerate(zip(arrays, muscles, strict=True)):
            if a.shape[1] != len(m):
                raise TrainingError(f"session {k}: {a.shape[1]} channels but {len(m)} muscle names")
        spec = {"kind": "multi", "config": base, "seed": int(seed), "muscles": [list(m) for m in muscles],
                "readin_dim": readin_dim}
        described = {"data_sha256": [_data_digest(a) for a in arrays], "shape": [list(a.shape) for a in arrays],
                     "muscles": spec["muscles"], "readin_dim": readin_dim}
        return spec, arrays, described
    arr = check_data(data, config.likelihood)
    spec = {"kind": "single", "config": base, "seed": int(seed), "breaks": sorted(int(b) for b in breaks or [])}
    return spec, arr, {"data_sha256": _data_digest(arr), "shape": list(arr.shape), "breaks": spec["breaks"]}


def _write_shared_data(target: str | Path, arrays: Any, kind: str) -> str:
    p = Path(target)
    suffix = ".npz" if kind == "multi" else ".npy"
    if p.is_dir() or p.suffix != suffix:
        p = p / Path(DATA_FILE).with_suffix(suffix)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "multi":
            np.savez(p, **{f"s{k}": a for k, a in enumerate(arrays)})
        elif not p.is_file() or _data_digest(np.load(p)) != _data_digest(arrays):
            np.save(p, arrays)
    except OSError as exc:
        raise TrainingError(f"{p}: cannot write the shared training data ({exc.strerror or exc})") from None
    return str(p.resolve())


# ---------------------------------------------------------------------------- the population's record
def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=_r).encode())


def _read_state(exp_path: Path) -> dict[str, Any] | None:
    path = exp_path / STATE_FILE
    if not path.is_file():
        return None
    ckpt.refuse_shared_dir(exp_path, "the PBT search")  # states written by someone else are not trusted
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: cannot read the PBT population's record ({exc}); use --pbt-restart or "
                            "another --run-dir") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not an nwb-lfads-emg PBT record; use --pbt-restart or another --run-dir")
    return state


def _state_path(member: int, generation: int) -> str:
    return f"{member_name(member)}/gen_{generation:04d}.pt"


def _prune(exp_path: Path, state: dict[str, Any]) -> None:
    """Delete member states no member continues from (the champion has its own file)."""
    keep = {m["state"] for m in state["members"] if m["state"]}
    for folder in exp_path.glob("member_*"):
        for f in folder.glob("gen_*.pt"):
            rel = f"{folder.name}/{f.name}"
            if rel not in keep:
                f.unlink(missing_ok=True)
                f.with_suffix(".json").unlink(missing_ok=True)


def _best_in_state(members: list[dict[str, Any]]) -> float:
    values = [m[METRIC] for m in members if m.get(METRIC) is not None and math.isfinite(m[METRIC])]
    return min(values, default=math.inf)


def _rebuild_stopper(state: dict[str, Any], interval: int, max_iterations: int, patience: int,
                     min_improvement: float, burn_in: int) -> PopulationPlateauStopper:
    stopper = PopulationPlateauStopper(interval, max_iterations, patience, min_improvement,
                                       min_generations=max(1, burn_in // interval))
    for name, rows in state["rows"].items():
        for row in rows:
            stopper(name, row)
    return stopper


# ---------------------------------------------------------------------------- the search
def fit_pbt(data: Any, config: LFADSConfig, run_dir: str | Path, population: int | None = None,
            ray_address: str | None = None, gpus_per_trial: float = 0.0, cpus_per_trial: float = 1.0,
            max_generations: int = 20, perturbation_interval: int = 25, burn_in: int | None = None,
            seed: int = 0, progress: bool = True, shared_data_path: str | Path | None = None,
            search_space: Mapping[str, HyperParam] | None = None, patience_generations: int = 4,
            min_improvement: float = 5e-4, quantile_fraction: float = 0.25,
            storage_path: str | Path | None = None, resume: bool = True, start_from_config: bool = True,
            muscles: Sequence[Sequence[str]] | None = None, breaks: Sequence[int] | None = None,
            readin_dim: int | None = None,
            on_generation: Callable[[int, dict[str, Any]], None] | None = None) -> PBTResult:
    """Run AutoLFADS on (bins, channels) data (or, with `muscles`, on a list of sessions: one stitched
    model); exports the best model to run_dir/best and returns it.

    `max_generations` generations of `perturbation_interval` epochs; truncation selection after
    each generation from `burn_in` epochs on (default: one generation). `population` None: sized for
    the compute (`default_population`). Member 0 trains `config`'s own hyper-parameters and is never
    replaced unless `start_from_config` is False (the space is widened to include them, except a
    log-scaled one at 0); the others are drawn from the space. All members
    share `seed` (same held-out entries and initial weights). An interrupted search in run_dir resumes
    from its last finished member-generation; `on_generation(g, record)` is called after each one.
    """
    import ray

    t_start = time.perf_counter()
    if population is not None and population < 2:
        raise TrainingError(f"PBT: a population needs at least 2 members, not {population} (--population)")
    if perturbation_interval < 1 or max_generations < 1:
        raise TrainingError("PBT: perturbation_interval and max_generations must be >= 1 (--pbt-interval)")
    if not 0.0 < quantile_fraction <= 0.5:
        raise TrainingError(f"PBT: quantile fraction {quantile_fraction} must be in (0, 0.5] (--pbt-quantile)")
    try:
        config.validate()
    except ValueError as exc:
        raise TrainingError(f"configuration: {exc}") from None
    spec, arrays, described = _spec(data, config, muscles, breaks, readin_dim, seed)
    space = dict(search_space) if search_space is not None else autolfads_search_space()
    widened: list[str] = []
    if start_from_config:  # the preset member's values lie inside the space its copies explore
        space, widened = widen_to_include(space, {name: getattr(config, name) for name in space})
    try:
        validate_space(space, config)
    except ValueError as exc:
        raise TrainingError(f"PBT search space: {exc}") from None
    run_dir = Path(run_dir).resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"{run_dir}: cannot create the run directory ({exc.strerror})") from None
    if storage_path is not None and "://" in str(storage_path):
        raise TrainingError(f"--pbt-storage {storage_path}: give a local folder; the members' states travel "
                            "through Ray to this machine, so no storage shared by the nodes is needed")
    exp_path = Path(storage_path or run_dir).resolve() / EXPERIMENT_NAME
    if (exp_path / "tuner.pkl").exists():
        if resume:
            raise TrainingError(f"{exp_path}: holds a PBT search of an earlier version (Ray Tune), which cannot be "
                                "resumed; use --pbt-restart or another --run-dir")
        shutil.rmtree(exp_path)
    burn_in = perturbation_interval if burn_in is None else int(burn_in)
    max_iterations = int(max_generations * perturbation_interval)
    settings_path = run_dir / SETTINGS_FILE

    with ray_session(ray_address) as where:
        saved = _read_state(exp_path) if resume else None
        if not resume and exp_path.exists():
            shutil.rmtree(exp_path)
        if population is not None:
            n, rule = int(population), "given (--population)"
        elif saved is not None:
            n, rule = len(saved["members"]), saved.get("population_rule", "")
        else:
            res = ray.cluster_resources()
            n, rule = default_population("cuda" if gpus_per_trial > 0 else "cpu", int(res.get("CPU", 1)),
                                         int(res.get("GPU", 0)))
        settings = {**described, "kind": spec["kind"], "config": {k: v for k, v in spec["config"].items()
                                                                  if k not in space},
                    "search_space": {k: p.to_dict() for k, p in space.items()}, "population": n,
                    "perturbation_interval": perturbation_interval, "seed": seed, "burn_in": burn_in,
                    "selection": SELECTION, "quantile_fraction": quantile_fraction,
                    "anchor": bool(start_from_config)}
        settings = json.loads(json.dumps(settings))
        if saved is not None and settings_path.is_file():
            old = json.loads(settings_path.read_text())
            if old != settings:
                diff = sorted(k for k in set(settings) | set(old) if json.dumps(old.get(k)) != json.dumps(settings.get(k)))
                raise TrainingError(f"{run_dir}: holds a different PBT search (differs in {', '.join(diff)}); "
                                    "use another --run-dir, or --pbt-restart to replace it")
        write_atomic(settings_path, json.dumps(settings, indent=1).encode())
        exp_path.mkdir(parents=True, exist_ok=True)
        if saved is not None:
            state = saved
            log.info("resuming the PBT search in %s after %d generations", exp_path, state["completed"])
        else:
            state = _initial_state(config, space, n, seed, start_from_config, rule, widened)
            _write_json(exp_path / STATE_FILE, state)

        data_path = _write_shared_data(shared_data_path, arrays, spec["kind"]) if shared_data_path else None
        if data_path:
            spec["data_path"] = data_path
        device = "cuda" if gpus_per_trial > 0 else "cpu"
        threads = max(1, int(cpus_per_trial))
        task = ray.remote(num_cpus=float(cpus_per_trial), num_gpus=float(gpus_per_trial), max_retries=1)(train_member)
        data_ref = None if data_path else ray.put(arrays)
        spec_ref = ray.put(spec)
        stopper = _rebuild_stopper(state, perturbation_interval, max_iterations, patience_generations,
                                   min_improvement, burn_in)
        bar = _progress_bar(progress, n * max_iterations, sum(len(r) for r in state["rows"].values()))
        try:
            while state["completed"] < max_generations and not state.get("stop_reason"):
                g = state["completed"]
                results = _run_generation(task, spec_ref, data_ref, state, g, perturbation_interval, device,
                                          threads, exp_path, bar)
                _commit(state, results, g, space, exp_path, spec, config)
                for row_name, rows in ((member_name(i), r["rows"]) for i, r in results.items()):
                    for row in rows:
                        stopper(row_name, {"training_iteration": row["epoch"], METRIC: row.get(METRIC)})
                done = state["completed"] >= max_generations
                if not done and stopper.stop_all():
                    state["stop_reason"] = stopper.reason
                elif not done and state["completed"] * perturbation_interval >= burn_in:
                    _select(state, space, quantile_fraction, seed, perturbation_interval, bar)
                _write_json(exp_path / STATE_FILE, state)
                _prune(exp_path, state)
                if bar is not None:
                    best = _best_in_state(state["members"])
                    bar.set_postfix(gen=state["completed"], best=f"{best:.5f}",
                                    exploits=sum(len(p["replaced"]) for p in state["policy_log"]))
                if on_generation is not None:
                    on_generation(state["completed"], state)
        except KeyboardInterrupt:
            raise TrainingError(f"PBT: the search was interrupted; its state after {state['completed']} generation(s) "
                                f"is saved in {exp_path}: run again with the same run directory to resume it") from None
        finally:
            if bar is not None:
                bar.close()
        stop_reason = state.get("stop_reason") or f"reached {max_iterations} epochs"
    history = build_history(state, space, perturbation_interval)
    history.update(experiment_path=str(exp_path), stop_reason=stop_reason, ray=where, selection=SELECTION,
                   quantile_fraction=quantile_fraction, burn_in=burn_in, population_rule=state.get("population_rule"),
                   anchor=state.get("anchor"))
    best = _export_best(state, exp_path, run_dir / BEST_DIR, history, spec, config)
    history["wall_time_s"] = time.perf_counter() - t_start
    _write_json(run_dir / HISTORY_FILE, history)
    plot_path = None
    try:
        plot_path = plot_history(history, run_dir / PLOT_FILE)
    except Exception as exc:  # noqa: BLE001 - a missing plot must not lose a finished search
        log.warning("PBT: could not draw the progress plot (%s)", exc)
    if progress:
        print(summary_table(history))
    if spec["kind"] == "multi":
        from ..multisession import load_multisession

        model: Any = load_multisession(run_dir / BEST_DIR)
        cfg = model.config
    else:
        from ..inference import load_model

        model, cfg = load_model(run_dir / BEST_DIR)
    return PBTResult(model=model, config=cfg, metrics=best["metrics"], run_dir=run_dir,
                     best_val_loss=float(best["best_val"]), weights_sha256=best["sha256"], device=device, seed=seed,
                     best_epoch=int(best["iteration"]), pbt_history=history, best_trial=best["trial"],
                     model_dir=run_dir / BEST_DIR, experiment_path=str(exp_path), plot_path=plot_path,
                     wall_time_s=history["wall_time_s"], seconds=history["wall_time_s"])


def _initial_state(config: LFADSConfig, space: Mapping[str, HyperParam], n: int, seed: int, anchor: bool,
                   rule: str, widened: list[str]) -> dict[str, Any]:
    points = sample_population(space, n, seed=seed)
    anchor_info = None
    if anchor:  # the configuration's own values, unclipped: this member is the preset's single model
        points[0] = {name: getattr(config, name) for name in space}
        anchor_info = {"member": 0, "hp": dict(points[0]), "space_widened_to_include_it": widened,
                       "outside_space": sorted(k for k, p in space.items() if not p.low <= points[0][k] <= p.high)}
    members = [{"member": i, "hp": hp, "state": None, "state_sha256": None, "reseed": None, "origin": None,
                METRIC: None, "best_val": None, "best_epoch": -1, "epoch": 0, "diverged": ""}
               for i, hp in enumerate(points)]
    return {"format": STATE_FORMAT, "completed": 0, "population_rule": rule, "anchor": anchor_info,
            "members": members, "rows": {member_name(i): [] for i in range(n)}, "generation_log": [],
            "policy_log": [], "champion": None, "stop_reason": ""}


def _progress_bar(progress: bool, total: int, initial: int) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=min(initial, total), desc="AutoLFADS", unit="epoch", dynamic_ncols=True)


def _member_inputs(m: dict[str, Any]) -> dict[str, Any]:
    return {"state_sha256": m["state_sha256"], "hp": m["hp"], "reseed": m["reseed"]}


def _finished(exp_path: Path, m: dict[str, Any], g: int) -> dict[str, Any] | None:
    """A result of generation g this member already finished before an interruption (same inputs), or None."""
    path = exp_path / _state_path(m["member"], g + 1)
    info = path.with_suffix(".json")
    if not (path.is_file() and info.is_file()):
        return None
    try:
        res = json.loads(info.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if json.dumps(res.get("inputs"), default=_r) != json.dumps(_member_inputs(m), default=_r) or \
            ckpt.sha256_file(path) != res.get("state_sha256"):
        return None
    res["reused"] = True
    return res


def _run_generation(task: Any, spec_ref: Any, data_ref: Any, state: dict[str, Any], g: int, interval: int,
                    device: str, threads: int, exp_path: Path, bar: Any) -> dict[int, dict[str, Any]]:
    """Train every member for generation g (0-based) on Ray and wait for all (the generation barrier)."""
    import ray

    results: dict[int, dict[str, Any]] = {}
    pending: dict[Any, int] = {}
    for m in state["members"]:
        i = int(m["member"])
        done = _finished(exp_path, m, g)
        if done is not None:
            results[i] = done
            continue
        blob = None
        if m["state"]:
            path = exp_path / m["state"]
            try:
                blob = path.read_bytes()
            except OSError as exc:
                raise TrainingError(f"{path}: cannot read {member_name(i)}'s state ({exc.strerror})") from None
            if sha256_bytes(blob) != m["state_sha256"]:
                raise TrainingError(f"{path}: changed since the search wrote it; use --pbt-restart or another --run-dir")
        pending[task.remote(spec_ref, data_ref, blob, m["hp"], i, g, interval, m["reseed"], device, threads)] = i
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task's failure, reported on one line
                    raise TrainingError(f"PBT: {member_name(i)} failed in generation {g + 1}: "
                                        f"{one_line(exc, 300, last_line=True)}") from None
                blob = res.pop("state")
                path = exp_path / _state_path(i, g + 1)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, blob)
                res["inputs"] = _member_inputs(state["members"][i])
                _write_json(path.with_suffix(".json"), res)
                res["reused"] = False
                results[i] = res
                if bar is not None:
                    bar.update(len(res["rows"]))
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return results


def _ramp_end(config: LFADSConfig) -> int:
    return max(config.kl_start_epoch + config.kl_increase_epoch, config.l2_start_epoch + config.l2_increase_epoch)


def _commit(state: dict[str, Any], results: dict[int, dict[str, Any]], g: int, space: Mapping[str, HyperParam],
            exp_path: Path, spec: dict[str, Any], config: LFADSConfig) -> None:
    """Record generation g's results in the population's record and keep the best weights seen so far."""
    ramp_end = _ramp_end(config)
    for i in sorted(results):
        res, m = results[i], state["members"][i]
        name = member_name(i)
        hp = {k: v for k, v in res["hp"].items() if k in MUTABLE_HYPERPARAMETERS}
        origin = member_name(m["origin"]["source"]) if m.get("origin") else ""
        for j, row in enumerate(res["rows"]):
            state["rows"][name].append({
                "training_iteration": int(row["epoch"]), METRIC: row.get(METRIC), "val_loss": row.get("val_loss"),
                "train_recon": row.get("train_recon"), "val_loss_per_session": row.get("val_loss_per_session"),
                "hp": hp, "node_id": res["node_id"], "exploited_from": origin if j == 0 else "",
                "seconds": row.get("seconds")})
        state["generation_log"].append({
            "generation": g + 1, "member": name, "loaded_sha256": res["loaded_sha256"],
            "state_sha256": res["state_sha256"], METRIC: res[METRIC], "best_val": res["best_val"],
            "best_epoch": res["best_epoch"], "epoch": res["epoch"], "node_id": res["node_id"],
            "seconds": res["seconds"], "reused": res.get("reused", False), "exploited_from": origin,
            "diverged": res["diverged"]})
        m.update(state=_state_path(i, g + 1), state_sha256=res["state_sha256"], reseed=None, origin=None,
                 epoch=res["epoch"], best_val=res["best_val"], best_epoch=res["best_epoch"], diverged=res["diverged"])
        m[METRIC] = res[METRIC]
        champ = state["champion"]
        cand_post = res["best_epoch"] >= ramp_end
        if math.isfinite(res["best_val"]) and (
                champ is None or (cand_post and not champ["post_ramp"])
                or (cand_post == champ["post_ramp"] and res["best_val"] < champ["best_val"])):
            _save_champion(exp_path, m, i, g, spec, cand_post, state)
    state["completed"] = g + 1


def _save_champion(exp_path: Path, m: dict[str, Any], i: int, g: int, spec: dict[str, Any], post_ramp: bool,
                   state: dict[str, Any]) -> None:
    from .trainable import load_member_state

    saved = load_member_state(exp_path / m["state"])["trainer"]
    weights = saved["best_state"] if saved.get("best_state") is not None else saved["model"]
    payload = {"format": "nwb-lfads-emg-pbt-champion/1", "state_dict": weights,
               "metrics": saved.get("metrics", [])[: max(int(saved["best_epoch"]), 0)],
               "n_channels": int(saved.get("n_channels", 0) or 0), "best_epoch": int(saved["best_epoch"]),
               "best_val": float(saved["best_val"])}
    if spec["kind"] == "multi":
        payload.update(muscles=saved["muscles"], readin_dim=int(saved["readin_dim"]))
    path = ckpt.save_atomic(payload, exp_path / CHAMPION_FILE)
    state["champion"] = {"member": member_name(i), "generation": g + 1, "best_val": float(saved["best_val"]),
                         "best_epoch": int(saved["best_epoch"]), "post_ramp": post_ramp,
                         "sha256": ckpt.sha256_file(path)}


def _select(state: dict[str, Any], space: Mapping[str, HyperParam], fraction: float, seed: int, interval: int,
            bar: Any) -> None:
    """Truncation selection after a generation: the worst copy the best (weights, optimiser, smoothing) and explore."""
    g = state["completed"]
    members = state["members"]
    values = {int(m["member"]): (m[METRIC] if m[METRIC] is not None else math.inf) for m in members}
    protected = [state["anchor"]["member"]] if state.get("anchor") else []
    rng = random.Random(seed * 1_000_003 + 7 * g + 1)
    replaced = []
    for target, source in truncation_selection(values, fraction, protected, rng):
        t, s = members[target], members[source]
        new_hp = Explorer(space, seed=seed * 7919 + 31 * g + target)(dict(s["hp"]))
        replaced.append({"target": member_name(target), "source": member_name(source), "target_metric": values[target],
                         "source_metric": values[source], "hp_before": dict(t["hp"]), "hp_after": new_hp,
                         "source_state_sha256": s["state_sha256"]})
        t.update(hp=new_hp, state=s["state"], state_sha256=s["state_sha256"], origin={"source": source, "generation": g},
                 reseed=seed + 1_000_003 * (target + 1) + int(s["epoch"]), diverged="")
        t[METRIC] = s[METRIC]
        if bar is not None:
            bar.write(f"[pbt] generation {g}: {member_name(target)} ({_fmt(values[target])}) copied "
                      f"{member_name(source)} ({_fmt(values[source])}) and explored: "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in new_hp.items()))
    ranking = sorted(values.items(), key=lambda kv: (kv[1] if math.isfinite(kv[1]) else math.inf, kv[0]))
    state["policy_log"].append({"generation": g, "epoch": g * interval, "ranking": [[member_name(i), v] for i, v in ranking],
                                "quantile_fraction": fraction, "replaced": replaced})


# ---------------------------------------------------------------------------- export of the best model
def _export_best(state: dict[str, Any], exp_path: Path, best_dir: Path, history: dict[str, Any],
                 spec: dict[str, Any], config: LFADSConfig) -> dict[str, Any]:
    """Write the champion (the lowest held-out loss of any member at any epoch) into best_dir."""
    champ = state.get("champion")
    path = exp_path / CHAMPION_FILE
    if champ is None or not path.is_file():
        raise TrainingError(f"PBT: no member reached a finite validation loss (see {exp_path / STATE_FILE})")
    if ckpt.sha256_file(path) != champ["sha256"]:
        raise TrainingError(f"{path}: changed since the search wrote it; use --pbt-restart or another --run-dir")
    payload = ckpt.load_checkpoint(path)
    trial, iteration = champ["member"], int(champ["best_epoch"])
    lineage = _lineage(history, trial, iteration)
    hp = dict(lineage[-1]["hp"]) if lineage else {}
    row = _row_at(state, lineage, iteration)
    cfg = dataclasses.replace(config, **{k: type(getattr(config, k))(v) for k, v in (row.get("hp") or hp).items()
                                         if k in MUTABLE_HYPERPARAMETERS})
    if best_dir.exists():
        shutil.rmtree(best_dir)
    best_dir.mkdir(parents=True)
    if spec["kind"] == "multi":
        from ...lfads.readin import MultiSessionLFADS
        from ..multisession import export_multisession

        model = MultiSessionLFADS(cfg, payload["muscles"], int(payload["readin_dim"]))
        model.load_state_dict(payload["state_dict"])
        sha = export_multisession(best_dir / ckpt.WEIGHTS_FILE, model)
    else:
        _, sha = ckpt.export_weights(best_dir, payload["state_dict"], cfg.to_dict(), int(payload["n_channels"]))
    (best_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    info = {"trial": trial, "member": int(trial.rsplit("_", 1)[-1]), "iteration": iteration,
            METRIC: _r(float(payload["best_val"])), "val_loss": _r(row.get("val_loss")),
            "hp": {k: _r(v) for k, v in hp.items()}, "sha256": sha, "lineage": lineage,
            "found_in_generation": champ["generation"]}
    (best_dir / "pbt_winner.json").write_text(json.dumps(info, indent=1))
    history["winner"] = info
    return {**info, "best_val": float(payload["best_val"]), "metrics": [dict(m) for m in payload.get("metrics", [])]}


def _row_at(state: dict[str, Any], lineage: list[dict[str, Any]], iteration: int) -> dict[str, Any]:
    """The recorded row of epoch `iteration` on the winner's lineage (of the member that trained that epoch)."""
    for seg in reversed(lineage):
        if seg["start"] <= iteration <= seg["end"]:
            for row in state["rows"].get(seg["trial"], []):
                if int(row["training_iteration"]) == iteration:
                    return row
    return {}
