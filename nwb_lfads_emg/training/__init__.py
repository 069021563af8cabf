"""Training, checkpoints, segmenting and inference for LFADS (and population-based training in pbt.py)."""

from .segments import chop, merge
from .trainer import FitResult, Inference, Trainer, fit, infer, load_model

__all__ = ["FitResult", "Inference", "Trainer", "chop", "fit", "infer", "load_model", "merge"]
