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
    """AR(1) prior per inferred-input dimension with a learnable time constant and innovation variance.

    Parameterised as lfads-torch's `AutoregressiveMultivariateNormal`: `log_nvar` is the log of the
    innovation (process) variance, so the stationary variance is nvar / (1 - alpha^2).
    """

    def __init__(self, dim: int, tau: float, nvar: float) -> None:
        super().__init__()
        self.log_tau = nn.Parameter(torch.full((dim,), math.log(tau)))
        self.log_nvar = nn.Parameter(torch.full((dim,), math.log(nvar)))

    def log_prob(self, u: Tensor) -> Tensor:
        """log p(u) for u (B, T, D), summed over time and dimensions -> (B,)."""
        alpha = torch.exp(-1.0 / self.log_tau.exp())
        # stationary first step (variance nvar / (1 - alpha^2)), then innovations of variance nvar
        stat_log_var = self.log_nvar - torch.log(1.0 - alpha**2)
        lp0 = -0.5 * (math.log(2 * math.pi) + stat_log_var + u[:, 0] ** 2 / stat_log_var.exp())
        total = lp0.sum(dim=-1)
        if u.shape[1] > 1:
            resid = u[:, 1:] - alpha * u[:, :-1]
            lp = -0.5 * (math.log(2 * math.pi) + self.log_nvar + resid**2 / self.log_nvar.exp())
            total = total + lp.sum(dim=(1, 2))
        return total

    def kl(self, u: Tensor, post_mean: Tensor, post_log_var: Tensor) -> Tensor:
        """Single-sample Monte-Carlo KL(q || p) from the sample u, summed per segment, batch-averaged."""
        log_q = -0.5 * (math.log(2 * math.pi) + post_log_var + (u - post_mean) ** 2 / post_log_var.exp())
        return (log_q.sum(dim=(1, 2)) - self.log_prob(u)).mean()
