"""nwb-lfads-emg: estimate muscle activation from EMG in NWB/DANDI sessions with AutoLFADS."""

__version__ = "0.1.0"
