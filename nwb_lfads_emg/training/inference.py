"""Posterior inference with a trained model: load the exported best weights, sample the posterior over a
continuous recording and merge the segments back into continuous series."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError
from ..lfads.config import LFADSConfig
from ..lfads.model import LFADS
from . import checkpoint as ckpt
from .segments import merge, segment_starts, taper_weights
from .trainer import _autocast, autocast_dtype, check_data, resolve_device


def load_model(run_dir: str | Path) -> tuple[LFADS, LFADSConfig]:
    """The exported best model of a run (CPU, eval mode) and its configuration."""
    payload = ckpt.read_weights(run_dir)
    config = LFADSConfig.from_dict(payload["config"])
    model = LFADS(config, int(payload["n_channels"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise TrainingError(f"{run_dir}: the weights do not match their configuration") from None
    model.eval()
    return model, config


POSTERIOR_SAMPLES = 20
"""Posterior samples averaged per segment unless a caller (e.g. `JobConfig.n_posterior_samples`) says otherwise."""


@dataclass
class Inference:
    """Posterior estimates merged into continuous series (bins first)."""

    rates: np.ndarray  # (bins, channels) posterior mean of the likelihood mean
    rates_std: np.ndarray  # (bins, channels) spread across posterior samples
    factors: np.ndarray  # (bins, factors)
    inferred_inputs: np.ndarray  # (bins, inputs)
    n_samples: int = 1


MAX_BATCH_SEQUENCES = 512
"""Sequences (segments x posterior samples) per forward pass of inference: memory follows this batch, not
the recording (at the `demo` size ~80 MB; 2048 held ~0.35 GB, 8192 ~1.9 GB; CPU time per bin the same
within 3 %, benchmarks in docs/design.md)."""


def _plan(model: LFADS, data: np.ndarray, config: LFADSConfig, device: str, overlap: int | None,
          n_samples: int | None, batch_size: int | None) -> tuple[np.ndarray, torch.device, np.ndarray, int, int]:
    """Checked data, device, segment starts, posterior samples and batch size: what `infer` and its
    whole-array reference both start from."""
    arr = check_data(data, config.likelihood, what="inference data")
    if arr.shape[1] != model.n_channels:
        raise TrainingError(
            f"inference data: {arr.shape[1]} channels, but the model was trained on {model.n_channels}"
        )
    overlap = config.seg_overlap if overlap is None else overlap
    starts = segment_starts(arr.shape[0], config.seg_len, overlap)
    n_samples = max(int(POSTERIOR_SAMPLES if n_samples is None else n_samples), 1)
    if batch_size is None:
        batch_size = max(1, min(256, MAX_BATCH_SEQUENCES // n_samples))
    return arr, resolve_device(device), starts, n_samples, batch_size


Allocate = Callable[[str, tuple[int, ...]], Any]
"""Makes an output of inference: (key, shape) -> a float32 array-like filled by row slices (`out[a:b] = rows`)."""


def _empty(key: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.float32)


def infer(model: LFADS, data: np.ndarray, config: LFADSConfig | None = None, n_samples: int | None = None,
          device: str = "auto", batch_size: int | None = None, seed: int = 0,
          overlap: int | None = None, allocate: Allocate | None = None) -> Inference:
    """Posterior-sample the model over a continuous (bins, channels) recording and merge the segments.

    Segments are cut batch by batch and merged into the float32 outputs as they come (`_StreamMerge`):
    besides the outputs, memory holds one batch and the bins its segments still overlap. `allocate` makes
    the outputs (keys "rates", "rates_var" (the SD), "factors", "inputs"; default: arrays in memory); an
    on-disk dataset keeps even the outputs out of memory.
    """
    config = config or model.config
    arr, dev, starts, n_samples, batch_size = _plan(model, data, config, device, overlap, n_samples, batch_size)
    merge_into = _StreamMerge(starts, config.seg_len, arr.shape[0], allocate or _empty)
    for i, batch in _posterior_batches(model, arr, starts, config, n_samples, dev, batch_size, seed):
        merge_into.add(i, batch)
    outs = merge_into.outs  # "rates_var" holds the SD by now (`_StreamMerge._flush`)
    return Inference(rates=outs["rates"], rates_std=outs["rates_var"], factors=outs["factors"],
                     inferred_inputs=outs["inputs"], n_samples=n_samples)


def _posterior_batches(model: LFADS, arr: np.ndarray, starts: np.ndarray, config: LFADSConfig, n_samples: int,
                       dev: torch.device, batch_size: int, seed: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first segment, per-segment posterior means/variances/factors/inputs) of each batch of segments."""
    sample = n_samples > 1
    amp = autocast_dtype(config.precision, dev)
    was_training = model.training
    model.eval()
    model.to(dev)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    offsets = np.arange(config.seg_len)
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            for i in range(0, len(starts), batch_size):
                segs = arr[starts[i: i + batch_size, None] + offsets[None, :]]
                x = torch.from_numpy(segs).to(dev)
                b = x.shape[0]
                xr = x.repeat_interleave(n_samples, dim=0) if sample else x
                with _autocast(dev, amp):
                    out = model(xr, sample=sample)

                def per_seg(t: torch.Tensor, b: int = b) -> torch.Tensor:
                    # explicit sample count: a -1 is ambiguous for empty inputs (co_dim = 0)
                    return t.float().reshape(b, n_samples if sample else 1, *t.shape[1:])

                means = per_seg(out.means)
                yield i, {"rates": means.mean(1).cpu().numpy(),
                          "rates_var": means.var(1, unbiased=False).cpu().numpy(),
                          "factors": per_seg(out.factors).mean(1).cpu().numpy(),
                          "inputs": per_seg(out.inputs).mean(1).cpu().numpy()}
                del out, means, xr, x
    finally:
        model.train(was_training)


class _StreamMerge:
    """`segments.merge` done as the segments arrive, in order: the Hann-tapered sums are kept in float64 only
    for the bins later segments still reach; bins before the next segment's start are final and go to
    the float32 outputs (the same sums in the same order, so the same numbers as merging all at the end)."""

    def __init__(self, starts: np.ndarray, seg_len: int, n_total: int, allocate: Allocate = _empty) -> None:
        self.starts, self.seg_len, self.n_total = np.asarray(starts, dtype=np.int64), seg_len, n_total
        self.allocate = allocate
        self.outs: dict[str, Any] = {}  # float32 (n_total, ...) per key, made at the first batch
        self.acc: dict[str, np.ndarray] = {}
        self.lo = 0  # first bin not yet final
        self.wsum = np.zeros(0)

    def _weights(self, i: int) -> np.ndarray:
        starts, seg_len, s = self.starts, self.seg_len, int(self.starts[i])
        prev_end = starts[i - 1] + seg_len if i > 0 else s
        next_start = starts[i + 1] if i + 1 < len(starts) else s + seg_len
        ramp_in = int(min(max(prev_end - s, 0), seg_len))
        ramp_out = int(min(max(s + seg_len - next_start, 0), seg_len))
        return taper_weights(seg_len, ramp_in, ramp_out)

    def add(self, first: int, values: dict[str, np.ndarray]) -> None:
        """Merge segments first, first + 1, ... (their values per key, (b, seg_len, ...)) and flush final bins."""
        b = next(iter(values.values())).shape[0]
        if not self.outs:
            self.outs = {k: self.allocate(k, (self.n_total,) + v.shape[2:]) for k, v in values.items()}
            self.acc = {k: np.zeros((0,) + v.shape[2:]) for k, v in values.items()}
        end = int(self.starts[first + b - 1]) + self.seg_len
        grow = end - self.lo - self.wsum.shape[0]
        if grow > 0:
            self.wsum = np.concatenate([self.wsum, np.zeros(grow)])
            for k in self.acc:
                self.acc[k] = np.concatenate([self.acc[k], np.zeros((grow,) + self.acc[k].shape[1:])])
        for j in range(b):
            i = first + j
            s = int(self.starts[i]) - self.lo
            w = self._weights(i)
            for k, v in values.items():
                seg = v[j].astype(np.float64)
                self.acc[k][s: s + self.seg_len] += seg * w.reshape((self.seg_len,) + (1,) * (seg.ndim - 1))
            self.wsum[s: s + self.seg_len] += w
        final = int(self.starts[first + b]) if first + b < len(self.starts) else self.n_total
        self._flush(final)

    def _flush(self, final: int) -> None:
        m = final - self.lo
        if m <= 0:
            return
        wsum = self.wsum[:m]
        if bool((wsum <= 0).any()):
            raise TrainingError("merge: the segments do not cover every bin")
        for k, acc in self.acc.items():
            merged = acc[:m] / wsum.reshape((m,) + (1,) * (acc.ndim - 1))
            if k == "rates_var":  # the spread across posterior samples, stitched like the means, as an SD
                merged = np.sqrt(np.clip(merged, 0.0, None))
            self.outs[k][self.lo: final] = merged.astype(np.float32)
            self.acc[k] = acc[m:]
        self.wsum = self.wsum[m:]
        self.lo = final


def infer_whole(model: LFADS, data: np.ndarray, config: LFADSConfig | None = None, n_samples: int | None = None,
                device: str = "auto", batch_size: int | None = None, seed: int = 0,
                overlap: int | None = None) -> Inference:
    """The reference of `infer`: every segment's values kept, merged at the end in float64 (`segments.merge`).
    Same numbers as `infer` with the same `batch_size`; memory grows with the recording (tests only)."""
    config = config or model.config
    arr, dev, starts, n_samples, batch_size = _plan(model, data, config, device, overlap, n_samples, batch_size)
    parts: dict[str, list[np.ndarray]] = {}
    for _, batch in _posterior_batches(model, arr, starts, config, n_samples, dev, batch_size, seed):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    n = arr.shape[0]

    def merged(key: str) -> np.ndarray:
        return merge(np.concatenate(parts[key]).astype(np.float64), starts, n, overlap)

    var = np.clip(merged("rates_var"), 0.0, None)
    return Inference(rates=merged("rates").astype(np.float32), rates_std=np.sqrt(var).astype(np.float32),
                     factors=merged("factors").astype(np.float32),
                     inferred_inputs=merged("inputs").astype(np.float32), n_samples=n_samples)
