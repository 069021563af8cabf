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
