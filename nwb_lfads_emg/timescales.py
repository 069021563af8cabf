"""Time scales from the data: bin width and segment length of a session chosen from its recording.

The envelope's bandwidth is the low-pass cutoff that best predicts held-out samples of the rectified
EMG (`baselines.tuning.select_cutoff_cv`: no behaviour, no truth). A floor-removed power spectrum
of the rectified EMG was tried first and rejected: on real recordings the carrier's own
fluctuations dominate it (its 95 % frequency came out at 80-175 Hz for slow knee movements).
Bins get about `bins_per_cycle` per cycle of that bandwidth (2-40 ms); segments hold about
`segment_bins` bins and at least `min_segment_s`, fewer when the recording is short, so slow tasks
get windows of seconds and fast onsets still get fine bins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TimeScales:
    """What was chosen for a session, and from what (recorded in the provenance)."""

    bin_ms: float
    segment_ms: float
    envelope_hz: float
    raw_rate: float
    duration_s: float
    rule: str = ("envelope_hz: held-out-prediction low-pass cutoff; bin = 1 / (12 * envelope_hz) in 2-40 ms; "
                 "segment = max(100 bins, 1 s), at most 200 bins and a tenth of the recording")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def choose_time_scales(rectified: np.ndarray, rate: float, bins_per_cycle: float = 12.0,
                       segment_bins: int = 100, min_segment_s: float = 1.0, max_segment_bins: int = 200,
                       min_segments: int = 10, bin_range_ms: tuple[float, float] = (2.0, 40.0)) -> TimeScales:
    """Bin width and segment length for a session from its rectified EMG (time, channels) at `rate` Hz."""
    from .baselines.tuning import select_cutoff_cv

    n = np.asarray(rectified).shape[0]
    duration = n / rate
    f_env = select_cutoff_cv(rectified, rate)
    bin_ms = float(np.clip(1000.0 / (bins_per_cycle * f_env), *bin_range_ms))
    samples = max(1, int(round(bin_ms * 1e-3 * rate)))  # a whole number of raw samples
    bin_ms = samples * 1000.0 / rate
    n_bins = int(duration * 1000.0 / bin_ms)
    seg = max(segment_bins, int(np.ceil(min_segment_s * 1000.0 / bin_ms)))
    seg = int(np.clip(min(seg, max_segment_bins, n_bins // min_segments), 20, max_segment_bins))
    return TimeScales(bin_ms=bin_ms, segment_ms=seg * bin_ms, envelope_hz=float(f_env), raw_rate=float(rate),
                      duration_s=float(duration))


#: The rule `select_time_scales` follows (recorded in the provenance).
SELECTION_RULE = ("candidates: bins of 2^k probe bins in 4-40 ms with 100-bin segments (at most a fifth of the "
                  "recording); each trains a short auto-preset run with the same held-out cells (one channel for "
                  "the coarsest candidate's bin, 10 %) hidden from the encoders and the loss; score = held-out R^2 "
                  "of the cells' mean rectified EMG on that common time base (mean over channels); the best wins")


def time_scale_candidates(probe_ms: float, duration_s: float, segment_bins: int = 100,
                          bin_range_ms: tuple[float, float] = (4.0, 40.0), min_segments: float = 5.0
                          ) -> list[tuple[int, float, float]]:
    """(probe bins per bin, bin ms, segment ms) candidates: bins doubling from the probe's in `bin_range_ms`,
    `segment_bins` bins per segment, segments at most 1/`min_segments` of the recording."""
    out = []
    k = 1
    while k * probe_ms <= bin_range_ms[1] + 1e-9:
        bin_ms = k * probe_ms
        seg_ms = segment_bins * bin_ms
        if bin_ms >= bin_range_ms[0] - 1e-9 and seg_ms <= 1000.0 * duration_s / min_segments:
            out.append((k, bin_ms, seg_ms))
        k *= 2
    return out


def _normalised(raw: np.ndarray, preprocess: Any) -> tuple[np.ndarray, np.ndarray]:
    """(model input, scale) of binned rectified EMG in raw units, clipped and scaled as `preprocess` does."""
    from .preprocess import compute_stats

    stats = compute_stats(raw, preprocess)
    x = np.minimum(raw, stats.clip[None, :]) / stats.scale[None, :]
    return np.maximum(x, preprocess.positive_floor).astype(np.float32), np.asarray(stats.scale, dtype=np.float64)


#: Seconds of the recording (its start) that `select_time_scales` uses at most.
SELECT_MAX_SECONDS = 300.0


def select_time_scales(probe: np.ndarray, probe_ms: float, preprocess: Any, device: str = "cpu", seed: int = 0,
                       steps: int | None = None, max_epochs: int | None = None, held_out_rate: float = 0.1,
                       max_seconds: float = SELECT_MAX_SECONDS, trace: list | None = None) -> dict[str, Any] | None:
    """Bin width and segment length chosen by held-out prediction on a common time base, or None when the
    recording is too short for two candidates.

    `probe`: rectified EMG (raw units, unclipped) binned at `probe_ms`. Each candidate's input is the
    probe averaged over its bins, clipped and scaled like the model's input (`preprocess`). The same
    cells (one channel over the coarsest candidate's bin) are hidden from every candidate; after a
    short run (`steps` gradient steps, default 150 on CPU / 600 on CUDA, at most `max_epochs` epochs)
    each predicts the hidden cells' mean rectified EMG, and the best held-out R^2 wins. No behaviour
    and no truth are used. At most the first `max_seconds` of the recording are used. `trace`, when
    given, receives (bin ms, cell means of the candidate's rates in raw units) per candidate (benchmarks).
    """
    import time

    from .lfads.auto import auto_config
    from .training.selection import train_held_out

    probe = np.asarray(probe, dtype=np.float64)[: int(max_seconds * 1000.0 / probe_ms)]
    n, n_ch = probe.shape
    cands = time_scale_candidates(probe_ms, n * probe_ms / 1000.0)
    if len(cands) < 2:
        return None
    gpu = device.startswith("cuda")
    steps = int(steps or (600 if gpu else 150))
    cell = cands[-1][0]  # the coarsest candidate's bin: every candidate's bins tile it
    n_cells = n // cell
    target = probe[: n_cells * cell].reshape(n_cells, cell, n_ch).mean(1)
    target = np.minimum(target, np.percentile(target, 99.9, axis=0)[None, :])
    hidden = np.random.default_rng(seed + 104729).random((n_cells, n_ch)) < held_out_rate
    results = []
    for k, bin_ms, seg_ms in cands:
        t0 = time.perf_counter()
        per_cell = cell // k
        n_k = n // k
        raw = probe[: n_k * k].reshape(n_k, k, n_ch).mean(1)
        x, scale = _normalised(raw, preprocess)
        mask = np.zeros_like(x, dtype=bool)
        mask[: n_cells * per_cell] = np.repeat(hidden, per_cell, axis=0)
        config = auto_config(n_k, n_ch, bin_ms, seg_ms, device, steps=steps)
        config.val_fraction = 0.0  # the held-out cells are the validation here
        config.sv_rate = float(mask.mean())
        if max_epochs is not None:
            config.max_epochs = max(1, min(config.max_epochs, int(max_epochs)))
        config.patience = config.max_epochs + 1
        config.kl_increase_epoch = config.l2_increase_epoch = max(1, min(config.kl_increase_epoch,
                                                                         config.max_epochs // 3))
        rates, _ = train_held_out(x, config, mask, device=device, seed=seed)
        pred = (rates[: n_cells * per_cell] * scale[None, :]).reshape(n_cells, per_cell, n_ch).mean(1)
        if trace is not None:
            trace.append((float(bin_ms), pred))
        r2 = []
        for c in range(n_ch):
            h = hidden[:, c]
            if h.sum() < 2:
                continue
            sst = float(((target[h, c] - target[h, c].mean()) ** 2).sum())
            r2.append(1.0 - float(((pred[h, c] - target[h, c]) ** 2).sum()) / max(sst, 1e-30))
        results.append({"bin_ms": float(bin_ms), "segment_ms": float(seg_ms), "epochs": int(config.max_epochs),
                        "held_out_r2": float(np.mean(r2)) if r2 else float("nan"),
                        "seconds": round(time.perf_counter() - t0, 1)})
    scores = [r["held_out_r2"] if np.isfinite(r["held_out_r2"]) else -np.inf for r in results]
    best = results[int(np.argmax(scores))]
    return {"bin_ms": best["bin_ms"], "segment_ms": best["segment_ms"], "rule": SELECTION_RULE,
            "common_bin_ms": float(cell * probe_ms), "held_out_rate": held_out_rate, "steps_per_candidate": steps,
            "seconds_used": float(n * probe_ms / 1000.0), "candidates": results}
