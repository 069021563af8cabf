"""Observation models: per-entry negative log-likelihood and mean from readout parameters."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_MIN, _LOG_MAX = -12.0, 12.0


class Likelihood:
    """Base: `n_params` readout outputs per channel; `nll(params, x)` per entry; `mean(params)`."""

    name = "base"
    n_params = 1

    def split(self, params: Tensor) -> tuple[Tensor, ...]:
        """Split (..., C * n_params) readout into n_params tensors of shape (..., C)."""
        return tuple(params.chunk(self.n_params, dim=-1)) if self.n_params > 1 else (params,)

    def nll(self, params: Tensor, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_data(self, x: Tensor) -> str | None:
        """Return a problem description if `x` lies outside the support, else None."""
        return None


class Gamma(Likelihood):
    """Gamma(concentration=alpha, rate=beta); readout gives log alpha, log beta. Mean alpha / beta."""

    name = "gamma"
    n_params = 2

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        log_a, log_b = (p.clamp(_LOG_MIN, _LOG_MAX) for p in self.split(params))
        a, b = log_a.exp(), log_b.exp()
        return torch.lgamma(a) - a * log_b - (a - 1.0) * torch.log(x) + b * x

    def mean(self, params: Tensor) -> Tensor:
        log_a, log_b = (p.clamp(_LOG_MIN, _LOG_MAX) for p in self.split(params))
        return (log_a - log_b).exp()

    def check_data(self, x: Tensor) -> str | None:
        if bool((x <= 0).any()):
            return "Gamma likelihood needs strictly positive data (add a positive floor or use likelihood='zig')"
        return None


class ZeroInflatedGamma(Likelihood):
    """Zero-inflated Gamma: P(x = 0) = q; otherwise Gamma(alpha, beta). Readout: logit q, log a, log b."""

    name = "zig"
    n_params = 3

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        logit_q, log_a, log_b = self.split(params)
        log_a, log_b = log_a.clamp(_LOG_MIN, _LOG_MAX), log_b.clamp(_LOG_MIN, _LOG_MAX)
        a, b = log_a.exp(), log_b.exp()
        zero = x <= 0
        safe_x = torch.where(zero, torch.ones_like(x), x)
        gamma_nll = torch.lgamma(a) - a * log_b - (a - 1.0) * torch.log(safe_x) + b * safe_x
        # -log q = softplus(-logit), -log(1 - q) = softplus(logit)
        nll_zero = torch.nn.functional.softplus(-logit_q)
        nll_pos = torch.nn.functional.softplus(logit_q) + gamma_nll
        return torch.where(zero, nll_zero, nll_pos)

    def mean(self, params: Tensor) -> Tensor:
        logit_q, log_a, log_b = self.split(params)
        return torch.sigmoid(-logit_q) * (log_a.clamp(_LOG_MIN, _LOG_MAX) - log_b.clamp(_LOG_MIN, _LOG_MAX)).exp()

    def check_data(self, x: Tensor) -> str | None:
        if bool((x < 0).any()):
            return "zero-inflated Gamma likelihood needs non-negative data"
        return None


class Poisson(Likelihood):
    """Poisson counts; readout gives the log rate."""

    name = "poisson"
    n_params = 1

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        log_r = params.clamp(_LOG_MIN, _LOG_MAX)
        return log_r.exp() - x * log_r + torch.lgamma(x + 1.0)

    def mean(self, params: Tensor) -> Tensor:
        return params.clamp(_LOG_MIN, _LOG_MAX).exp()

    def check_data(self, x: Tensor) -> str | None:
        if bool((x < 0).any()):
            return "Poisson likelihood needs non-negative counts"
        return None


class Gaussian(Likelihood):
    """Gaussian; readout gives the mean and the log variance."""

    name = "gaussian"
    n_params = 2

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_var = self.split(params)
        log_var = log_var.clamp(_LOG_MIN, _LOG_MAX)
        return 0.5 * (math.log(2 * math.pi) + log_var + (x - mu) ** 2 / log_var.exp())

    def mean(self, params: Tensor) -> Tensor:
        return self.split(params)[0]


def make_likelihood(name: str) -> Likelihood:
    """The likelihood object for a config name: gamma, zig, poisson or gaussian."""
    table = {"gamma": Gamma, "zig": ZeroInflatedGamma, "poisson": Poisson, "gaussian": Gaussian}
    if name not in table:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(table)}")
    return table[name]()
