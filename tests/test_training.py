"""Trainer, checkpoints, chop/merge and inference on tiny data (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nwb_lfads_emg.errors import TrainingError
from nwb_lfads_emg.lfads import LFADSConfig
from nwb_lfads_emg.training import Trainer, fit, infer, load_model
from nwb_lfads_emg.training.checkpoint import list_checkpoints, sha256_file
from nwb_lfads_emg.training.segments import block_starts, chop, chop_blocks, merge, split_blocks
from nwb_lfads_emg.training.trainer import Windows

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**kw) -> LFADSConfig:
    base = dict(ic_enc_dim=8, ci_enc_dim=6, con_dim=6, co_dim=2, ic_dim=4, gen_dim=8, fac_dim=3, seg_len=20,
                seg_overlap=10, batch_size=16, kl_increase_epoch=2, l2_increase_epoch=2, max_epochs=4,
                patience=5, val_fraction=0.2, val_blocks=2, temporal_shift_ms=5.0, lr=5e-3)
    base.update(kw)
    return LFADSConfig(**base)


def tiny_data(n: int = 400, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    rate = 1.0 + 0.8 * np.sin(2 * np.pi * t / 50 + np.arange(c))
    return (rng.gamma(3.0, rate / 3.0) + 1e-3).astype(np.float32)


@pytest.mark.parametrize("n,seg,ov", [(100, 20, 10), (107, 20, 5), (20, 20, 0), (55, 10, 9)])
def test_chop_merge_reconstructs_exactly(n, seg, ov):
    x = np.random.default_rng(0).normal(size=(n, 3))
    segs, starts = chop(x, seg, ov)
    assert segs.shape[1:] == (seg, 3) and starts[0] == 0 and starts[-1] + seg == n
    np.testing.assert_allclose(merge(segs, starts, n, ov), x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(merge(segs[..., 0], starts, n, ov), x[:, 0], atol=1e-12)


def test_windows_cut_on_demand_equal_the_chopped_segments():
    """The trainer's windows (cut per batch from the series) hold exactly chop_blocks' segments, by index or slice."""
    data = np.random.default_rng(0).random((1000, 3)).astype(np.float32)
    blocks = [(0, 400), (450, 1000)]
    chopped, starts = chop_blocks(data, blocks, 60, 30)
    assert np.array_equal(block_starts(blocks, 60, 30), starts)
    windows = Windows(torch.from_numpy(data), block_starts(blocks, 60, 30), 60)
    idx = torch.tensor([3, 0, 7, len(starts) - 1])
    assert windows.shape == chopped.shape
    assert torch.equal(windows[idx], torch.from_numpy(chopped[idx.numpy()]))
    assert torch.equal(windows[2:9], torch.from_numpy(chopped[2:9]))


def test_chop_errors_and_blocks():
    with pytest.raises(TrainingError):
        chop(np.zeros((5, 2)), 10, 2)
    with pytest.raises(TrainingError):
        chop(np.zeros((50, 2)), 10, 10)
    train, val = split_blocks(1000, 0.2, 2, 20)
    covered = sorted(train + val)
    assert sum(b - a for a, b in val) == 200
    assert all(covered[i][1] <= covered[i + 1][0] for i in range(len(covered) - 1))


def test_bad_data_raises_one_line_errors(tmp_path):
    cfg = tiny_config()
    data = tiny_data()
    data[3, 1] = 0.0
    with pytest.raises(TrainingError, match="strictly positive"):
        Trainer(data, cfg, "cpu")
    data[3, 1] = np.nan
    with pytest.raises(TrainingError, match="NaN"):
        fit(data, cfg, tmp_path / "r", progress=False)
    with pytest.raises(TrainingError, match="2-D"):
        Trainer(np.ones(10), cfg, "cpu")
    zeros = tiny_data()
    zeros[::7] = 0.0
    Trainer(zeros, tiny_config(likelihood="zig"), "cpu")  # zeros are fine for the zero-inflated Gamma


def test_nan_loss_becomes_training_error():
    tr = Trainer(tiny_data(), tiny_config(), "cpu")
    orig = tr.model.loss

    def bad_loss(*a, **k):
        out = orig(*a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    tr.model.loss = bad_loss
    with pytest.raises(TrainingError, match="NaN"):
        tr.train_epoch()


def test_trainer_deterministic_and_hyperparameters():
    data = tiny_data()
    runs = []
    for _ in range(2):
        tr = Trainer(data, tiny_config(), "cpu", seed=3)
        m = [tr.train_epoch() for _ in range(2)]
        runs.append((m, tr.model.state_dict()))
    assert runs[0][0][-1]["val_loss_smoothed"] == runs[1][0][-1]["val_loss_smoothed"]
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k
    tr.set_hyperparameters({"lr": 1e-3, "dropout": 0.1, "cd_rate": 0.2, "kl_ic_scale": 1e-5, "temporal_shift_ms": 10.0})
    assert tr.optimizer.param_groups[0]["lr"] == 1e-3 and tr.config.temporal_shift_ms == 10.0
    assert tr.model.in_dropout.p == 0.1 and tr.model.config.cd_rate == 0.2
    assert tr.hyperparameters()["kl_ic_scale"] == 1e-5
    with pytest.raises(TrainingError):
        tr.set_hyperparameters({"gen_dim": 3})


def test_held_out_standard_error_and_significant_improvements():
    """`val_se` is the held-out loss's standard error (per-bin NLL spread over the distinct held-out bins);
    with `stop_min_se` an epoch improves only by more than that many of them: a huge margin keeps the weights
    of the ramps' end and stops `patience` epochs later, on the same trajectory as the run without a margin."""
    data = tiny_data(600)
    runs = {}
    for margin in (0.0, 1e6):
        tr = Trainer(data, tiny_config(max_epochs=6, patience=2, stop_min_se=margin), "cpu", seed=2)
        while tr.epoch < tr.config.max_epochs and not tr.should_stop:
            tr.train_epoch()
        runs[margin] = tr
    free, strict = runs[0.0], runs[1e6]
    assert strict.best_epoch == strict.ramp_end and strict.epoch == strict.ramp_end + strict.config.patience
    assert free.best_epoch > free.ramp_end  # the run without a margin kept improving after the ramps
    n = strict.epoch
    assert [m["val_loss"] for m in free.metrics[:n]] == [m["val_loss"] for m in strict.metrics]
    # the standard error, recomputed from the model's held-out NLL
    assert strict.val_bins == sum(b - a for a, b in strict.val_blocks)
    model = strict.model.eval()
    with torch.no_grad():
        x, sv = strict.x_val[:], strict.sv_val[:]
        per_bin = model.recon_nll(model(x, keep=~sv, sample=False), x).double().mean(-1).flatten().numpy()
    strict.evaluate()
    expected = per_bin.std() / np.sqrt(strict.val_bins)
    assert strict.val_se == pytest.approx(expected, rel=1e-6) and strict.val_se > 0
    assert strict.metrics[-1]["val_se"] > 0
    with pytest.raises(TrainingError, match="stop_min_se"):
        Trainer(data, tiny_config(stop_min_se=-1.0), "cpu")


def test_weight_average_of_indistinguishable_epochs():
    """`average_weights`: the exported weights are the running mean of the best epoch's and every later epoch's
    within the margin (a huge margin: all epochs from the ramps' end to the stop); a run resumed from its state
    in the middle of the averaging ends with the same averaged weights."""
    data, cfg = tiny_data(600), tiny_config(max_epochs=7, patience=3, stop_min_se=1e6, average_weights=True)
    avg = Trainer(data, cfg, "cpu", seed=2)
    states, saved = [], None
    while avg.epoch < avg.config.max_epochs and not avg.should_stop:
        avg.train_epoch()
        states.append({k: v.clone() for k, v in avg.model.state_dict().items()})
        if avg.epoch == avg.ramp_end + 1:
            saved = avg.state_dict()
    kept = states[avg.ramp_end - 1:]  # the ramps' end (the best) and every later epoch
    assert avg.best_epoch == avg.ramp_end and avg.best_count == len(kept) == avg.epoch - avg.ramp_end + 1 >= 3
    assert [m["averaged"] for m in avg.metrics][avg.ramp_end - 1:] == list(range(1, len(kept) + 1))
    best = avg.best_model_state()
    for k, v in best.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k] for s in kept]).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.equal(best["readout.weight"], kept[0]["readout.weight"])
    assert not torch.equal(best["readout.weight"], kept[-1]["readout.weight"])
    resumed = Trainer(data, cfg, "cpu", seed=2)
    resumed.load_state_dict(saved)
    while resumed.epoch < cfg.max_epochs and not resumed.should_stop:
        resumed.train_epoch()
    assert resumed.best_count == avg.best_count
    assert all(torch.equal(v, best[k]) for k, v in resumed.best_model_state().items())
    plain = Trainer(data, tiny_config(max_epochs=avg.ramp_end + 2, patience=3, stop_min_se=1e6), "cpu", seed=2)
    for _ in range(avg.ramp_end + 2):
        plain.train_epoch()  # without averaging: the best epoch's weights, the same trajectory
    assert plain.best_count == 1 and torch.equal(plain.best_model_state()["readout.weight"], kept[0]["readout.weight"])
    assert [m["val_loss"] for m in plain.metrics] == [m["val_loss"] for m in avg.metrics[: avg.ramp_end + 2]]


def test_state_dict_roundtrip_continues_identically():
    data = tiny_data()
    a = Trainer(data, tiny_config(), "cpu", seed=1)
    a.train_epoch()
    state = a.state_dict()
    b = Trainer(data, tiny_config(), "cpu", seed=1)
    b.load_state_dict(state)
    ma, mb = a.train_epoch(), b.train_epoch()
    assert ma["train_loss"] == mb["train_loss"] and ma["val_loss_smoothed"] == mb["val_loss_smoothed"]


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    data = tiny_data()
    full = fit(data, tiny_config(), tmp_path / "full", device="cpu", seed=2, progress=False)
    part = fit(data, tiny_config(), tmp_path / "part", device="cpu", seed=2, progress=False, max_epochs=2)
    assert len(part.metrics) == 2
    resumed = fit(data, tiny_config(), tmp_path / "part", device="cpu", seed=2, progress=False)
    assert len(resumed.metrics) == len(full.metrics) == 4
    assert resumed.weights_sha256 == full.weights_sha256
    assert resumed.metrics[-1]["val_loss_smoothed"] == full.metrics[-1]["val_loss_smoothed"]
    assert (tmp_path / "full" / "metrics.csv").read_text().count("\n") == 5
    assert sha256_file(tmp_path / "full" / "model.pt") == full.weights_sha256
    with pytest.raises(TrainingError, match="different configuration"):
        fit(data, tiny_config(gen_dim=12), tmp_path / "full", device="cpu", seed=2, progress=False)
    with pytest.raises(TrainingError, match=r"full: holds a run with seed 2, not 3"):
        fit(data, tiny_config(), tmp_path / "full", device="cpu", seed=3, progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(TrainingError, match="cannot create the run directory"):
        fit(data, tiny_config(), tmp_path / "file" / "run", device="cpu", seed=2, progress=False)


def test_killed_subprocess_resumes_to_same_result(tmp_path):
    data = tiny_data(n=600)
    np.save(tmp_path / "data.npy", data)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(ROOT)!r})
        from tests.test_training import tiny_config
        from nwb_lfads_emg.training import fit
        r = fit(np.load({str(tmp_path / 'data.npy')!r}), tiny_config(max_epochs=6), sys.argv[1], device="cpu",
                seed=4, progress=False)
        print(r.weights_sha256)
        """
    )
    (tmp_path / "run.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(killed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list_checkpoints(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = list_checkpoints(killed)
    assert done, proc.stderr.read().decode()[-2000:]
    resumed = fit(data, tiny_config(max_epochs=6), killed, device="cpu", seed=4, progress=False)
    straight = fit(data, tiny_config(max_epochs=6), tmp_path / "straight", device="cpu", seed=4, progress=False)
    assert resumed.weights_sha256 == straight.weights_sha256
    assert [m["train_loss"] for m in resumed.metrics] == [m["train_loss"] for m in straight.metrics]


def test_infer_load_model_and_new_session(tmp_path):
    data = tiny_data()
    res = fit(data, tiny_config(max_epochs=2), tmp_path / "r", device="cpu", progress=False)
    model, cfg = load_model(tmp_path / "r")
    assert cfg.gen_dim == 8 and res.device == "cpu"
    inf = infer(model, data, cfg, n_samples=4, device="cpu")
    assert inf.rates.shape == (400, 3) and inf.rates_std.shape == (400, 3)
    assert inf.factors.shape == (400, 3) and inf.inferred_inputs.shape == (400, 2)
    assert (inf.rates > 0).all() and (inf.rates_std > 0).all()
    again = infer(res.model, data, cfg, n_samples=4, device="cpu")
    np.testing.assert_array_equal(inf.rates, again.rates)  # same weights, same seed
    other = infer(model, tiny_data(n=333, seed=5), cfg, n_samples=1, batch_size=3)  # a new session
    assert other.rates.shape == (333, 3) and np.all(other.rates_std == 0)
    with pytest.raises(TrainingError, match="channels"):
        infer(model, tiny_data(c=4), cfg)
    with pytest.raises(TrainingError, match="no exported"):
        load_model(tmp_path / "missing")


def test_cosine_lr_schedule_and_controller_free_model(tmp_path):
    data = tiny_data()
    cfg = tiny_config(max_epochs=3, lr_schedule="cosine", lr_min_ratio=0.1, co_dim=0)
    res = fit(data, cfg, tmp_path / "r", device="cpu", progress=False)
    lrs = [m["lr_effective"] for m in res.metrics]
    assert lrs[0] == pytest.approx(5e-3) and lrs[-1] == pytest.approx(5e-4) and lrs[0] > lrs[1] > lrs[2]
    inf = infer(res.model, data, cfg, n_samples=3, device="cpu")  # co_dim = 0: no inferred inputs
    assert inf.rates.shape == (400, 3) and inf.inferred_inputs.shape == (400, 0)


def test_no_training_window_spans_a_gap_between_trials():
    """Trials joined with gaps (breaks): every training and validation window lies inside one trial, and a
    recording whose trials are all shorter than a window is refused in one line naming --segment-ms."""
    from nwb_lfads_emg.training.segments import cut_at_breaks

    assert cut_at_breaks([(0, 100)], [30, 45, 95], 10) == [(0, 30), (30, 45), (45, 95)]  # (95, 100) is too short
    assert cut_at_breaks([(0, 100)], [], 10) == [(0, 100)]
    config = tiny_config(val_fraction=0.2)
    breaks = [130, 260]
    trainer = Trainer(tiny_data(400), config, device="cpu", seed=0, breaks=breaks)
    starts = np.concatenate([trainer.train_starts, trainer.val_starts])
    assert len(trainer.train_starts) > 0
    for s in starts:
        assert not any(s < b < s + config.seg_len for b in breaks), (s, breaks)
    plain = Trainer(tiny_data(400), config, device="cpu", seed=0)
    assert any(any(s < b < s + config.seg_len for b in breaks) for s in plain.train_starts)  # the test can fail
    with pytest.raises(TrainingError, match="--segment-ms"):
        Trainer(tiny_data(400), config, device="cpu", seed=0, breaks=list(range(10, 400, 10)))
