"""The CUDA path against the CPU path: same numbers in fp32, training that learns under bf16 autocast,
exact resume, checkpoints that load on a CPU-only machine, stitched training. Skipped without a GPU
(the development machine and CI have none); run on one with `python -m pytest tests/test_cuda.py`."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from test_training import tiny_config as small_config
from test_training import tiny_data as small_data

from nwb_lfads_emg.lfads import LFADS, LFADSConfig
from nwb_lfads_emg.training import Trainer, fit, infer, load_model
from nwb_lfads_emg.training.multisession import MultiSessionTrainer
from nwb_lfads_emg.training.trainer import autocast_dtype

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")


def tiny_config(**kw) -> LFADSConfig:
    """test_training's tiny model, a little wider (the GPU path's kernels see more than a handful of units)."""
    return small_config(**{**dict(ic_enc_dim=16, ci_enc_dim=12, con_dim=12, ic_dim=8, gen_dim=24, fac_dim=4,
                                  seg_len=40, seg_overlap=20, batch_size=16), **kw})


def tiny_data(n: int = 1200, c: int = 4, seed: int = 0) -> np.ndarray:
    return small_data(n, c, seed)


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full fp32 matrix products on the GPU while comparing with the CPU (TF32 keeps 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_forward_loss_and_gradients_match_the_cpu_in_fp32():
    """cuDNN's GRUs and the hand-written decoder backward give the CPU's outputs, loss and gradients."""
    cfg = tiny_config(dropout=0.0)
    data = torch.from_numpy(tiny_data()[:400].reshape(10, 40, 4))
    torch.manual_seed(0)
    cpu = LFADS(cfg, 4)
    cpu.set_input_stats(data.reshape(-1, 4))
    gpu = copy.deepcopy(cpu).cuda()
    grads = []
    for model, x in ((cpu, data), (gpu, data.cuda())):
        model.train()
        out = model(x, sample=False)
        losses = model.loss(out, x, kl_ramp=1.0, l2_ramp=1.0)
        model.zero_grad()
        losses["loss"].backward()
        grads.append(({k: v.detach().cpu() for k, v in losses.items()},
                      out.means.detach().cpu(), out.factors.detach().cpu(),
                      {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}))
    (l_cpu, m_cpu, f_cpu, g_cpu), (l_gpu, m_gpu, f_gpu, g_gpu) = grads
    torch.testing.assert_close(m_gpu, m_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f_gpu, f_cpu, rtol=1e-4, atol=1e-5)
    for k in ("loss", "recon", "kl_ic", "kl_co", "l2"):
        torch.testing.assert_close(l_gpu[k], l_cpu[k], rtol=1e-4, atol=1e-6, msg=k)
    assert g_gpu.keys() == g_cpu.keys() and len(g_cpu) > 10
    for name, g in g_cpu.items():
        torch.testing.assert_close(g_gpu[name], g, rtol=2e-3, atol=1e-5, msg=name)


def test_bf16_training_learns_exports_and_loads_on_cpu(tmp_path):
    """bf16 autocast training on CUDA lowers the held-out loss; the export runs on a CPU-only machine."""
    data = tiny_data()
    res = fit(data, tiny_config(max_epochs=12, precision="bf16"), tmp_path / "run", device="cuda", seed=0, progress=False)
    assert res.device.startswith("cuda")
    val = [m["val_loss"] for m in res.metrics]
    assert all(np.isfinite(val)) and min(val[-3:]) < val[0] - 0.05, val
    model, cfg = load_model(tmp_path / "run")
    assert all(p.device.type == "cpu" for p in model.parameters())
    fp32 = dataclasses.replace(cfg, precision="fp32")  # the saved "bf16" would autocast on the CPU too
    on_cpu = infer(model, data, fp32, n_samples=1, device="cpu")
    on_gpu = infer(model, data, fp32, n_samples=1, device="cuda")
    np.testing.assert_allclose(on_gpu.rates, on_cpu.rates, rtol=1e-3, atol=1e-4)
    assert cfg.precision == "bf16"
    bf16 = infer(model, data, cfg, n_samples=1, device="cuda")
    rel = np.abs(bf16.rates - on_cpu.rates).mean() / np.abs(on_cpu.rates).mean()
    assert rel < 0.02, rel


def test_cuda_training_resumes_exactly_and_repeats(tmp_path):
    """A run stopped and resumed on the GPU ends with the uninterrupted run's weights; a repeat gives the same.
    The default precision trains in fp32 on CUDA too, through the decoder's fused loop."""
    data = tiny_data()
    cfg = tiny_config()
    assert cfg.precision == "auto" and autocast_dtype(cfg.precision, torch.device("cuda")) is None
    full = fit(data, cfg, tmp_path / "full", device="cuda", seed=2, progress=False)
    part = fit(data, cfg, tmp_path / "part", device="cuda", seed=2, progress=False, max_epochs=2)
    assert len(part.metrics) == 2
    resumed = fit(data, cfg, tmp_path / "part", device="cuda", seed=2, progress=False)
    np.testing.assert_allclose([m["train_loss"] for m in resumed.metrics],
                               [m["train_loss"] for m in full.metrics], rtol=1e-5)
    again = Trainer(data, cfg, "cuda", seed=2)
    first = Trainer(data, cfg, "cuda", seed=2)
    a = [again.train_epoch()["train_loss"] for _ in range(2)]
    b = [first.train_epoch()["train_loss"] for _ in range(2)]
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_stitched_training_runs_on_cuda():
    """The multi-session trainer (per-session read-in/out around one generator) trains on the GPU."""
    sessions = [tiny_data(seed=s, c=c) for s, c in ((0, 4), (1, 3), (2, 5))]
    muscles = [[f"m{i}" for i in range(d.shape[1])] for d in sessions]
    trainer = MultiSessionTrainer(sessions, muscles, tiny_config(max_epochs=6), device="cuda", seed=0)
    states = [trainer._cuda_rng_state.clone()]
    losses = []
    for _ in range(6):
        losses.append(trainer.train_epoch()["val_loss"])
        states.append(trainer._cuda_rng_state.clone())
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert all(np.isfinite(losses)) and min(losses[-2:]) < losses[0], losses
    # the trainer's own CUDA stream moves on every epoch (posterior noise is new each epoch) ...
    assert all(not torch.equal(a, b) for a, b in zip(states[:-1], states[1:], strict=True))
    # ... and is saved with its progress, so a resumed run draws what the uninterrupted one draws
    resumed = MultiSessionTrainer(sessions, muscles, tiny_config(max_epochs=6), device="cuda", seed=0)
    resumed.load_state_dict(trainer.state_dict())
    assert torch.equal(resumed._cuda_rng_state, states[-1])
