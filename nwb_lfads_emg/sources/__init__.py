"""Read EMG, spikes and behaviour from local NWB files, https URLs and DANDI assets (streamed lazily).

Never imports torch.
"""

from .discover import BehaviorInfo, SeriesInfo, find_behavior_series, find_emg_candidates
from .opened import OpenedSource, open_source
from .reader import EMGReader, inspect_source, read_behavior, read_series, read_spikes_binned

__all__ = [
    "BehaviorInfo",
    "EMGReader",
    "OpenedSource",
    "SeriesInfo",
    "find_behavior_series",
    "find_emg_candidates",
    "inspect_source",
    "open_source",
    "read_behavior",
    "read_series",
    "read_spikes_binned",
]
