"""Augmentations: coordinated dropout, per-channel temporal shifts, sample-validation masks."""

from __future__ import annotations

import math

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


def shift_std_bins(shift_ms: float, bin_ms: float) -> float:
    """The shifts' standard deviation in bins for one given in milliseconds."""
    return max(float(shift_ms), 0.0) / float(bin_ms) if bin_ms > 0 else 0.0


def random_shifts(batch: int, channels: int, std: float, generator: torch.Generator | None = None,
                  max_shift: int | None = None) -> Tensor:
    """Integer shifts (bins) per segment and channel: a rounded Gaussian of SD `std` clipped at
    +-max_shift (default 2 * std, rounded up), as lfads-torch's TemporalShift (SD 3, clip 6)."""
    if std <= 0:
        return torch.zeros(batch, channels, dtype=torch.long)
    limit = int(math.ceil(2.0 * std)) if max_shift is None else int(max_shift)
    draws = torch.randn((batch, channels), generator=generator) * float(std)
    return draws.round().long().clamp(-limit, limit)


def temporal_shift(x: Tensor, shifts: Tensor) -> Tensor:
    """Shift each channel of x (B, T, C) in time by shifts (B, C) bins, repeating the edge values."""
    if not bool(shifts.any()):
        return x
    n_t = x.shape[1]
    idx = torch.arange(n_t, device=x.device).view(1, n_t, 1) + shifts.to(x.device).unsqueeze(1)
    return torch.gather(x, 1, idx.clamp(0, n_t - 1))


def shift_pair(x: Tensor, std: float, generator: torch.Generator | None = None,
               *alike: Tensor) -> tuple[Tensor, ...]:
    """(encoder input, reconstruction target), each shifted per channel independently (the EMG paper's trick);
    shifts are rounded Gaussians of SD `std` bins. Tensors in `alike` (same shape as x, e.g. masks) get the
    same two shifts: (x_in, x_tgt, a_in, a_tgt, ...)."""
    tensors = (x, *alike)
    if std <= 0:
        return tuple(t for t in tensors for _ in range(2))
    b, _, c = x.shape
    s_in = random_shifts(b, c, std, generator)
    s_tgt = random_shifts(b, c, std, generator)
    return tuple(out for t in tensors for out in (temporal_shift(t, s_in), temporal_shift(t, s_tgt)))
