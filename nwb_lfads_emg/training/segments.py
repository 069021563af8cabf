"""Continuous recordings <-> overlapping segments, and train/validation split by contiguous blocks."""

from __future__ import annotations

import numpy as np

from ..errors import TrainingError


def segment_starts(n_total: int, seg_len: int, overlap: int) -> np.ndarray:
    """Start bins of overlapping windows covering [0, n_total); the last one is moved to end at n_total."""
    if seg_len < 1 or not 0 <= overlap < seg_len:
        raise TrainingError(f"segments: need seg_len >= 1 and 0 <= overlap < seg_len (got {seg_len}, {overlap})")
    if n_total < seg_len:
        raise TrainingError(f"segments: the recording has {n_total} bins, fewer than one segment ({seg_len})")
    step = seg_len - overlap
    starts = list(range(0, n_total - seg_len + 1, step))
    if starts[-1] + seg_len < n_total:
        starts.append(n_total - seg_len)
    return np.asarray(starts, dtype=np.int64)


def chop(data: np.ndarray, seg_len: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut (n_bins, ...) into (n_segments, seg_len, ...) overlapping segments; returns (segments, starts)."""
    data = np.asarray(data)
    starts = segment_starts(data.shape[0], seg_len, overlap)
    idx = starts[:, None] + np.arange(seg_len)[None, :]
    return data[idx], starts


def taper_weights(seg_len: int, ramp_in: int, ramp_out: int) -> np.ndarray:
    """Per-bin weights of one segment: a half-Hann rise over ramp_in bins, flat, a half-Hann fall over ramp_out."""
    w = np.ones(seg_len, dtype=np.float64)
    if ramp_in > 0:
        w[:ramp_in] = np.sin(0.5 * np.pi * (np.arange(ramp_in) + 0.5) / ramp_in) ** 2
    if ramp_out > 0:
        w[seg_len - ramp_out :] = np.minimum(
            w[seg_len - ramp_out :], np.cos(0.5 * np.pi * (np.arange(ramp_out) + 0.5) / ramp_out) ** 2
        )
    return w


def merge(seg_values: np.ndarray, starts: np.ndarray, n_total: int, overlap: int) -> np.ndarray:
    """Stitch (n_segments, seg_len, ...) values back into (n_total, ...) with Hann-tapered overlap weights."""
    seg_values = np.asarray(seg_values)
    starts = np.asarray(starts, dtype=np.int64)
    n_seg, seg_len = seg_values.shape[:2]
    if n_seg != len(starts):
        raise TrainingError(f"merge: {n_seg} segments but {len(starts)} start positions")
    out = np.zeros((n_total,) + seg_values.shape[2:], dtype=np.float64)
    wsum = np.zeros(n_total, dtype=np.float64)
    extra = (1,) * (seg_values.ndim - 2)
    for i, s in enumerate(starts):
        prev_end = starts[i - 1] + seg_len if i > 0 else s
        next_start = starts[i + 1] if i + 1 < n_seg else s + seg_len
        ramp_in = int(min(max(prev_end - s, 0), seg_len))
        ramp_out = int(min(max(s + seg_len - next_start, 0), seg_len))
        w = taper_weights(seg_len, ramp_in, ramp_out)
        out[s : s + seg_len] += seg_values[i] * w.reshape((seg_len,) + extra)
        wsum[s : s + seg_len] += w
    if bool((wsum <= 0).any()):
        raise TrainingError("merge: the segments do not cover every bin")
    return (out / wsum.reshape((n_total,) + extra)).astype(seg_values.dtype, copy=False)


def split_blocks(n_total: int, val_fraction: float, n_val_blocks: int, seg_len: int) -> tuple[list, list]:
    """Contiguous (start, stop) ranges for training and validation: n_val_blocks evenly spaced val blocks."""
    if val_fraction <= 0 or n_val_blocks <= 0:
        return [(0, n_total)], []
    val_len = int(round(n_total * val_fraction / n_val_blocks))
    if val_len < seg_len:
        n_val_blocks = max(1, int(n_total * val_fraction // seg_len))
        val_len = seg_len
    if n_total - n_val_blocks * val_len < seg_len:
        raise TrainingError(
            f"segments: {n_total} bins are too few for a validation split with segments of {seg_len} bins"
        )
    spacing = n_total / n_val_blocks
    train, val = [], []
    pos = 0
    for k in range(n_val_blocks):
        v0 = int(round((k + 0.5) * spacing - val_len / 2))
        v0 = min(max(v0, pos), n_total - val_len)
        if v0 - pos >= seg_len:
            train.append((pos, v0))
        val.append((v0, v0 + val_len))
        pos = v0 + val_len
    if n_total - pos >= seg_len:
        train.append((pos, n_total))
    if not train:
        raise TrainingError("segments: no training block is long enough for one segment")
    return train, val


def cut_at_breaks(blocks: list, breaks: list[int] | None, seg_len: int) -> list:
    """Split (start, stop) blocks at the bins where the recording is discontinuous (gaps between trials),
    dropping pieces shorter than one segment, so that no training window spans a gap."""
    if not breaks:
        return list(blocks)
    out = []
    for b0, b1 in blocks:
        edges = [b0] + sorted(int(x) for x in breaks if b0 < int(x) < b1) + [b1]
        out += [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b - a >= seg_len]
    return out


def spread(n: int, k: int) -> np.ndarray:
    """Indices of at most `k` of `n` items evenly spread from the first to the last (sorted, unique): the
    segments a capped epoch, validation or regression keeps of a long recording."""
    return np.unique(np.linspace(0, n - 1, int(k)).round().astype(np.int64))


def block_starts(blocks: list, seg_len: int, overlap: int) -> np.ndarray:
    """The absolute starts `chop_blocks` gives, without cutting the segments."""
    if not blocks:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([segment_starts(b1 - b0, seg_len, overlap) + b0 for b0, b1 in blocks]).astype(np.int64)


def chop_blocks(data: np.ndarray, blocks: list, seg_len: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Chop each block separately (no segment crosses a block border); returns (segments, absolute starts)."""
    segs, starts = [], []
    for b0, b1 in blocks:
        s, st = chop(data[b0:b1], seg_len, overlap)
        segs.append(s)
        starts.append(st + b0)
    if not segs:
        return np.zeros((0, seg_len) + data.shape[1:], dtype=data.dtype), np.zeros(0, dtype=np.int64)
    return np.concatenate(segs), np.concatenate(starts)
