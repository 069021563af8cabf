"""Posterior inference with a trained model: load the exported best weights, sample the posterior over a
continuous recording and merge the segments back into continuous series."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainingError
from ..lfads.config import LFADSConfig
from ..lfads.model import LFADS
from . import checkpoint as ckpt
from .segments import chop, merge
from .trainer import _autocast, autocast_dtype, check_data, resolve_device


def load_model(run_dir: str | Path) -> tuple[LFADS, LFADSConfig]:
    """The exported best model of a run (CPU, eval mode) and its configuration."""
    payload = ckpt.read_weights(run_dir)
    config = LFADSConfig.from_dict(payload["config"])
    model = LFADS(config, int(payload["n_channels"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise TrainingError(f"{run_dir}: the weights do not match their configuration") from None
    model.eval()
    return model, config


POSTERIOR_SAMPLES = 20
"""Posterior samples averaged per segment unless a caller (e.g. `JobConfig.n_posterior_samples`) says otherwise."""


@dataclass
class Inference:
    """Posterior estimates merged into continuous series (bins first)."""

    rates: np.ndarray  # (bins, channels) posterior mean of the likelihood mean
    rates_std: np.ndarray  # (bins, channels) spread across posterior samples
    factors: np.ndarray  # (bins, factors)
    inferred_inputs: np.ndarray  # (bins, inputs)
    n_samples: int = 1


def infer(model: LFADS, data: np.ndarray, config: LFADSConfig | None = None, n_samples: int | None = None,
          device: str = "auto", batch_size: int | None = None, seed: int = 0,
          overlap: int | None = None) -> Inference:
    """Posterior-sample the model over a continuous (bins, channels) recording and merge the segments."""
    config = config or model.config
    arr = check_data(data, config.likelihood, what="inference data")
    if arr.shape[1] != model.n_channels:
        raise TrainingError(
            f"inference data: {arr.shape[1]} channels, but the model was trained on {model.n_channels}"
        )
    dev = resolve_device(device)
    overlap = config.seg_overlap if overlap is None else overlap
    segs, starts = chop(arr, config.seg_len, overlap)
    n_samples = max(int(POSTERIOR_SAMPLES if n_samples is None else n_samples), 1)
    sample = n_samples > 1
    if batch_size is None:
        batch_size = max(1, min(256, 8192 // n_samples))
    amp = autocast_dtype(config.precision, dev)
    was_training = model.training
    model.eval()
    model.to(dev)
    outs: dict[str, list[np.ndarray]] = {"rates": [], "rates_var": [], "factors": [], "inputs": []}
    devices = [dev.index or 0] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            for i in range(0, len(segs), batch_size):
                x = torch.from_numpy(segs[i : i + batch_size]).to(dev)
                b = x.shape[0]
                xr = x.repeat_interleave(n_samples, dim=0) if sample else x
                with _autocast(dev, amp):
                    out = model(xr, sample=sample)

                def per_seg(t: torch.Tensor, b: int = b) -> torch.Tensor:
                    # explicit sample count: a -1 is ambiguous for empty inputs (co_dim = 0)
                    return t.float().reshape(b, n_samples if sample else 1, *t.shape[1:])

                means = per_seg(out.means)
                outs["rates"].append(means.mean(1).cpu().numpy())
                outs["rates_var"].append(means.var(1, unbiased=False).cpu().numpy())
                outs["factors"].append(per_seg(out.factors).mean(1).cpu().numpy())
                outs["inputs"].append(per_seg(out.inputs).mean(1).cpu().numpy())
    finally:
        model.train(was_training)
    n = arr.shape[0]

    def merged(key: str) -> np.ndarray:
        return merge(np.concatenate(outs[key]).astype(np.float64), starts, n, overlap)

    rates = merged("rates")
    var = np.clip(merged("rates_var"), 0.0, None)  # spread across posterior samples, stitched like the means
    return Inference(rates=rates.astype(np.float32), rates_std=np.sqrt(var).astype(np.float32),
                     factors=merged("factors").astype(np.float32),
                     inferred_inputs=merged("inputs").astype(np.float32), n_samples=n_samples)
