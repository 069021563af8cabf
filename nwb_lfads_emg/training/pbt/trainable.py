"""The Ray Tune side of AutoLFADS: the LFADS trainable (one member, one epoch per iteration), the
stopper on population stagnation and the driver-side recorder of every trial result."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune

from ...errors import TrainingError
from ...lfads.config import MUTABLE_HYPERPARAMETERS, LFADSConfig
from .. import checkpoint as ckpt
from ..trainer import Trainer, set_torch_threads

METRIC = "val_loss_smoothed"
_STATE_FILE = "trainer_state.pt"


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
        set_torch_threads(max(1, int(threads)))  # a preset's own num_threads, if any, wins in Trainer
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
