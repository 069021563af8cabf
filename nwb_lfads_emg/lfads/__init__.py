"""The LFADS model in pure PyTorch (no file or NWB input/output)."""

from .config import LFADSConfig, preset
from .model import LFADS, LFADSOutput

__all__ = ["LFADS", "LFADSConfig", "LFADSOutput", "preset"]
