"""The decoder stepping in time: controller GRU -> inferred inputs -> generator GRU -> factors."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import one_line


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


def _gru_fwd(gi: Tensor, h: Tensor, whh_t: Tensor, hidden: int, clip: float, out: Tensor) -> tuple[Tensor, ...]:
    """`gru_step` (same ops, same values; the clipped state written to `out`) and what its backward needs."""
    gh = torch.mm(h, whh_t)
    rz = torch.sigmoid(gi[:, : 2 * hidden] + gh[:, : 2 * hidden])
    gh_n = gh[:, 2 * hidden :]
    n = torch.tanh(gi[:, 2 * hidden :] + rz[:, :hidden] * gh_n)
    h_minus_n = h - n
    h_new = n + rz[:, hidden:] * h_minus_n
    torch.clamp(h_new, -clip, clip, out=out)
    return rz, n, h_minus_n, gh_n, h_new.abs() > clip


def _gru_bwd(dh: Tensor, rz: Tensor, n: Tensor, h_minus_n: Tensor, gh_n: Tensor, clipped: Tensor, hidden: int,
             dgi: Tensor, dgh_n: Tensor) -> Tensor:
    """Backward of one clipped GRU step: d gi to `dgi` (B, 3H), the candidate part of d gh to `dgh_n` (B, H)
    (its gate part equals that of d gi); returns d h through the z * h path."""
    dh = dh.masked_fill(clipped, 0.0)
    dhz = dh * rz[:, hidden:]
    da = dgi[:, 2 * hidden :]
    torch.ops.aten.tanh_backward.grad_input(dh - dhz, n, grad_input=da)
    torch.mul(da, gh_n, out=dgi[:, :hidden])
    torch.mul(dh, h_minus_n, out=dgi[:, hidden : 2 * hidden])
    drz = dgi[:, : 2 * hidden]
    torch.ops.aten.sigmoid_backward.grad_input(drz, rz, grad_input=drz)
    torch.mul(da, rz[:, :hidden], out=dgh_n)
    return dhz


class _DecoderLoop(torch.autograd.Function):
    """The decoder's time loop (controller present) with a hand-written backward through time.

    The forward does the eager `Decoder._step` ops in the same order (same values, same RNG use:
    one bernoulli_ per step for dropout exactly as `torch.dropout` on CPU); the backward needs far
    fewer ops than autograd's per-step graph, and the weight gradients are single matmuls over all steps.
    """

    @staticmethod
    def forward(ctx, ci_proj, eps, f, c, g, fac_w, con_wf, con_whh, to_co_w, to_co_b, gen_wih, gen_bih,  # noqa: ANN001
                gen_whh, clip: float, p: float, training: bool, sample: bool):  # noqa: ANN205
        hc, hg, co = con_whh.shape[1], gen_whh.shape[1], to_co_w.shape[0] // 2
        n_t, b = ci_proj.shape[1], f.shape[0]
        con_wf_t, con_whh_t, gen_wih_t, gen_whh_t, fac_w_t = con_wf.t(), con_whh.t(), gen_wih.t(), gen_whh.t(), fac_w.t()
        drop = training and p > 0
        # states of all steps in (T + 1, B, .) buffers: [0] the initial one, [t + 1] after step t
        fs, cs, gs = f.new_empty(n_t + 1, b, f.shape[1]), c.new_empty(n_t + 1, b, hc), g.new_empty(n_t + 1, b, hg)
        fs[0], cs[0], gs[0] = f, c, g
        us = f.new_empty(n_t, b, co)
        ds = f.new_empty(n_t, b, hg) if drop else gs[1:]
        saved_c, saved_g, scales, lv_clipped, noises, means, log_vars = [], [], [], [], [], [], []
        for t in range(n_t):
            gi = torch.addmm(ci_proj[:, t], fs[t], con_wf_t)
            saved_c.append(_gru_fwd(gi, cs[t], con_whh_t, hc, clip, cs[t + 1]))
            co_mean, co_log_var = F.linear(cs[t + 1], to_co_w, to_co_b).chunk(2, dim=-1)
            lv_clipped.append((co_log_var < -16.0) | (co_log_var > 8.0))
            co_log_var = co_log_var.clamp(-16.0, 8.0)
            if sample:
                scale = torch.exp(0.5 * co_log_var)
                scales.append(scale)
                torch.add(co_mean, scale * eps[:, t], out=us[t])
            else:
                us[t].copy_(co_mean)
            gi_g = torch.addmm(gen_bih, us[t], gen_wih_t)
            saved_g.append(_gru_fwd(gi_g, gs[t], gen_whh_t, hg, clip, gs[t + 1]))
            if drop:  # as torch.dropout on CPU: noise = bernoulli_(1 - p) / (1 - p); g * noise
                noise = torch.empty_like(gs[t + 1]).bernoulli_(1 - p).div_(1 - p)
                noises.append(noise)
                torch.mul(gs[t + 1], noise, out=ds[t])
            torch.mm(ds[t], fac_w_t, out=fs[t + 1])
            means.append(co_mean)
            log_vars.append(co_log_var)
        ctx.lists = (saved_c, saved_g, scales, lv_clipped, noises)
        ctx.bufs = (fs, cs, gs, us, ds)
        ctx.save_for_backward(eps, fac_w, con_wf, con_whh, to_co_w, gen_wih, gen_whh)
        ctx.flags = (hc, hg, co, drop, sample)
        return (fs[1:].transpose(0, 1).contiguous(), torch.stack(means, 1), torch.stack(log_vars, 1),
                us.transpose(0, 1).contiguous())

    @staticmethod
    def backward(ctx, d_fac, d_mean, d_lv, d_u):  # noqa: ANN001, ANN205
        eps, fac_w, con_wf, con_whh, to_co_w, gen_wih, gen_whh = ctx.saved_tensors
        saved_c, saved_g, scales, lv_clipped, noises = ctx.lists
        fs, cs, gs, us, ds = ctx.bufs
        hc, hg, co, drop, sample = ctx.flags
        n_t, b = us.shape[0], us.shape[1]
        zeros = fs.new_zeros(b, n_t, 1)
        d_fac = d_fac if d_fac is not None else zeros.expand(-1, -1, fac_w.shape[0])
        d_mean = d_mean if d_mean is not None else zeros.expand(-1, -1, co)
        d_lv = d_lv if d_lv is not None else zeros.expand(-1, -1, co)
        d_u = d_u if d_u is not None else zeros.expand(-1, -1, co)
        dfs = fs.new_empty(n_t, b, fs.shape[2])
        dgi_c, dghn_c = cs.new_empty(n_t, b, 3 * hc), cs.new_empty(n_t, b, hc)
        dgi_g, dghn_g = gs.new_empty(n_t, b, 3 * hg), gs.new_empty(n_t, b, hg)
        # d h_prev = d gh @ W_hh, with d gh = [d gi's gate part, dgh_n]
        con_whh_rz, con_whh_n = con_whh[: 2 * hc], con_whh[2 * hc :]
        gen_whh_rz, gen_whh_n = gen_whh[: 2 * hg], gen_whh[2 * hg :]
        dco = us.new_empty(n_t, b, 2 * co)
        df_c, dc_c, dg_c = torch.zeros_like(fs[0]), torch.zeros_like(cs[0]), torch.zeros_like(gs[0])
        for t in range(n_t - 1, -1, -1):
            df = torch.add(d_fac[:, t], df_c, out=dfs[t])
            dd = torch.mm(df, fac_w)
            dg = dg_c + (dd * noises[t] if drop else dd)
            dg_prev = _gru_bwd(dg, *saved_g[t], hg, dgi_g[t], dghn_g[t])
            saved_g[t] = None  # free the step's saved tensors as we go, as autograd does
            dg_c = torch.addmm(torch.addmm(dg_prev, dgi_g[t, :, : 2 * hg], gen_whh_rz), dghn_g[t], gen_whh_n)
            du = torch.addmm(d_u[:, t], dgi_g[t], gen_wih)
            torch.add(d_mean[:, t], du, out=dco[t, :, :co])
            dlv = d_lv[:, t] + du * eps[:, t] * scales[t] * 0.5 if sample else d_lv[:, t]
            dco[t, :, co:] = dlv.masked_fill(lv_clipped[t], 0.0)
            dc = torch.addmm(dc_c, dco[t], to_co_w)
            dc_prev = _gru_bwd(dc, *saved_c[t], hc, dgi_c[t], dghn_c[t])
            saved_c[t] = None
            dc_c = torch.addmm(torch.addmm(dc_prev, dgi_c[t, :, : 2 * hc], con_whh_rz), dghn_c[t], con_whh_n)
            df_c = torch.mm(dgi_c[t], con_wf)

        def flat(x: Tensor) -> Tensor:
            return x.reshape(-1, x.shape[-1])

        d_ci = dgi_c.transpose(0, 1).contiguous()
        d_fac_w = flat(dfs).t().mm(flat(ds))
        d_con_wf = flat(dgi_c).t().mm(flat(fs[:-1]))
        d_con_whh = torch.cat([flat(dgi_c[..., : 2 * hc]).t().mm(flat(cs[:-1])), flat(dghn_c).t().mm(flat(cs[:-1]))])
        d_to_co_w = flat(dco).t().mm(flat(cs[1:]))
        d_to_co_b = flat(dco).sum(0)
        d_gen_wih = flat(dgi_g).t().mm(flat(us))
        d_gen_bih = flat(dgi_g).sum(0)
        d_gen_whh = torch.cat([flat(dgi_g[..., : 2 * hg]).t().mm(flat(gs[:-1])), flat(dghn_g).t().mm(flat(gs[:-1]))])
        return (d_ci, None, df_c, dc_c, dg_c, d_fac_w, d_con_wf, d_con_whh, d_to_co_w, d_to_co_b, d_gen_wih,
                d_gen_bih, d_gen_whh, None, None, None, None)


class Decoder(nn.Module):
    """Controller + generator recurrence; returns factors and the inferred-input posterior per step."""

    def __init__(self, ci_dim: int, con_dim: int, co_dim: int, ic_dim: int, gen_dim: int, fac_dim: int,
                 clip: float, dropout: float, fast: bool = True) -> None:
        super().__init__()
        # run the time loop as one autograd Function with a hand-written backward (`_DecoderLoop`; same
        # parameters, ops and RNG use as the eager step loop)
        self.fast = fast
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
        """Compile the per-step update with torch.compile (falls back to the eager step, with a warning)."""
        try:
            self._step_fn = torch.compile(self._step, dynamic=False)
            self.fast = False
        except Exception as exc:  # noqa: BLE001 - compile is an optional speed-up
            warnings.warn(f"torch.compile is unavailable ({one_line(exc)}); the decoder runs its eager step",
                          RuntimeWarning, stacklevel=2)
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
            # the fused loop keeps every step's intermediates for its backward: only worth it with gradients
            if self.fast and torch.is_grad_enabled() and not torch.is_autocast_enabled() \
                    and ci_proj.shape[1] == n_steps:
                con, gen = self.con, self.gen
                fac, co_mean, co_log_var, u = _DecoderLoop.apply(
                    ci_proj, eps if eps is not None else ci_proj.new_zeros(0), f, c, g, fac_w,
                    con.weight_ih[:, self.ci_dim :], con.weight_hh, self.to_co.weight, self.to_co.bias,
                    gen.weight_ih, gen.bias_ih, gen.weight_hh, float(con.clip), float(self.dropout.p),
                    self.training, eps is not None,
                )
                return {"factors": fac, "co_mean": co_mean, "co_log_var": co_log_var, "inputs": u}
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
