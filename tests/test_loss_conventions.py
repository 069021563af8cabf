"""Our loss terms equal lfads-torch's (commit 007a555), recomputed here from its formulas on fixed tensors.

lfads-torch: CoordinatedDropout.process_losses keeps the value of every entry but blocks gradients
outside the dropped ones; SampleValidation.process_losses weights held-in entries by 1 / (1 - sv_rate);
the model averages over all entries (recon_reduce_mean); compute_l2_penalty sums
scale * 0.5 * ||W||^2 over the matrices with a positive scale and divides once by their total size;
AutoregressiveMultivariateNormal takes the log innovation variance and draws one posterior sample.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

from nwb_lfads_emg.lfads import LFADS, LFADSConfig
from nwb_lfads_emg.lfads.priors import AR1Prior, GaussianICPrior


def _model(**kw) -> LFADS:
    cfg = LFADSConfig(ic_enc_dim=8, ci_enc_dim=6, con_dim=7, co_dim=2, ic_dim=5, gen_dim=9, fac_dim=4,
                      seg_len=12, seg_overlap=6, sv_rate=0.1, cd_rate=0.3, **kw)
    torch.manual_seed(0)
    model = LFADS(cfg, n_channels=3)
    x = torch.rand(4, 12, 3) + 0.1
    model.set_input_stats(x.reshape(-1, 3))
    return model


def _grads(model: LFADS) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_reconstruction_matches_lfads_torch_value_and_gradient():
    model = _model()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 12, 3, generator=g) + 0.1
    cd_keep = torch.rand(4, 12, 3, generator=g) >= 0.3  # lfads-torch's cd_mask: 1 = given to the encoder
    sv_heldin = torch.rand(4, 12, 3, generator=g) >= 0.1  # its sv_mask: 1 = held in
    torch.manual_seed(5)
    out = model(x, keep=cd_keep & sv_heldin)
    # lfads-torch, step by step (on a second, identical forward pass: the decoder frees its saved tensors)
    recon_loss = model.likelihood.nll(out.params.float(), x)
    grad_mask = (~cd_keep).float()
    cd_loss = recon_loss * grad_mask + (recon_loss * (1 - grad_mask)).detach()
    ref = (cd_loss * (sv_heldin.float() / (1 - 0.1))).mean()
    ref.backward()
    ref_grads = _grads(model)
    model.zero_grad()
    torch.manual_seed(5)
    out = model(x, keep=cd_keep & sv_heldin)
    ours = model.loss(out, x, ~cd_keep, sv_heldin)["recon"]
    ours.backward()
    torch.testing.assert_close(ours, ref.detach())
    got = _grads(model)
    assert set(got) == set(ref_grads)
    for name in ref_grads:
        torch.testing.assert_close(got[name], ref_grads[name], rtol=1e-5, atol=1e-8)
    # and the gradient is cd_rate-sized: it comes from the dropped entries only, averaged over all
    assert not torch.allclose(model.readout.weight.grad, torch.zeros_like(model.readout.weight))


def test_l2_matches_lfads_torch_one_divisor():
    for l2_con in (2e-3, 0.0):  # a zero scale drops the matrix from the divisor too
        model = _model(l2_gen_scale=5e-3, l2_con_scale=l2_con)
        kernels = [(model.decoder.gen.weight_hh, 5e-3), (model.decoder.con.weight_hh, l2_con)]
        penalty, size = 0.0, 0
        for kernel, weight in kernels:
            if weight > 0:
                penalty += weight * 0.5 * torch.norm(kernel, 2) ** 2
                size += kernel.numel()
        ref = penalty / (size + 1e-8)
        torch.testing.assert_close(model.l2_penalty(), ref)
    # not the per-matrix divisor of the earlier convention
    model = _model(l2_gen_scale=5e-3, l2_con_scale=2e-3)
    wg, wc = model.decoder.gen.weight_hh, model.decoder.con.weight_hh
    per_matrix = 5e-3 * 0.5 * wg.pow(2).sum() / wg.numel() + 2e-3 * 0.5 * wc.pow(2).sum() / wc.numel()
    assert not torch.allclose(model.l2_penalty(), per_matrix)


def test_ar1_prior_and_kl_match_lfads_torch():
    dim, tau, nvar = 2, 8.0, 0.1
    ours = AR1Prior(dim, tau, nvar)
    with torch.no_grad():
        ours.log_tau.add_(torch.tensor([0.0, 0.3]))
        ours.log_nvar.add_(torch.tensor([-0.2, 0.1]))
    g = torch.Generator().manual_seed(2)
    post_mean = torch.randn(5, 9, dim, generator=g)
    post_std = torch.rand(5, 9, dim, generator=g) + 0.2
    sample = post_mean + post_std * torch.randn(5, 9, dim, generator=g)
    # lfads-torch's AutoregressiveMultivariateNormal.log_prob
    alphas = torch.exp(-1.0 / torch.exp(ours.log_tau))
    logpvars = ours.log_nvar - torch.log(1 - alphas**2)
    means = alphas * torch.roll(sample, shifts=1, dims=1)
    stddevs = torch.ones_like(means) * torch.exp(0.5 * ours.log_nvar)
    means[:, 0] = 0.0
    stddevs[:, 0] = torch.exp(0.5 * logpvars)
    log_p = Independent(Normal(means, stddevs), 2).log_prob(sample)
    torch.testing.assert_close(ours.log_prob(sample), log_p, rtol=1e-5, atol=1e-4)
    log_q = Independent(Normal(post_mean, post_std), 2).log_prob(sample)
    ref_kl = torch.mean(log_q - log_p)
    torch.testing.assert_close(ours.kl(sample, post_mean, 2 * post_std.log()), ref_kl, rtol=1e-5, atol=1e-4)
    # the parameter is the innovation variance: the stationary variance is nvar / (1 - alpha^2)
    a = math.exp(-1 / tau)
    first = torch.tensor([[[0.7]]])
    fresh = AR1Prior(1, tau, nvar)
    expected = Normal(0.0, math.sqrt(nvar / (1 - a * a))).log_prob(torch.tensor(0.7))
    torch.testing.assert_close(fresh.log_prob(first).detach()[0], expected)


def test_ic_kl_matches_lfads_torch():
    prior = GaussianICPrior(4, 0.1)
    with torch.no_grad():
        prior.mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    g = torch.Generator().manual_seed(4)
    m, s = torch.randn(6, 4, generator=g), torch.rand(6, 4, generator=g) + 0.1
    ref = torch.mean(kl_divergence(Independent(Normal(m, s), 1),
                                   Independent(Normal(prior.mean, torch.exp(0.5 * prior.log_var)), 1)))
    torch.testing.assert_close(prior.kl(m, s**2), ref)
