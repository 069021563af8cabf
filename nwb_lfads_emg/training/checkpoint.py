"""Checkpoints in a run directory: atomic writes, latest-valid lookup, pruning, exported weights.

A run directory is untrusted input (it may sit on shared storage): every file is read with
`torch.load(weights_only=True)` through `load_checkpoint`, so a planted pickle is refused instead of
run, and every file is written through a private temporary file (`files.write_atomic`).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from ..files import write_atomic

CHECKPOINT_DIR = "checkpoints"
WEIGHTS_FILE = "model.pt"
_PATTERN = re.compile(r"^epoch_(\d{6})\.pt$")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a private temporary file beside `path` (O_EXCL, random name), fsync, rename over `path`."""
    return write_atomic(path, dumps_checkpoint(obj))


class UnsafeCheckpointError(TrainingError):
    """A checkpoint holds objects other than tensors and plain data; it was not loaded."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint holding only tensors and plain Python data (`weights_only=True`).

    Raises UnsafeCheckpointError for a file that would need arbitrary objects (loading it could run
    code) and TrainingError for an unreadable one; both name the file on one line.
    """
    return _load(Path(path), str(path))


def load_checkpoint_bytes(data: bytes, name: str) -> dict[str, Any]:
    """`load_checkpoint` for a checkpoint held in memory (a PBT member's state sent through Ray); `name` says whose."""
    return _load(io.BytesIO(data), name)


def dumps_checkpoint(obj: Any) -> bytes:
    """The bytes `save_atomic` would write for `obj`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(source: Path | io.BytesIO, name: str) -> dict[str, Any]:
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeCheckpointError(
            f"{name}: refused: the checkpoint holds Python objects other than tensors and plain data (loading "
            "it could run code); delete it if you did not write it, or use a fresh --run-dir"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, unreadable
        raise TrainingError(f"{name}: cannot read the checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise TrainingError(f"{name}: not an nwb-lfads-emg checkpoint (holds a {type(state).__name__})")
    return state


def refuse_shared_dir(path: str | Path, what: str) -> None:
    """Refuse to unpickle state (Ray Tune's resume) from a folder someone else owns or may write."""
    path = Path(path)
    for folder in (path, *[p for p in path.rglob("*") if p.is_dir()][:200]):
        st = os.stat(folder)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise TrainingError(
                f"{folder}: {what} resumes from pickled state, and this folder is owned by another user or "
                "writable by others; refusing to load it; use a fresh --run-dir"
            )


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """Path of the checkpoint written after `epoch` epochs."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:06d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint in run_dir, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return sorted(found)


def load_latest(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint that can be read (a half-written one is skipped), or None."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except UnsafeCheckpointError:
            raise
        except TrainingError:  # a damaged file: fall back to the previous one
            continue
    return None


def resume(run_dir: str | Path, trainer: Any) -> Path:
    """Create `run_dir` and load its latest checkpoint into `trainer` (a run of another seed is refused), so a
    killed or interrupted fit goes on where it stopped; returns the directory."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"{run_dir}: cannot create the run directory ({exc.strerror})") from None
    state = load_latest(run_dir)
    if state is not None:
        if state.get("seed") != trainer.seed:
            raise TrainingError(f"{run_dir}: holds a run with seed {state.get('seed')}, not {trainer.seed}")
        try:
            trainer.load_state_dict(state)
        except TrainingError as exc:
            raise TrainingError(f"{run_dir}: {exc}") from None
    return run_dir


def save_checkpoint(run_dir: str | Path, epoch: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint for `epoch` and keep only the newest `keep` ones."""
    path = save_atomic(state, checkpoint_path(run_dir, epoch))
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_weights(run_dir: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                   n_channels: int) -> tuple[Path, str]:
    """Write the best weights with their config to run_dir/model.pt; returns (path, sha256)."""
    payload = {"format": "nwb-lfads-emg-weights/1", "config": config, "n_channels": int(n_channels),
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}
    path = save_atomic(payload, Path(run_dir) / WEIGHTS_FILE)
    return path, sha256_file(path)


def read_weights(run_dir: str | Path) -> dict[str, Any]:
    """Read run_dir/model.pt (or a path to the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise TrainingError(f"{path}: no exported model weights (train first)")
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != "nwb-lfads-emg-weights/1":
        raise TrainingError(f"{path}: not an nwb-lfads-emg weights file")
    return payload
