"""Time scales and the auto preset from the data; the CLI on a real recording converted to NWB."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nwb_lfads_emg.lfads.auto import auto_config
from nwb_lfads_emg.timescales import choose_time_scales, time_scale_candidates

RATE = 1000.0


def _rectified(mod_hz: float, seconds: float, seed: int = 0) -> np.ndarray:
    import scipy.signal as sps

    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n)[:, None] / RATE
    drive = 1.0 + 0.8 * np.sin(2 * np.pi * mod_hz * t + np.arange(3)[None, :])
    sos = sps.butter(4, (50.0, 200.0), btype="bandpass", fs=RATE, output="sos")
    return np.abs(sps.sosfilt(sos, rng.standard_normal((n, 3)), axis=0) * drive)


def test_slower_envelopes_get_wider_bins_and_longer_segments():
    slow = choose_time_scales(_rectified(0.3, 60.0), RATE)
    fast = choose_time_scales(_rectified(5.0, 60.0), RATE)
    assert slow.bin_ms > fast.bin_ms and slow.segment_ms > fast.segment_ms
    for ts in (slow, fast):
        assert 2.0 <= ts.bin_ms <= 40.0 and (ts.bin_ms * RATE / 1000) == int(ts.bin_ms * RATE / 1000)
        assert ts.segment_ms >= 1000.0 or ts.segment_ms / ts.bin_ms >= 100
    short = choose_time_scales(_rectified(5.0, 4.0), RATE)  # a short recording still gets >= 10 segments
    assert short.segment_ms <= 4000.0 / 10 + short.bin_ms


def test_time_scale_candidates_tile_a_common_bin():
    cands = time_scale_candidates(2.0, 60.0)
    assert [b for _, b, _ in cands] == [4.0, 8.0, 16.0, 32.0]
    assert all(s == 100 * b for _, b, s in cands) and all(cands[-1][0] % k == 0 for k, _, _ in cands)
    short = time_scale_candidates(2.0, 10.0)  # segments at most a fifth of the recording: 2 s
    assert [b for _, b, _ in short] == [4.0, 8.0, 16.0]
    assert time_scale_candidates(25.0, 60.0) == [(1, 25.0, 2500.0)]  # a coarse envelope input: one candidate


def test_held_out_entries_never_reach_the_predictions():
    """The selection's score is honest: what a candidate predicts at hidden entries does not depend on them."""
    from nwb_lfads_emg.lfads.auto import auto_config
    from nwb_lfads_emg.training.selection import masked_rates
    from nwb_lfads_emg.training.trainer import Trainer

    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 0.5, size=(400, 3)).astype(np.float32)
    mask = np.zeros_like(data, dtype=bool)
    mask[40:48, 1] = mask[200:208, 2] = True
    cfg = auto_config(400, 3, 10.0, 400.0, steps=1)
    cfg.val_fraction, cfg.sv_rate = 0.0, float(mask.mean())
    trainer = Trainer(data, cfg, device="cpu", seed=0, sv_mask=mask)
    trainer.train_epoch()
    before = masked_rates(trainer, mask)
    trainer.data = data.copy()
    trainer.data[mask] *= 10.0
    np.testing.assert_allclose(masked_rates(trainer, mask), before, rtol=1e-5, atol=1e-6)
    trainer.data[100, 0] *= 10.0  # a visible entry does change them
    assert not np.allclose(masked_rates(trainer, mask), before, rtol=1e-5, atol=1e-6)


def test_auto_config_from_size_and_device():
    small = auto_config(n_bins=2000, n_channels=4, bin_ms=20.0, segment_ms=2000.0, device="cpu")
    assert small.seg_len == 100 and small.fac_dim == 4 and small.bin_ms == 20.0
    assert small.val_fraction > 0 and small.val_blocks >= 2  # short recording: held-out blocks stop it early
    assert small.temporal_shift_ms > 0 and small.preset_name == "auto"
    assert small.stop_min_se == 1.0  # decreases within the held-out loss's standard error do not extend training
    assert small.average_weights  # and the epochs within it of the best are averaged
    big = auto_config(n_bins=720000, n_channels=32, bin_ms=5.0, segment_ms=500.0, device="cuda")
    assert big.val_fraction == 0 and big.fac_dim == 16 and big.gen_dim > small.gen_dim
    assert big.max_epochs < small.max_epochs  # more data per epoch, fewer epochs


def test_cli_run_on_real_recording_records_the_time_scales(shared_data_dir, tmp_path):
    from real_nwb import uci_to_nwb

    from nwb_lfads_emg.evaluate import evaluate_file, summarize

    src = uci_to_nwb(shared_data_dir / "uci-lower-limb" / "3Apie.npz", tmp_path / "3Apie.nwb")
    before = src.read_bytes()
    out = tmp_path / "3Apie_annotated.nwb"
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "nwb_lfads_emg.cli", "run", str(src), "--emg", "EMG", "--out",
                           str(out), "--run-dir", str(run_dir), "--max-epochs", "2", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert src.read_bytes() == before  # the user's file is untouched
    record = json.loads((run_dir / "job.json").read_text())
    ts = record["job"]["time_scales"]
    assert record["job"]["preset"] == "auto" and ts["chosen_by"] == "data"
    assert ts["method"] == "held-out prediction" and len(ts["candidates"]) >= 3
    best = max(ts["candidates"], key=lambda c: c["held_out_r2"])  # the best held-out score won, and was used
    assert (ts["bin_ms"], ts["segment_ms"]) == (best["bin_ms"], best["segment_ms"])
    assert all(c["epochs"] <= 2 for c in ts["candidates"])  # --max-epochs caps the selection's runs too
    assert ts["bin_ms"] == pytest.approx(1000.0 / record["bin_rate"])  # the model ran on the chosen bins
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seg_len"] == round(ts["segment_ms"] / ts["bin_ms"])
    table = evaluate_file(out)
    means = summarize(table)
    assert {"AutoLFADS", "LowPass", "BayesianFilter", "LowPassOracle"} <= set(means.index)
    assert np.isfinite(means.loc["AutoLFADS", "decode_linear"])


def test_auto_run_reads_the_raw_series_once(tmp_path, monkeypatch):
    """`run` with the auto preset (the default) reads every raw sample once, in one chunked pass: the time-scale
    probe, the model's bins and the baselines' inputs all come from it. The probe the choice sees is the old
    separate probe read's bit for bit (so the chosen time scales are the same), and the model's bins are those of
    a read at the chosen width up to float64 rounding (they are averaged from the probe's 2 ms bins)."""
    from collections import Counter
    from dataclasses import replace

    from nwb_lfads_emg import pipeline, timescales
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb
    from nwb_lfads_emg.sources.reader import EMGReader

    session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=4, duration_s=8.0, emg_rate=RATE,
                                                n_units=4, seed=3))
    src = write_session_nwb(session, tmp_path / "emg.nwb", store_truth=False)
    n_samples = session.emg.shape[0]
    reads, looks, probes, fitted = [], [], [], []
    read_unchecked, read_scaled = EMGReader._read_unchecked, EMGReader._read_scaled
    select, fit = timescales.select_time_scales, pipeline.fit
    monkeypatch.setattr(EMGReader, "_read_unchecked", lambda self, i0, i1, *a: reads.append((i0, i1))
                        or read_unchecked(self, i0, i1, *a))  # every read of the raw series passes here
    monkeypatch.setattr(EMGReader, "_read_scaled", lambda self, i0, i1, *a, **k: (
        looks.append((i0, i1)) if not k.get("check", True) else None) or read_scaled(self, i0, i1, *a, **k))
    monkeypatch.setattr(timescales, "select_time_scales", lambda probe, *a, **k: probes.append(np.array(probe))
                        or select(probe, *a, **k))
    monkeypatch.setattr(pipeline, "fit", lambda emg_input, *a, **k: fitted.append(
        (emg_input.binned.data.copy(), emg_input.binned.scale.copy())) or fit(emg_input, *a, **k))
    job = pipeline.JobConfig(max_epochs=1, n_posterior_samples=2, progress=False, seed=0)
    out = pipeline.run(src, tmp_path / "run", out=tmp_path / "out.nwb", job=job)
    monkeypatch.undo()
    assert looks and all(reads.count(x) >= looks.count(x) for x in looks)  # the looks are reads too
    data_reads = sorted((Counter(reads) - Counter(looks)).elements())  # head and dead-channel looks: check=False
    assert sum(b - a for a, b in data_reads) == n_samples, "run must read each raw sample once"
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(data_reads[:-1], data_reads[1:], strict=True))  # consecutive, no overlap
    assert sum(b - a for a, b in looks) <= 3 * RATE + 5000  # one reader opened: one look
    ts = job.time_scales
    assert ts["method"] == "held-out prediction" and len(ts["candidates"]) >= 2 and len(probes) == 1

    # the two-pass reference: the probe read on its own, then a read at the chosen bin
    probe_ms = ts["probe_bin_ms"]
    old_probe, _ = pipeline.read(src, config=replace(pipeline.JobConfig().preprocess, bin_ms=probe_ms,
                                                     clip_percentile=None))
    b = old_probe.binned
    np.testing.assert_array_equal(probes[0], np.asarray(b.data, dtype=np.float64) * b.scale[None, :])
    assert ts["bin_ms"] > probe_ms  # the model's bins were averaged from several probe bins
    old, _ = pipeline.read(src, config=job.preprocess)
    data, scale = fitted[0]
    np.testing.assert_allclose(scale, old.binned.scale, rtol=1e-12)
    np.testing.assert_allclose(data, old.binned.data, rtol=1e-6, atol=0)  # float32 rounding of a mean of means
    assert old.binned.bin_rate == pytest.approx(1000.0 / ts["bin_ms"]) and out.is_file()
