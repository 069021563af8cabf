"""Baselines run beside the model: low-pass envelope and Sanger's Bayesian filter of rectified EMG."""

from .bayes import bayes_filter
from .lowpass import lowpass_envelope, select_cutoff

__all__ = ["bayes_filter", "lowpass_envelope", "select_cutoff"]
