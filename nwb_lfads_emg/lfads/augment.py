"""Augmentations: coordinated dropout, per-channel temporal shifts, sample-validation masks."""

from __future__ import annotations

import torch
from torch import Tensor


def coordinated_dropout(shape: tuple[int, ...], rate: float, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> Tensor:
    """Boolean mask of entries DROPPED from the encoder input (probability `rate`); the loss uses them."""
    if rate <= 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return (torch.rand(shape, generator=generator) < rate).to(device)


def sample_validation_mask(shape: tuple[int, ...], rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Boolean mask of held-out entries: never given to the encoders nor counted in the training loss."""
    if rate <= 0:
        return torch.zeros(shape, dtype=torch.bool)
    return torch.rand(shape, generator=generator) < rate


def random_shifts(batch: int, channels: int, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Integer shifts in [-max_shift, max_shift], drawn independently per segment and channel."""
    if max_shift <= 0:
        return torch.zeros(batch, channels, dtype=torch.long)
    return torch.randint(-max_shift, max_shift + 1, (batch, channels), generator=generator)


def temporal_shift(x: Tensor, shifts: Tensor) -> Tensor:
    """Shift each channel of x (B, T, C) in time by shifts (B, C) bins, repeating the edge values."""
    if not bool(shifts.any()):
        return x
    n_t = x.shape[1]
    idx = torch.arange(n_t, device=x.device).view(1, n_t, 1) + shifts.to(x.device).unsqueeze(1)
    return torch.gather(x, 1, idx.clamp(0, n_t - 1))


def shift_pair(x: Tensor, max_shift: int, generator: torch.Generator | None = None,
               *alike: Tensor) -> tuple[Tensor, ...]:
    """(encoder input, reconstruction target), each shifted per channel independently (the EMG paper's trick).

    Tensors in `alike` (same shape as x, e.g. masks) get the same two shifts: (x_in, x_tgt, a_in, a_tgt, ...).
    """
    tensors = (x, *alike)
    if max_shift <= 0:
        return tuple(t for t in tensors for _ in range(2))
    b, _, c = x.shape
    s_in = random_shifts(b, c, max_shift, generator)
    s_tgt = random_shifts(b, c, max_shift, generator)
    return tuple(out for t in tensors for out in (temporal_shift(t, s_in), temporal_shift(t, s_tgt)))
