"""Checkpoints in a run directory: atomic writes, latest-valid lookup, pruning, exported weights."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError

CHECKPOINT_DIR = "checkpoints"
WEIGHTS_FILE = "model.pt"
_PATTERN = re.compile(r"^epoch_(\d{6})\.pt$")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, flush to disk, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


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
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged file: fall back to the previous one
            continue
    return None


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(f"{path}: cannot read model weights ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != "nwb-lfads-emg-weights/1":
        raise TrainingError(f"{path}: not an nwb-lfads-emg weights file")
    return payload
