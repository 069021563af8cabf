"""One AutoLFADS member's generation, run as a Ray task, and the population-stagnation stopper.

`train_member` builds the member's trainer (one session: `Trainer`; several: `MultiSessionTrainer`),
loads the state it continues from (its own, or the copied member's after an exploit; read with
`weights_only=True`), applies its hyper-parameters, trains one generation of epochs and returns
the new state as bytes with the per-epoch metrics. The driver (`search`) keeps every state in the
run directory, so workers on other machines need no shared filesystem.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import TrainingError
from ...lfads.config import LFADSConfig
from .. import checkpoint as ckpt
from ..trainer import Trainer, set_torch_threads

METRIC = "val_loss_smoothed"
MEMBER_FORMAT = "nwb-lfads-emg-pbt-member/1"


def member_name(member: int) -> str:
    """The history's name of population member `member` ('member_03')."""
    return f"member_{int(member):02d}"


def _member_of(name: str) -> int:
    """Population index from a member name ('member_03' -> 3; also Tune trial ids '<prefix>_00003')."""
    try:
        return int(str(name).rsplit("_", 1)[-1])
    except ValueError:
        return 0


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def load_shared_data(spec: dict[str, Any]) -> np.ndarray | list[np.ndarray]:
    """The training data from the shared file `spec['data_path']` (.npy: one session; .npz: several)."""
    path = spec["data_path"]
    try:
        if spec["kind"] == "multi":
            with np.load(path) as z:
                return [z[f"s{k}"] for k in range(len(spec["muscles"]))]
        return np.load(path)
    except (OSError, KeyError, ValueError) as exc:
        raise TrainingError(f"{path}: cannot read the shared training data on node {_node_id()} ({exc})") from None


def build_trainer(spec: dict[str, Any], data: Any, hp: dict[str, Any], device: str) -> Any:
    """A fresh trainer for the member with hyper-parameters `hp` over the spec's base configuration."""
    config = LFADSConfig.from_dict({**spec["config"], **hp})
    if spec["kind"] == "multi":
        from ..multisession import MultiSessionTrainer

        return MultiSessionTrainer(data, spec["muscles"], config, device=device, seed=spec["seed"],
                                   readin_dim=spec.get("readin_dim"))
    return Trainer(data, config, device=device, seed=spec["seed"], breaks=spec.get("breaks"))


def load_member_state(path: str | Path) -> dict[str, Any]:
    """A member's saved state (tensors and plain data only: a planted pickle is refused, not run)."""
    state = ckpt.load_checkpoint(path)
    if state.get("format") != MEMBER_FORMAT or not isinstance(state.get("trainer"), dict):
        raise TrainingError(f"{path}: not the state of an AutoLFADS population member")
    return state


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            out[k] = v
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            out[k] = list(v)
    return out


def train_member(spec: dict[str, Any], data: Any, state: bytes | None, hp: dict[str, Any], member: int,
                 generation: int, epochs: int, reseed: int | None, device: str, threads: int) -> dict[str, Any]:
    """Train member `member` for generation `generation` (0-based) and return its result and new state.

    `state`: the bytes it continues from (None: a fresh start); `reseed`: after an exploit, the
    copied lineage continues with this member's own batch order and masks. A loss that becomes NaN
    marks the member diverged (metric +inf) until an exploit replaces it.
    """
    t0 = time.perf_counter()
    saved = None
    if state is not None:  # read first (tensors and plain data only), before any other work
        saved = ckpt.load_checkpoint_bytes(state, f"PBT {member_name(member)}'s state")
        if saved.get("format") != MEMBER_FORMAT or not isinstance(saved.get("trainer"), dict):
            raise TrainingError(f"PBT {member_name(member)}: the state it continues from is not a member's state")
    set_torch_threads(max(1, int(threads)))  # a preset's own num_threads, if any, wins in the trainer
    if data is None:
        data = load_shared_data(spec)
    trainer = build_trainer(spec, data, hp, device)
    loaded_sha = None
    diverged = ""
    if saved is not None:
        loaded_sha = sha256_bytes(state)
        trainer.load_state_dict(saved["trainer"])
        diverged = str(saved.get("diverged") or "") if reseed is None else ""
    trainer.set_hyperparameters(hp)  # an exploit brings perturbed values
    if reseed is not None:
        trainer.generator.manual_seed(int(reseed))
    rows: list[dict[str, Any]] = []
    for _ in range(int(epochs)):
        if diverged:
            break
        try:
            metrics = trainer.train_epoch()
        except TrainingError as exc:  # e.g. NaN loss: rank last until an exploit replaces this member
            diverged = str(exc)
            break
        row = _numbers(metrics)
        rows.append(row)
    payload = {"format": MEMBER_FORMAT, "trainer": trainer.state_dict(), "member": int(member),
               "generation": int(generation), "diverged": diverged}
    out = ckpt.dumps_checkpoint(payload)
    return {
        "member": int(member), "generation": int(generation), "rows": rows, "state": out,
        "state_sha256": sha256_bytes(out), "loaded_sha256": loaded_sha,
        "epoch": int(trainer.epoch), METRIC: math.inf if diverged else float(trainer.val_smoothed),
        "best_val": float(trainer.best_val), "best_epoch": int(trainer.best_epoch),
        "hp": dict(trainer.hyperparameters()), "node_id": _node_id(), "diverged": diverged,
        "seconds": time.perf_counter() - t0,
    }


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return ""


# ---------------------------------------------------------------------------- stopper
class PopulationPlateauStopper:
    """Stop the search when the population's best metric has improved by less than `min_improvement`
    over `patience` generations, or when members reach `max_iterations` epochs."""

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
        """Record one member's result (`training_iteration`, METRIC); True when that member is done."""
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
        """True when the population's best has stagnated for `patience` generations."""
        if self.generation >= max(self.min_generations, 1) and \
                self.generation - self.improved_generation >= self.patience:
            self.reason = (f"best {METRIC} improved by less than {self.min_improvement:g} over "
                           f"{self.patience} generations")
            return True
        return False


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
