"""Estimates on disk while a job runs: inference and the baselines write their (bins, ...) outputs block by
block into a temporary HDF5 file in the run directory, and the write-back copies those datasets into the
NWB file with HDF5's own chunk-by-chunk copy, so no whole-session estimate is ever held in memory.

The store's datasets already have the output's layout (float32, chunks of `CHUNK_BYTES`, gzip level
`GZIP_LEVEL`), so the copy moves compressed chunks as they are. The store never touches the user's file:
it lives in the run directory and is removed when the write-back is done (or failed).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

CHUNK_BYTES = 1 << 18
"""Bytes per chunk of an output dataset (rows x row size): 256 KiB, as nwbinspector's best practice suggests."""
GZIP_LEVEL = 4
STORE_PREFIX = ".estimates-"


def chunk_rows(shape: tuple[int, ...]) -> int:
    """Rows per chunk of a float32 dataset of `shape` (bins first)."""
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    return max(1, min(int(shape[0]), CHUNK_BYTES // max(1, row * 4)))


def dataset_options(shape: tuple[int, ...]) -> dict[str, Any]:
    """h5py's creation options of an output dataset: chunked + gzip, or plain when it is empty."""
    if 0 in shape:
        return {}
    return {"chunks": (chunk_rows(shape), *shape[1:]), "compression": "gzip", "compression_opts": GZIP_LEVEL}


@dataclass(frozen=True)
class StoredArray:
    """A float32 array held in a closed estimate store: where it is and its shape, read only on demand."""

    path: Path
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    dtype = np.dtype(np.float32)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as an array (reads only those chunks)."""
        with h5py.File(self.path, "r") as f:
            return np.asarray(f[self.name][start:stop])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # whole array: tests, small sessions
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self)[key]


class EstimateStore:
    """A temporary HDF5 file in `directory` that estimates are written into by rows (`allocate`), then closed
    (`finish`) and read by the write-back (`StoredArray`); `remove` deletes it."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{STORE_PREFIX}{uuid.uuid4().hex}.h5"
        # a per-dataset chunk cache of 16 chunks: rows arrive in order, so a chunk is compressed once when full
        self.file: h5py.File | None = h5py.File(self.path, "w", rdcc_nbytes=16 * CHUNK_BYTES, rdcc_w0=1.0,
                                                rdcc_nslots=1021)
        self.names: list[str] = []

    def allocate(self, name: str, shape: tuple[int, ...]) -> h5py.Dataset:
        """A new float32 dataset of `shape` to be filled by row slices (`ds[a:b] = block`)."""
        if self.file is None:
            raise RuntimeError(f"{self.path}: the estimate store is closed")
        self.names.append(name)
        return self.file.create_dataset(name, shape=tuple(int(s) for s in shape), dtype=np.float32,
                                        **dataset_options(tuple(shape)))

    def finish(self) -> None:
        """Flush and close the file (what was allocated is now read through `stored`)."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def stored(self, name: str) -> StoredArray:
        """A closed store's dataset `name`."""
        self.finish()
        with h5py.File(self.path, "r") as f:
            return StoredArray(self.path, name, tuple(f[name].shape))

    def remove(self) -> None:
        """Close and delete the file."""
        with contextlib.suppress(Exception):
            self.finish()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class OpenStores:
    """Read handles on stores whose datasets a write-back copies; open for the write, closed after it."""

    def __init__(self) -> None:
        self.files: dict[Path, h5py.File] = {}

    def dataset(self, array: StoredArray) -> h5py.Dataset:
        if array.path not in self.files:
            self.files[array.path] = h5py.File(array.path, "r")
        return self.files[array.path][array.name]

    def close(self) -> None:
        for f in self.files.values():
            with contextlib.suppress(Exception):
                f.close()
        self.files.clear()
