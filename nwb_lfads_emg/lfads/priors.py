"""Priors and KL terms: Gaussian initial condition, AR(1) inferred inputs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianICPrior(nn.Module):
    """N(mean, var) prior on the initial condition, with a learnable mean and fixed variance."""

    def __init__(self, dim: int, var: float) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim))
        self.register_buffer("log_var", torch.full((dim,), math.log(var)))

    def kl(self, post_mean: Tensor, post_var: Tensor) -> Tensor:
        """Analytic KL(q || p), summed over dimensions and averaged over the batch."""
        p_var = self.log_var.exp()
        kl = 0.5 * (self.log_var - post_var.log() + (post_var + (post_mean - self.mean) ** 2) / p_var - 1.0)
        return kl.sum(dim=-1).mean()


class AR1Prior(nn.Module):
    """Autoregressive AR(1) prior per inferred-input dimension, learnable time constant and variance."""

    def __init__(self, dim: int, tau: float, var: float) -> None:
        super().__init__()
        self.log_tau = nn.Parameter(torch.full((dim,), math.log(tau)))
        self.log_var = nn.Parameter(torch.full((dim,), math.log(var)))

    def log_prob(self, u: Tensor) -> Tensor:
        """log p(u) for u (B, T, D), summed over time and dimensions -> (B,)."""
        alpha = torch.exp(-1.0 / self.log_tau.exp())
        log_var = self.log_var
        # stationary first step, then innovations with variance var * (1 - alpha^2)
        lp0 = -0.5 * (math.log(2 * math.pi) + log_var + u[:, 0] ** 2 / log_var.exp())
        total = lp0.sum(dim=-1)
        if u.shape[1] > 1:
            inn_log_var = log_var + torch.log1p(-alpha**2 + 1e-6)
            resid = u[:, 1:] - alpha * u[:, :-1]
            lp = -0.5 * (math.log(2 * math.pi) + inn_log_var + resid**2 / inn_log_var.exp())
            total = total + lp.sum(dim=(1, 2))
        return total

    def kl(self, u: Tensor, post_mean: Tensor, post_log_var: Tensor) -> Tensor:
        """Single-sample Monte-Carlo KL(q || p) from the sample u, summed per segment, batch-averaged."""
        log_q = -0.5 * (math.log(2 * math.pi) + post_log_var + (u - post_mean) ** 2 / post_log_var.exp())
        return (log_q.sum(dim=(1, 2)) - self.log_prob(u)).mean()
