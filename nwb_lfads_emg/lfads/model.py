"""The LFADS model: encoders, decoder, priors and readout assembled; loss with ramped KL and L2."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import LFADSConfig
from .decoder import Decoder
from .encoders import CIEncoder, ICEncoder
from .likelihoods import make_likelihood
from .priors import AR1Prior, GaussianICPrior


@dataclass
class LFADSOutput:
    """What one forward pass gives (all batch-first, time second)."""

    params: Tensor  # (B, T, C * n_params) readout, the likelihood's parameters
    means: Tensor  # (B, T, C) mean of the likelihood
    factors: Tensor  # (B, T, F)
    inputs: Tensor  # (B, T, co) inferred inputs (sampled, or posterior means when not sampling)
    ic_mean: Tensor
    ic_var: Tensor
    co_mean: Tensor
    co_log_var: Tensor


class LFADS(nn.Module):
    """Latent Factor Analysis via Dynamical Systems for `n_channels` observed channels."""

    def __init__(self, config: LFADSConfig, n_channels: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.n_channels = n_channels
        self.likelihood = make_likelihood(config.likelihood)
        c = config
        # input transform, set from the training data by `set_input_stats` (kept in the state dict)
        self.register_buffer("in_offset", torch.zeros(n_channels))
        self.register_buffer("in_loc", torch.zeros(n_channels))
        self.register_buffer("in_scale", torch.ones(n_channels))
        self.in_dropout = nn.Dropout(c.dropout)
        self.ic_encoder = ICEncoder(n_channels, c.ic_enc_dim, c.ic_dim, c.ic_post_var_min, c.dropout)
        self.ci_encoder = CIEncoder(n_channels, c.ci_enc_dim, c.ci_lag, c.dropout) if c.co_dim > 0 else None
        self.decoder = Decoder(2 * c.ci_enc_dim, c.con_dim, c.co_dim, c.ic_dim, c.gen_dim, c.fac_dim,
                               c.cell_clip, c.dropout, fast=c.fast_decoder)
        self.readout = nn.Linear(c.fac_dim, n_channels * self.likelihood.n_params)
        self.ic_prior = GaussianICPrior(c.ic_dim, c.ic_prior_var)
        self.co_prior = AR1Prior(c.co_dim, c.co_prior_tau, c.co_prior_var) if c.co_dim > 0 else None
        if c.compile:
            self.decoder.enable_compile()

    # ------------------------------------------------------------------ set-up from data
    @torch.no_grad()
    def set_input_stats(self, data: Tensor) -> None:
        """Fix the encoder-input transform and the readout bias from training data (T, C)."""
        data = data.float()
        # one (T, C) temporary at a time (a long recording's training rows are large); same values as
        # log(clamp_min(data, 0) + offset): with all data > 0 the clamp and the zero offset change nothing
        if bool((data > 0).all()):
            offset = torch.zeros(self.n_channels)
            z = torch.log(data) if self.config.log_input else data
        else:
            pos = data.clamp_min(0)
            offset = 1e-2 * pos.mean(0).clamp_min(1e-6)
            z = pos.add_(offset).log_() if self.config.log_input else data
            del pos
        self.in_offset.copy_(offset)
        self.in_loc.copy_(z.mean(0))
        self.in_scale.copy_(z.std(0).clamp_min(1e-6))
        del z
        mean = data.mean(0)
        bias = self.readout.bias.view(self.likelihood.n_params, self.n_channels)
        self.readout.weight.mul_(0.1)
        name = self.likelihood.name
        log_shape = noise_shape(data).log() if self.config.shape_init == "noise" else torch.zeros(self.n_channels)
        if name == "gamma":  # mean = alpha / beta
            bias[0].copy_(log_shape)
            bias[1].copy_(log_shape - torch.log(mean.clamp_min(1e-6)))
        elif name == "zig":
            frac_zero = (data <= 0).float().mean(0).clamp(1e-3, 1 - 1e-3)
            bias[0].copy_(torch.log(frac_zero / (1 - frac_zero)))
            bias[1].copy_(log_shape)
            bias[2].copy_(log_shape - torch.log((mean / (1 - frac_zero)).clamp_min(1e-6)))
        elif name == "poisson":
            bias[0].copy_(torch.log(mean.clamp_min(1e-6)))
        elif name == "gaussian":
            bias[0].copy_(mean)
            bias[1].copy_(torch.log(data.var(0).clamp_min(1e-6)))

    def transform_input(self, x: Tensor) -> Tensor:
        """Encoder input: log (if configured) then standardised per channel."""
        z = torch.log(x.clamp_min(0) + self.in_offset) if self.config.log_input else x
        return (z - self.in_loc) / self.in_scale

    # ------------------------------------------------------------------ forward and loss
    def forward(self, x: Tensor, keep: Tensor | None = None, sample: bool = True) -> LFADSOutput:
        """x (B, T, C) data; keep (B, T, C) bool: entries given to the encoders (others zeroed, rest rescaled)."""
        z = self.transform_input(x)
        if keep is not None:
            frac = keep.float().mean().clamp_min(1e-3)
            z = torch.where(keep, z / frac, torch.zeros_like(z))
        z = self.in_dropout(z)
        ic_mean, ic_var = self.ic_encoder(z)
        ic = ic_mean + ic_var.sqrt() * torch.randn_like(ic_mean) if sample else ic_mean
        ci = self.ci_encoder(z) if self.ci_encoder is not None else None
        dec = self.decoder(ic, ci, x.shape[1], sample=sample)
        params = self.readout(dec["factors"])
        return LFADSOutput(params=params, means=self.likelihood.mean(params.float()), factors=dec["factors"],
                           inputs=dec["inputs"], ic_mean=ic_mean, ic_var=ic_var, co_mean=dec["co_mean"],
                           co_log_var=dec["co_log_var"])

    def recon_nll(self, out: LFADSOutput, target: Tensor) -> Tensor:
        """Per-entry negative log-likelihood (B, T, C), computed in float32."""
        return self.likelihood.nll(out.params.float(), target.float())

    def l2_penalty(self) -> Tensor:
        """lfads-torch's L2: sum of scale * 0.5 * ||W_hh||^2 over the penalised recurrent matrices (generator,
        controller; those with a positive scale), divided once by their total number of weights."""
        c = self.config
        pairs = [(self.decoder.gen.weight_hh, c.l2_gen_scale)]
        if c.co_dim > 0:
            pairs.append((self.decoder.con.weight_hh, c.l2_con_scale))
        total = self.decoder.gen.weight_hh.new_zeros(())
        size = 0
        for w, scale in pairs:
            if scale > 0:
                total = total + scale * 0.5 * w.pow(2).sum()
                size += w.numel()
        return total / (size + 1e-8)

    def loss(self, out: LFADSOutput, target: Tensor, grad_mask: Tensor | None = None,
             heldin: Tensor | None = None, kl_ramp: float = 1.0, l2_ramp: float = 1.0) -> dict[str, Tensor]:
        """Scaled loss = scale * (recon + l2_ramp * L2 + kl_ramp * KL), with lfads-torch's conventions.

        recon is the mean over ALL entries of the NLL, each held-in entry (`heldin`, bool) weighted by
        1 / (1 - sv_rate) and held-out ones by 0; gradients flow only from `grad_mask` entries (the
        coordinated-dropout entries hidden from the encoders; all when None), the others count in the
        value only (detached). So with coordinated dropout at rate p the gradient of recon is p times
        that of a mean over the dropped entries alone.
        """
        c = self.config
        nll = self.recon_nll(out, target)
        if grad_mask is not None:
            g = grad_mask.float()
            nll = nll * g + (nll * (1.0 - g)).detach()
        if heldin is not None:
            nll = nll * heldin.float() / (1.0 - c.sv_rate)
        recon = nll.mean()
        kl_ic = self.ic_prior.kl(out.ic_mean.float(), out.ic_var.float())
        if self.co_prior is not None:
            kl_co = self.co_prior.kl(out.inputs.float(), out.co_mean.float(), out.co_log_var.float())
        else:
            kl_co = recon.new_zeros(())
        l2 = self.l2_penalty()
        kl = c.kl_ic_scale * kl_ic + c.kl_co_scale * kl_co
        total = c.loss_scale * (recon + l2_ramp * l2 + kl_ramp * kl)
        return {"loss": total, "recon": recon, "kl_ic": kl_ic, "kl_co": kl_co, "l2": l2}


#: Median of a chi-square variable with one degree of freedom.
_CHI2_1_MEDIAN = 0.4549364


def noise_shape(data: Tensor, lo: float = 1.0, hi: float = 100.0) -> Tensor:
    """Per-channel Gamma shape 1 / CV^2 of the bin-to-bin noise of (T, C) data, clipped to [lo, hi].

    Neighbouring bins share (almost) the same mean, so half the squared difference over the squared
    mean estimates CV^2; the median over bins (scaled by chi-square(1)'s) ignores onsets and offsets.
    Starting the read-out at the data's own noise level instead of alpha = 1 (CV 1) makes the
    likelihood fit the mean from the first steps: on motor-unit EMG the model reaches in 40 epochs
    the accuracy alpha = 1 had not reached in 250 (benchmarks/bench_accuracy.py, docs/design.md).
    """
    x = data.double().clamp_min(0)
    if x.shape[0] < 3:
        return torch.ones(x.shape[1], dtype=torch.float32)
    diff = x[1:] - x[:-1]
    level = (0.5 * (x[1:] + x[:-1])).clamp_min(1e-12)
    ratio = 0.5 * diff.pow(2) / level.pow(2)
    ratio[(x[1:] <= 0) | (x[:-1] <= 0)] = float("nan")  # exact zeros (zero-inflated data) say nothing of the shape
    cv2 = ratio.nanmedian(dim=0).values.nan_to_num(1.0) / _CHI2_1_MEDIAN
    shape = torch.where(cv2 > 0, 1.0 / cv2.clamp_min(1e-12), torch.full_like(cv2, hi))
    return shape.clamp(lo, hi).float()


def ramp(epoch: int, start: int, length: int) -> float:
    """Linear ramp from 0 at `start` to 1 at `start + length` (epochs)."""
    if length <= 0:
        return 1.0 if epoch >= start else 0.0
    return float(min(max((epoch - start) / length, 0.0), 1.0))


def lr_factor(epoch: int, max_epochs: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at `epoch`: 1 ("constant"), or a half-cosine from 1 to min_ratio."""
    if schedule != "cosine" or max_epochs <= 1:
        return 1.0
    frac = min(max(epoch / (max_epochs - 1), 0.0), 1.0)
    return float(min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["LFADS", "LFADSOutput", "noise_shape", "ramp", "lr_factor", "count_parameters"]
