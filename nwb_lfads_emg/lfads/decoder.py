"""The decoder stepping in time: controller GRU -> inferred inputs -> generator GRU -> factors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClippedGRUCell(nn.Module):
    """GRU cell with no hidden-to-hidden bias (frozen at zero, as in LFADS) and a clipped hidden state."""

    def __init__(self, input_size: int, hidden_size: int, clip: float) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.clip = input_size, hidden_size, clip
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(3 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        with torch.no_grad():  # update gate biased towards keeping the state (TF's forget bias 1)
            self.bias_ih[hidden_size : 2 * hidden_size].fill_(1.0)

    def step(self, gi: Tensor, h: Tensor) -> Tensor:
        """One step from the input projection gi = W_ih x + b (B, 3H) and the state h (B, H)."""
        return gru_step(gi, h, self.weight_hh, self.hidden_size, self.clip)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """One step from the raw input x (B, I)."""
        return self.step(F.linear(x, self.weight_ih, self.bias_ih), h)


def gru_step(gi: Tensor, h: Tensor, weight_hh: Tensor, hidden: int, clip: float) -> Tensor:
    """Fused GRU update (reset, update gates in one sigmoid) followed by clipping to +-clip."""
    gh = torch.mm(h, weight_hh.t())
    rz = torch.sigmoid(gi[:, : 2 * hidden] + gh[:, : 2 * hidden])
    r, z = rz[:, :hidden], rz[:, hidden:]
    n = torch.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
    h_new = n + z * (h - n)
    return h_new.clamp(-clip, clip)


def normalized_rows(weight: Tensor) -> Tensor:
    """Each row scaled to unit L2 norm (the LFADS factor read-in)."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-8)


class Decoder(nn.Module):
    """Controller + generator recurrence; returns factors and the inferred-input posterior per step."""

    def __init__(self, ci_dim: int, con_dim: int, co_dim: int, ic_dim: int, gen_dim: int, fac_dim: int,
                 clip: float, dropout: float) -> None:
        super().__init__()
        self.ci_dim, self.co_dim, self.con_dim, self.gen_dim = ci_dim, co_dim, con_dim, gen_dim
        self.ic_to_g0 = nn.Linear(ic_dim, gen_dim)
        self.gen = ClippedGRUCell(max(co_dim, 1), gen_dim, clip)
        self.fac_weight = nn.Parameter(torch.empty(fac_dim, gen_dim))
        nn.init.normal_(self.fac_weight, std=1.0 / math.sqrt(gen_dim))
        self.dropout = nn.Dropout(dropout)
        if co_dim > 0:
            self.con = ClippedGRUCell(ci_dim + fac_dim, con_dim, clip)
            self.con_h0 = nn.Parameter(torch.zeros(1, con_dim))
            self.to_co = nn.Linear(con_dim, 2 * co_dim)
        self._step_fn = self._step

    def enable_compile(self) -> None:
        """Compile the per-step update with torch.compile (falls back silently if unavailable)."""
        try:
            self._step_fn = torch.compile(self._step, dynamic=False)
        except Exception:  # noqa: BLE001 - compile is an optional speed-up
            self._step_fn = self._step

    def _step(self, ci_t: Tensor | None, f: Tensor, c: Tensor | None, g: Tensor, eps_t: Tensor | None,
              fac_w: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        co_mean = co_log_var = u = None
        if self.co_dim > 0:
            w = self.con.weight_ih
            gi = torch.addmm(ci_t, f, w[:, self.ci_dim :].t())
            c = gru_step(gi, c, self.con.weight_hh, self.con_dim, self.con.clip)
            co_mean, co_log_var = self.to_co(c).chunk(2, dim=-1)
            co_log_var = co_log_var.clamp(-16.0, 8.0)
            u = co_mean + torch.exp(0.5 * co_log_var) * eps_t if eps_t is not None else co_mean
            gi_g = torch.addmm(self.gen.bias_ih, u, self.gen.weight_ih.t())
        else:
            gi_g = self.gen.bias_ih.expand(g.shape[0], -1)
        g = gru_step(gi_g, g, self.gen.weight_hh, self.gen_dim, self.gen.clip)
        f = F.linear(self.dropout(g), fac_w)
        return f, c, g, co_mean, co_log_var, u

    def forward(self, ic_sample: Tensor, ci: Tensor | None, n_steps: int, sample: bool = True) -> dict[str, Tensor]:
        """Run n_steps from the initial condition; ci (B, T, ci_dim) are the controller inputs."""
        batch = ic_sample.shape[0]
        fac_w = normalized_rows(self.fac_weight)
        g = self.ic_to_g0(ic_sample).clamp(-self.gen.clip, self.gen.clip)
        f = F.linear(self.dropout(g), fac_w)
        c = ci_proj = eps = None
        if self.co_dim > 0:
            assert ci is not None
            c = self.con_h0.expand(batch, -1)
            # the controller-input half of the input projection, for all steps in one matmul
            ci_proj = F.linear(ci, self.con.weight_ih[:, : self.ci_dim], self.con.bias_ih)
            if sample:
                eps = torch.randn(batch, n_steps, self.co_dim, device=ic_sample.device, dtype=ci_proj.dtype)
        factors, means, log_vars, inputs = [], [], [], []
        for t in range(n_steps):
            f, c, g, co_mean, co_log_var, u = self._step_fn(
                ci_proj[:, t] if ci_proj is not None else None, f, c, g,
                eps[:, t] if eps is not None else None, fac_w,
            )
            factors.append(f)
            if self.co_dim > 0:
                means.append(co_mean)
                log_vars.append(co_log_var)
                inputs.append(u)
        out = {"factors": torch.stack(factors, dim=1)}
        if self.co_dim > 0:
            out.update(co_mean=torch.stack(means, 1), co_log_var=torch.stack(log_vars, 1), inputs=torch.stack(inputs, 1))
        else:
            empty = out["factors"].new_zeros(batch, n_steps, 0)
            out.update(co_mean=empty, co_log_var=empty, inputs=empty)
        return out
