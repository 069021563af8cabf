"""Short training runs that score a configuration by how well it predicts entries it never saw.

Used to choose a session's time scales (`nwb_lfads_emg.timescales`): each candidate trains on the
recording with given held-out entries (hidden from the encoders and left out of the loss), and its
posterior-mean rates at those entries are compared with the data by the caller.
"""

from __future__ import annotations

import numpy as np
import torch

from ..lfads.config import LFADSConfig
from .segments import chop, merge
from .trainer import Trainer, _autocast


def train_held_out(data: np.ndarray, config: LFADSConfig, held_out: np.ndarray, device: str = "auto",
                   seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Train `config.max_epochs` epochs on (bins, channels) `data` with `held_out` entries hidden; returns
    the final model's posterior-mean rates over the whole recording (held-out entries still hidden) and
    the per-epoch metrics."""
    trainer = Trainer(data, config, device=device, seed=seed, sv_mask=held_out)
    while trainer.epoch < config.max_epochs:
        trainer.train_epoch()
    return masked_rates(trainer, held_out), trainer.metrics


@torch.no_grad()
def masked_rates(trainer: Trainer, held_out: np.ndarray) -> np.ndarray:
    """Posterior-mean rates of the trainer's current model over its data, `held_out` entries hidden."""
    c = trainer.config
    segs, starts = chop(trainer.data, c.seg_len, c.seg_overlap)
    masks, _ = chop(np.asarray(held_out, dtype=bool), c.seg_len, c.seg_overlap)
    model = trainer.model
    model.eval()
    out = []
    for i in range(0, len(segs), 256):
        x = torch.from_numpy(segs[i : i + 256]).to(trainer.device)
        keep = ~torch.from_numpy(masks[i : i + 256]).to(trainer.device)
        with _autocast(trainer.device, trainer.amp_dtype):
            means = model(x, keep=keep, sample=False).means
        out.append(means.float().cpu().numpy())
    model.train()
    return merge(np.concatenate(out).astype(np.float64), starts, trainer.data.shape[0], c.seg_overlap)
