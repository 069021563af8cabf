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


def _gru_fwd(gi: Tensor, h: Tensor, whh_t: Tensor, hidden: int, clip: float) -> tuple[Tensor, ...]:
    """`gru_step` (same ops, same values) also returning what its backward needs."""
    gh = torch.mm(h, whh_t)
    rz = torch.sigmoid(gi[:, : 2 * hidden] + gh[:, : 2 * hidden])
    r, z = rz[:, :hidden], rz[:, hidden:]
    gh_n = gh[:, 2 * hidden :]
    n = torch.tanh(gi[:, 2 * hidden :] + r * gh_n)
    h_new = n + z * (h - n)
    keep = (h_new >= -clip) & (h_new <= clip)
    return h_new.clamp(-clip, clip), rz, n, gh_n, keep


def _gru_bwd(dh: Tensor, h: Tensor, rz: Tensor, n: Tensor, gh_n: Tensor, keep: Tensor,
             hidden: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of one clipped GRU step: (d gi, d gh, d h through the z * h path)."""
    dh = dh * keep
    r, z = rz[:, :hidden], rz[:, hidden:]
    dn = dh * (1 - z)
    dz = dh * (h - n)
    da = dn * (1 - n * n)
    dr = da * gh_n
    drz = torch.cat([dr, dz], 1) * rz * (1 - rz)
    return torch.cat([drz, da], 1), torch.cat([drz, da * r], 1), dh * z


class _DecoderLoop(torch.autograd.Function):
    """The decoder's time loop (controller present) with a hand-written backward through time.

    The forward does the eager `Decoder._step` ops in the same order (same values, same RNG use:
    one bernoulli_ per step for dropout exactly as `torch.dropout`); the backward needs far fewer
    ops than autograd's per-step graph, and the weight gradients are single matmuls over all steps.
    """

    @staticmethod
    def forward(ctx, ci_proj, eps, f, c, g, fac_w, con_wf, con_whh, to_co_w, to_co_b, gen_wih, gen_bih,  # noqa: ANN001
                gen_whh, clip: float, p: float, training: bool, sample: bool):  # noqa: ANN205
        hc, hg, co = con_whh.shape[1], gen_whh.shape[1], to_co_w.shape[0] // 2
        con_wf_t, con_whh_t, gen_wih_t, gen_whh_t = con_wf.t(), con_whh.t(), gen_wih.t(), gen_whh.t()
        drop = training and p > 0
        fs, cs, gs, rz_c, n_c, ghn_c, keep_c, rz_g, n_g, ghn_g, keep_g = ([] for _ in range(11))
        scales, lv_keep, us, noises, ds, means, log_vars = ([] for _ in range(7))
        factors = []
        for t in range(ci_proj.shape[1]):
            fs.append(f)
            cs.append(c)
            gs.append(g)
            gi = torch.addmm(ci_proj[:, t], f, con_wf_t)
            c, *saved = _gru_fwd(gi, c, con_whh_t, hc, clip)
            for lst, v in zip((rz_c, n_c, ghn_c, keep_c), saved, strict=True):
                lst.append(v)
            co_mean, co_log_var = F.linear(c, to_co_w, to_co_b).chunk(2, dim=-1)
            lv_keep.append((co_log_var >= -16.0) & (co_log_var <= 8.0))
            co_log_var = co_log_var.clamp(-16.0, 8.0)
            if sample:
                scale = torch.exp(0.5 * co_log_var)
                scales.append(scale)
                u = co_mean + scale * eps[:, t]
            else:
                u = co_mean
            us.append(u)
            gi_g = torch.addmm(gen_bih, u, gen_wih_t)
            g, *saved = _gru_fwd(gi_g, g, gen_whh_t, hg, clip)
            for lst, v in zip((rz_g, n_g, ghn_g, keep_g), saved, strict=True):
                lst.append(v)
            if drop:  # as torch.dropout on CPU: noise = bernoulli_(1 - p) / (1 - p); g * noise
                noise = torch.empty_like(g).bernoulli_(1 - p).div_(1 - p)
                noises.append(noise)
                d = g * noise
            else:
                d = g
            ds.append(d)
            f = F.linear(d, fac_w)
            factors.append(f)
            means.append(co_mean)
            log_vars.append(co_log_var)
        ctx.lists = (fs, cs, gs, rz_c, n_c, ghn_c, keep_c, rz_g, n_g, ghn_g, keep_g, scales, lv_keep, us, noises, ds)
        ctx.save_for_backward(eps, fac_w, con_wf, con_whh, to_co_w, gen_wih, gen_whh)
        ctx.flags = (hc, hg, co, drop, sample)
        ctx.c_last = c
        return torch.stack(factors, 1), torch.stack(means, 1), torch.stack(log_vars, 1), torch.stack(us, 1)

    @staticmethod
    def backward(ctx, d_fac, d_mean, d_lv, d_u):  # noqa: ANN001, ANN205
        eps, fac_w, con_wf, con_whh, to_co_w, gen_wih, gen_whh = ctx.saved_tensors
        fs, cs, gs, rz_c, n_c, ghn_c, keep_c, rz_g, n_g, ghn_g, keep_g, scales, lv_keep, us, noises, ds = ctx.lists
        hc, hg, co, drop, sample = ctx.flags
        n_t = len(fs)
        b = fs[0].shape[0]
        zeros = fs[0].new_zeros(b, n_t, 1)
        d_fac = d_fac if d_fac is not None else zeros.expand(-1, -1, fac_w.shape[0])
        d_mean = d_mean if d_mean is not None else zeros.expand(-1, -1, co)
        d_lv = d_lv if d_lv is not None else zeros.expand(-1, -1, co)
        d_u = d_u if d_u is not None else zeros.expand(-1, -1, co)
        df_c, dc_c, dg_c = torch.zeros_like(fs[0]), torch.zeros_like(cs[0]), torch.zeros_like(gs[0])
        dfs, dgis, dghs, dgigs, dghgs, dcos = ([None] * n_t for _ in range(6))
        for t in range(n_t - 1, -1, -1):
            df = d_fac[:, t] + df_c
            dfs[t] = df
            dd = torch.mm(df, fac_w)
            dg = dg_c + (dd * noises[t] if drop else dd)
            dgi_g, dgh_g, dg_prev = _gru_bwd(dg, gs[t], rz_g[t], n_g[t], ghn_g[t], keep_g[t], hg)
            dgigs[t], dghgs[t] = dgi_g, dgh_g
            dg_c = torch.addmm(dg_prev, dgh_g, gen_whh)
            du = torch.addmm(d_u[:, t], dgi_g, gen_wih)
            dmean = d_mean[:, t] + du
            dlv = d_lv[:, t] + du * eps[:, t] * scales[t] * 0.5 if sample else d_lv[:, t]
            dco = torch.cat([dmean, dlv * lv_keep[t]], 1)
            dcos[t] = dco
            dc = torch.addmm(dc_c, dco, to_co_w)
            dgi, dgh, dc_prev = _gru_bwd(dc, cs[t], rz_c[t], n_c[t], ghn_c[t], keep_c[t], hc)
            dgis[t], dghs[t] = dgi, dgh
            dc_c = torch.addmm(dc_prev, dgh, con_whh)
            df_c = torch.mm(dgi, con_wf)

        def flat(xs: list) -> Tensor:
            return torch.stack(xs, 0).reshape(n_t * b, -1)

        dgis_f, dgigs_f, dcos_f = flat(dgis), flat(dgigs), flat(dcos)
        d_ci = torch.stack(dgis, 1)
        d_fac_w = flat(dfs).t().mm(flat(ds))
        d_con_wf = dgis_f.t().mm(flat(fs))
        d_con_whh = flat(dghs).t().mm(flat(cs))
        d_to_co_w = dcos_f.t().mm(flat(cs[1:] + [ctx.c_last]))
        d_to_co_b = dcos_f.sum(0)
        d_gen_wih = dgigs_f.t().mm(flat(us))
        d_gen_bih = dgigs_f.sum(0)
        d_gen_whh = flat(dghgs).t().mm(flat(gs))
        return (d_ci, None, df_c, dc_c, dg_c, d_fac_w, d_con_wf, d_con_whh, d_to_co_w, d_to_co_b, d_gen_wih,
                d_gen_bih, d_gen_whh, None, None, None, None)


class Decoder(nn.Module):
    """Controller + generator recurrence; returns factors and the inferred-input posterior per step."""

    def __init__(self, ci_dim: int, con_dim: int, co_dim: int, ic_dim: int, gen_dim: int, fac_dim: int,
                 clip: float, dropout: float, fast: bool = True) -> None:
        super().__init__()
        # run the time loop in TorchScript (same parameters, ops and RNG use as the eager step loop)
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
        """Compile the per-step update with torch.compile (falls back silently if unavailable)."""
        try:
            self._step_fn = torch.compile(self._step, dynamic=False)
            self.fast = False
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
            if self.fast and not torch.is_autocast_enabled() and ci_proj.shape[1] == n_steps:
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
