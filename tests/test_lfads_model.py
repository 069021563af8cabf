"""Unit tests of the LFADS model pieces: likelihoods, priors, augmentations, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from nwb_lfads_emg.lfads import LFADS, LFADSConfig, preset
from nwb_lfads_emg.lfads.augment import coordinated_dropout, random_shifts, shift_pair, temporal_shift
from nwb_lfads_emg.lfads.decoder import gru_step, normalized_rows
from nwb_lfads_emg.lfads.likelihoods import make_likelihood
from nwb_lfads_emg.lfads.model import lr_factor, noise_shape, ramp
from nwb_lfads_emg.lfads.priors import AR1Prior, GaussianICPrior


def tiny(**kw) -> LFADSConfig:
    base = dict(ic_enc_dim=8, ci_enc_dim=6, con_dim=7, co_dim=2, ic_dim=5, gen_dim=9, fac_dim=4, seg_len=20,
                seg_overlap=10, batch_size=16)
    base.update(kw)
    return LFADSConfig(**base)


def test_gamma_nll_matches_torch():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(4, 5, 6, generator=g)
    x = torch.rand(4, 5, 3, generator=g) + 0.01
    lik = make_likelihood("gamma")
    log_a, log_b = params.chunk(2, -1)
    ref = -D.Gamma(log_a.exp(), log_b.exp()).log_prob(x)
    torch.testing.assert_close(lik.nll(params, x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lik.mean(params), (log_a - log_b).exp())


def test_noise_shape_recovers_the_gamma_shape_under_bursts():
    """The read-out's initial Gamma shape is the data's bin-to-bin noise level: Gamma(k) noise around a
    slowly varying, bursting mean gives k back (the onsets do not drag it down), and the read-out starts
    with mean = the data's mean and alpha = that shape ("one": alpha = 1, as before)."""
    torch.manual_seed(0)
    t = torch.arange(20000, dtype=torch.float64)
    level = 0.1 + torch.stack([(torch.sin(t / 40.0 + p) > 0.6).double() * 2.0 for p in (0.0, 2.0)], 1)
    level = level + 0.05 * torch.sin(t / 300.0)[:, None]
    for k in (2.0, 10.0):
        x = D.Gamma(torch.full((20000, 2), k, dtype=torch.float64), k).sample() * level
        assert torch.allclose(noise_shape(x), torch.tensor([k, k]), rtol=0.12)
    assert torch.equal(noise_shape(torch.ones(50, 2)), torch.tensor([100.0, 100.0]))  # no noise: the cap
    data = (x.float() + 0.01)[:2000]
    for init, shape in (("noise", noise_shape(data)), ("one", torch.ones(2))):
        model = LFADS(tiny(shape_init=init), n_channels=2)
        model.set_input_stats(data)
        log_a, log_b = model.readout.bias.detach().view(2, 2)
        torch.testing.assert_close(log_a.exp(), shape)
        torch.testing.assert_close((log_a - log_b).exp(), data.mean(0))
    with pytest.raises(ValueError, match="shape_init"):
        tiny(shape_init="two").validate()


def test_poisson_and_gaussian_nll_match_torch():
    g = torch.Generator().manual_seed(1)
    logr = torch.randn(3, 4, generator=g)
    k = torch.poisson(torch.full((3, 4), 3.0), generator=g)
    torch.testing.assert_close(make_likelihood("poisson").nll(logr, k), -D.Poisson(logr.exp()).log_prob(k))
    params = torch.randn(3, 8, generator=g)
    x = torch.randn(3, 4, generator=g)
    mu, lv = params.chunk(2, -1)
    ref = -D.Normal(mu, (0.5 * lv).exp()).log_prob(x)
    torch.testing.assert_close(make_likelihood("gaussian").nll(params, x), ref, rtol=1e-5, atol=1e-5)


def test_zero_inflated_gamma_handles_zeros():
    g = torch.Generator().manual_seed(2)
    params = torch.randn(10, 9, generator=g)
    x = torch.rand(10, 3, generator=g) + 0.1
    x[::2] = 0.0
    lik = make_likelihood("zig")
    nll = lik.nll(params, x)
    assert torch.isfinite(nll).all()
    logit_q, log_a, log_b = params.chunk(3, -1)
    q = torch.sigmoid(logit_q)
    ref_pos = -torch.log1p(-q) - D.Gamma(log_a.exp(), log_b.exp()).log_prob(x.clamp_min(1e-3))
    ref = torch.where(x == 0, -torch.log(q), ref_pos)
    torch.testing.assert_close(nll, ref, rtol=1e-4, atol=1e-4)
    assert lik.check_data(x) is None
    assert make_likelihood("gamma").check_data(x) is not None


def test_priors_match_torch():
    prior = GaussianICPrior(3, 0.1)
    with torch.no_grad():
        prior.mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    m, v = torch.randn(5, 3), torch.rand(5, 3) + 0.05
    ref = D.kl_divergence(D.Normal(m, v.sqrt()), D.Normal(prior.mean, math.sqrt(0.1))).sum(-1).mean()
    torch.testing.assert_close(prior.kl(m, v), ref)
    ar = AR1Prior(2, tau=10.0, nvar=0.1)  # innovation variance 0.1, stationary 0.1 / (1 - a^2)
    u = torch.randn(4, 7, 2)
    a = math.exp(-1 / 10.0)
    lp = D.Normal(0, math.sqrt(0.1 / (1 - a * a))).log_prob(u[:, 0]).sum(-1)
    lp = lp + D.Normal(a * u[:, :-1], math.sqrt(0.1)).log_prob(u[:, 1:]).sum((1, 2))
    torch.testing.assert_close(ar.log_prob(u), lp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("likelihood", ["gamma", "zig", "poisson", "gaussian"])
@pytest.mark.parametrize("co_dim", [0, 2])
def test_forward_shapes_and_loss(likelihood, co_dim):
    torch.manual_seed(0)
    model = LFADS(tiny(likelihood=likelihood, co_dim=co_dim), n_channels=3)
    x = torch.rand(5, 20, 3) + 0.1
    model.set_input_stats(x.reshape(-1, 3))
    out = model(x)
    assert out.means.shape == (5, 20, 3)
    assert out.factors.shape == (5, 20, 4)
    assert out.inputs.shape == (5, 20, co_dim)
    assert out.params.shape == (5, 20, 3 * model.likelihood.n_params)
    losses = model.loss(out, x, torch.rand(5, 20, 3) < 0.3, kl_ramp=0.5, l2_ramp=0.5)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert model.decoder.gen.weight_hh.grad is not None


def test_factor_rows_normalised_and_state_clipped():
    w = torch.randn(4, 9) * 5
    assert torch.allclose(normalized_rows(w).norm(dim=1), torch.ones(4))
    h = gru_step(torch.full((2, 9), 50.0), torch.full((2, 3), 100.0), torch.randn(9, 3), 3, 5.0)
    assert h.abs().max() <= 5.0


def test_controller_input_lag():
    from nwb_lfads_emg.lfads.encoders import CIEncoder

    enc = CIEncoder(2, 3, lag=1, dropout=0.0)
    x = torch.randn(1, 6, 2)
    out = enc(x)
    full, _ = enc.gru(x, enc.h0.expand(-1, 1, -1).contiguous())
    torch.testing.assert_close(out[0, 1:, :3], full[0, :-1, :3])  # forward state from t - 1
    torch.testing.assert_close(out[0, :-1, 3:], full[0, 1:, 3:])  # backward state from t + 1
    assert (out[0, 0, :3] == 0).all() and (out[0, -1, 3:] == 0).all()


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(10.0).view(1, 10, 1).repeat(1, 1, 2)
    y = temporal_shift(x, torch.tensor([[2, -1]]))
    assert y[0, :, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 9, 9]
    assert y[0, :, 1].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    s = random_shifts(2000, 4, 1.0, g)  # rounded Gaussian, SD 1 bin, clipped at 2
    assert s.min() == -2 and s.max() == 2 and abs(s.float().std().item() - 1.0) < 0.1
    assert (s == 0).float().mean().item() > 0.3  # P(|N(0,1)| < 0.5) = 0.38
    a, b = shift_pair(torch.randn(8, 10, 4), 2, g)
    assert a.shape == b.shape == (8, 10, 4) and not torch.equal(a, b)
    m = coordinated_dropout((200, 50), 0.3, g)
    assert abs(m.float().mean().item() - 0.3) < 0.02


def test_presets_shift_in_time():
    from nwb_lfads_emg.lfads.auto import auto_config

    for name in ("default", "paper"):
        assert preset(name).temporal_shift_ms > 0
    assert auto_config(4000, 4, 10.0, 1000.0, "cpu").temporal_shift_ms > 0
    # demo: off, measured to cost R^2 on the accuracy session (see lfads.config)
    assert preset("demo").temporal_shift_ms == 0


def test_ramp_and_presets():
    assert ramp(0, 0, 10) == 0.0 and ramp(5, 0, 10) == 0.5 and ramp(20, 0, 10) == 1.0
    assert lr_factor(7, 10, "constant", 0.1) == 1.0
    assert lr_factor(0, 11, "cosine", 0.1) == 1.0 and lr_factor(10, 11, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 11, "cosine", 0.1) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        tiny(lr_schedule="step").validate()
    for name in ("demo", "default", "paper"):
        cfg = preset(name)
        assert cfg.preset_name == name and cfg.seg_overlap < cfg.seg_len
        assert LFADSConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        preset("huge")
    with pytest.raises(ValueError):
        tiny(seg_overlap=20).validate()


@pytest.mark.parametrize("sample", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_fast_decoder_matches_eager(sample, training):
    """The hand-written decoder loop gives the eager loop's outputs, gradients and RNG use."""
    torch.manual_seed(0)
    model = LFADS(tiny(dropout=0.3, cell_clip=0.5), n_channels=3)  # small clip: the clamps are active
    model.train(training)
    x = torch.rand(6, 20, 3) + 0.1
    model.set_input_stats(x.reshape(-1, 3))
    runs = []
    for fast in (False, True):
        model.decoder.fast = fast
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x, sample=sample)
        model.loss(out, x, torch.rand(6, 20, 3) < 0.3)["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs.append((out, grads, torch.rand(3)))
    (oe, ge, re), (of, gf, rf) = runs
    torch.testing.assert_close(rf, re, rtol=0, atol=0)  # same random numbers consumed
    for name in ("factors", "inputs", "co_mean", "co_log_var", "params"):
        torch.testing.assert_close(getattr(of, name), getattr(oe, name), rtol=1e-6, atol=1e-6)
    assert ge.keys() == gf.keys()
    for name, g in ge.items():
        scale = g.abs().max().clamp_min(1e-6)
        assert ((gf[name] - g).abs().max() / scale).item() < 2e-6, name
    assert tiny().fast_decoder  # the fast path is the default
