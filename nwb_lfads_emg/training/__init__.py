"""Training, checkpoints, segmenting and inference for LFADS (and population-based training in pbt/)."""

from .inference import Inference, infer, load_model
from .segments import chop, merge
from .trainer import FitResult, Trainer, fit

__all__ = ["FitResult", "Inference", "Trainer", "chop", "fit", "infer", "load_model", "merge"]
