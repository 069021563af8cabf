"""Bidirectional GRU encoders: one for the initial condition, one for the controller inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ICEncoder(nn.Module):
    """Bidirectional GRU over a segment; final states -> initial-condition posterior mean and variance."""

    def __init__(self, input_dim: int, hidden_dim: int, ic_dim: int, var_min: float, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.h0 = nn.Parameter(torch.zeros(2, 1, hidden_dim))
        self.dropout = nn.Dropout(dropout)
        self.to_post = nn.Linear(2 * hidden_dim, 2 * ic_dim)
        self.var_min = var_min

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> (mean (B, ic), variance (B, ic)), variance >= var_min."""
        h0 = self.h0.expand(-1, x.shape[0], -1).contiguous()
        _, h_n = self.gru(x, h0)
        h = torch.cat([h_n[0], h_n[1]], dim=-1)
        mean, log_var = self.to_post(self.dropout(h)).chunk(2, dim=-1)
        return mean, log_var.clamp(-20.0, 10.0).exp() + self.var_min


class CIEncoder(nn.Module):
    """Bidirectional GRU giving per-step controller inputs; the two directions are offset by `lag` steps."""

    def __init__(self, input_dim: int, hidden_dim: int, lag: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.h0 = nn.Parameter(torch.zeros(2, 1, hidden_dim))
        self.hidden_dim = hidden_dim
        self.lag = lag
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> controller inputs (B, T, 2 * hidden): forward state at t - lag, backward at t + lag."""
        h0 = self.h0.expand(-1, x.shape[0], -1).contiguous()
        out, _ = self.gru(x, h0)
        fwd, bwd = out[..., : self.hidden_dim], out[..., self.hidden_dim :]
        if self.lag > 0:
            lag = min(self.lag, x.shape[1])
            pad = fwd.new_zeros(fwd.shape[0], lag, fwd.shape[2])
            fwd = torch.cat([pad, fwd[:, : fwd.shape[1] - lag]], dim=1)
            bwd = torch.cat([bwd[:, lag:], pad], dim=1)
        return self.dropout(torch.cat([fwd, bwd], dim=-1))
