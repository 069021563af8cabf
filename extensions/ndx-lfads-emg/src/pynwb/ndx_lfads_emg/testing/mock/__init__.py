"""Mock objects of each type, in the style of ``pynwb.testing.mock``: valid defaults, every field overridable."""

from .lfads_emg import mock_LatentFactors, mock_LFADSModelProvenance, mock_MuscleActivation

__all__ = ["mock_MuscleActivation", "mock_LatentFactors", "mock_LFADSModelProvenance"]
