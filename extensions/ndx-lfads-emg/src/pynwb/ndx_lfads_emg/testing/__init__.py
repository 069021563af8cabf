"""Test helpers for users of the extension: small, valid objects of each type (see ``testing.mock``)."""

from .mock import mock_LatentFactors, mock_LFADSModelProvenance, mock_MuscleActivation

__all__ = ["mock_MuscleActivation", "mock_LatentFactors", "mock_LFADSModelProvenance"]
