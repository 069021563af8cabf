"""Long recordings: `run` reads the raw series once, in chunks, and its estimates equal the whole-array path's;
the baselines and the write-back stay within a memory ceiling the whole-array path cannot meet."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

RATE = 1000.0
N_MUSCLES = 4
#: |one pass - whole array| / SD allowed: the low-pass differs by float32 rounding of its spilled input; the
#: Bayesian filter (float32 inside, in both paths) gets float32 step sums, which can move its MAP's refinement
TOLERANCE = {"LowPass": 1e-5, "BayesianFilter": 3e-4}


def _session(minutes: float, tmp_path_factory) -> Path:
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

    session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=N_MUSCLES, duration_s=60.0 * minutes, emg_rate=RATE,
                                                n_units=4, seed=3))
    return write_session_nwb(session, tmp_path_factory.mktemp("long") / f"emg_{minutes:g}min.nwb", store_truth=False)


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory) -> Path:
    """A 10 min, 4-muscle session at 1 kHz."""
    return _session(10.0, tmp_path_factory)


@pytest.fixture(scope="module")
def twenty_minutes(tmp_path_factory) -> Path:
    """A 20 min, 4-muscle session at 1 kHz."""
    return _session(20.0, tmp_path_factory)


def _written(path: Path) -> dict[str, np.ndarray]:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        module = io.read().processing["ecephys"]
        out = {name: np.asarray(module[name].data[:]) for name in ("AutoLFADS", "LowPass", "BayesianFilter")}
        out["AutoLFADS_sd"] = np.asarray(module["AutoLFADS"].uncertainty[:])
        out["LatentFactors"] = np.asarray(module["LatentFactors"].data[:])
        params = {name: module[name].method_parameters for name in ("LowPass", "BayesianFilter")}
    return out | {"params": params}  # type: ignore[return-value]


def test_run_one_pass_equals_the_whole_array_path(ten_minutes, tmp_path, monkeypatch):
    """`run` on 10 min reads the series once (no whole-series load) and writes the same estimates as the
    whole-array reference path: the baselines on the raw series in memory, inference merged at the end."""
    import json

    from nwb_lfads_emg import pipeline
    from nwb_lfads_emg.sources.reader import EMGReader
    from nwb_lfads_emg.training.inference import infer_whole, load_model

    loads, chunked = [], []
    monkeypatch.setattr(EMGReader, "to_dataarray", lambda *a, **k: loads.append(1))
    original_chunks = EMGReader.iter_chunks
    monkeypatch.setattr(EMGReader, "iter_chunks", lambda self, *a, **k: chunked.append(1) or original_chunks(self, *a, **k))
    job = pipeline.JobConfig(preset="demo", max_epochs=1, bin_ms=20.0, n_posterior_samples=2, progress=False, seed=1)
    out = pipeline.run(ten_minutes, tmp_path / "run", out=tmp_path / "out.nwb", job=job)
    assert loads == [] and chunked == [1], "run must pass over the raw series once, in chunks"
    monkeypatch.undo()
    got = _written(out)

    # the whole-array reference, from the same run directory
    emg_input, (opened, reader) = pipeline.read(ten_minutes, None, None, job.preprocess, job.chunk_s, keep_open=True)
    try:
        reference = pipeline.baseline_estimates(reader.to_dataarray(), emg_input.binned, job)
    finally:
        opened.close()
    model, config = load_model(json.loads((tmp_path / "run" / "job.json").read_text())["model_dir"])
    whole = infer_whole(model, emg_input.binned.data, config, n_samples=2, device="cpu", seed=1)
    np.testing.assert_array_equal(got["AutoLFADS"], whole.rates)
    np.testing.assert_array_equal(got["AutoLFADS_sd"], whole.rates_std)
    np.testing.assert_array_equal(got["LatentFactors"], whole.factors)
    for estimate in reference:
        new, old = got[estimate.method], estimate.data
        assert new.shape == old.shape == emg_input.binned.data.shape
        assert np.max(np.abs(new - old)) < TOLERANCE[estimate.method] * np.std(old), estimate.method
        params = json.loads(got["params"][estimate.method])
        for key in ("cutoff_hz", "diffusion", "jump"):
            if key in estimate.parameters:
                assert params[key] == estimate.parameters[key], key
    assert got["LowPass"].std() > 0.1 and got["BayesianFilter"].std() > 0.1  # real envelopes, not zeros


def _peak_mib(work) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    gc.collect()
    tracemalloc.start()
    try:
        result = work()
        return tracemalloc.get_traced_memory()[1] / 2**20, result
    finally:
        tracemalloc.stop()


def test_baselines_and_writeback_memory_is_bounded(twenty_minutes, tmp_path):
    """20 min x 4 muscles at 1 kHz (4.8 M samples, 37 MiB as float64): the one-pass baselines and the
    write-back peak far below the whole-array path, which holds the series and float64 copies of it."""
    from nwb_lfads_emg import pipeline
    from nwb_lfads_emg.writeback import ActivationEstimate, SessionResults

    job = pipeline.JobConfig(preset="demo", bin_ms=20.0, lowpass_cutoff_hz=5.0, progress=False,
                             bayes={"diffusion": 0.1, "jump": 1.0, "step_rate": 50.0})  # tuning: the other test
    ceiling_mib = 64.0  # one-pass: ~45 (of which ~27 reading the file at all); whole-array: ~190

    def one_pass() -> list:
        emg_input, _ = pipeline.read(twenty_minutes, None, None, job.preprocess, job.chunk_s, baselines=job,
                                     spill_dir=tmp_path)
        estimates = pipeline.finish_baselines(emg_input, job)
        b = emg_input.binned
        results = SessionResults(estimates=estimates, rate=b.bin_rate, starting_time=b.starting_time,
                                 muscles=emg_input.muscles, source_series_path=emg_input.series_path,
                                 electrode_indices=emg_input.electrode_indices)
        pipeline.write(twenty_minutes, emg_input, results, out=tmp_path / "out.nwb")
        return estimates

    peak, estimates = _peak_mib(one_pass)
    assert isinstance(estimates[0], ActivationEstimate) and (tmp_path / "out.nwb").is_file()
    assert peak < ceiling_mib, f"one-pass baselines + write-back peaked at {peak:.1f} MiB"

    def whole_array() -> list:
        emg_input, (opened, reader) = pipeline.read(twenty_minutes, None, None, job.preprocess, job.chunk_s,
                                                    keep_open=True)
        try:
            return pipeline.baseline_estimates(reader.to_dataarray(), emg_input.binned, job)
        finally:
            opened.close()

    old_peak, old = _peak_mib(whole_array)
    assert old_peak > 2.5 * ceiling_mib, f"the whole-array path peaked at only {old_peak:.1f} MiB"
    for a, b in zip(old, estimates, strict=True):
        assert np.max(np.abs(a.data - b.data)) < TOLERANCE[a.method] * np.std(a.data), a.method


def test_bayes_filter_batches_stream_from_the_spill_into_the_bins(tmp_path):
    """The Bayesian baseline of a long segment never holds its step sums or its estimate whole: each batch
    reads its rows from the spill file and writes the bins it completes. Bins and steps equal the in-memory
    path's exactly, across batch edges, a partial last step and bins that straddle steps."""
    from nwb_lfads_emg.baselines.bayes import bayes_filter_steps
    from nwb_lfads_emg.baselines.streaming import _SpilledSteps, _StepBins, _steps_to_bins

    rng = np.random.default_rng(0)
    n_steps, n_ch, n_bin = 5003, 3, 13
    sums = rng.gamma(2.0, 1.0, (n_steps, n_ch)).astype(np.float32)
    counts = np.full(n_steps, 10.0)
    counts[-1] = 7.0  # the segment's last step is partial
    divisor = np.array([1.0, 2.0, 4.0], dtype=np.float32)
    options = dict(segment_s=2.0, warmup_s=0.5, max_batch=7)  # 7 batches of 2 segments x 3 channels
    whole = bayes_filter_steps(sums / divisor, counts, 0.005, **options)

    with open(tmp_path / "steps.spill", "w+b") as spill:
        np.ones((17, n_ch), dtype=np.float32).tofile(spill)  # another segment's rows come first
        sums[:-1].tofile(spill)
        requested: list[int] = []

        class Counted(_SpilledSteps):
            def __getitem__(self, rows: np.ndarray) -> np.ndarray:
                requested.append(int(np.ptp(rows)) + 1)
                return super().__getitem__(rows)

        source = Counted(spill, 17, n_steps - 1, n_ch, sums[-1], divisor)
        parts: list[tuple[int, np.ndarray]] = []
        assert bayes_filter_steps(source, counts, 0.005, emit=lambda a, s: parts.append((a, s.copy())),
                                  **options) is None
    assert len(parts) == 7 and max(requested) < n_steps / 3  # a batch reads its rows, not the segment's
    np.testing.assert_array_equal(np.concatenate([s for _, s in parts]), whole)

    scale = np.array([1.0, 2.0, 3.0])
    kk = counts.astype(np.int64)
    n_bins = int(kk.sum()) // n_bin
    expected, got = np.empty((n_bins, n_ch)), np.full((n_bins, n_ch), np.nan)
    _steps_to_bins(whole, scale, kk, np.concatenate([[0], np.cumsum(kk)]), 0, n_bin, expected, divisor, 0, n_bins)
    bins = _StepBins(scale, kk, n_bin, got, divisor)
    for first, steps in parts:
        bins.feed(first, steps)
    bins.finish()
    np.testing.assert_array_equal(got, expected)


def _tiny_config(**changes):  # type: ignore[no-untyped-def]
    from nwb_lfads_emg.lfads.config import preset

    c = preset("demo")
    for key, value in dict(ic_enc_dim=8, ci_enc_dim=4, con_dim=4, co_dim=2, ic_dim=4, gen_dim=8, fac_dim=3,
                           seg_len=20, seg_overlap=10, batch_size=8, val_fraction=0.2, val_blocks=4,
                           **changes).items():
        setattr(c, key, value)
    return c


def test_epoch_is_a_fixed_sample_of_the_whole_recording(monkeypatch):
    """An epoch trains on `epoch_segments` segments drawn from all of a long recording (validation: as many,
    spread over it); a recording with fewer segments trains exactly as with no limit."""
    import torch

    from nwb_lfads_emg.training.trainer import Trainer

    data = np.random.default_rng(0).gamma(2.0, 0.5, size=(6000, 3)).astype(np.float32) + 0.01
    seen: list[int] = []
    original = Trainer._batch_masks
    monkeypatch.setattr(Trainer, "_batch_masks", lambda self, x, sv: seen.append(x.shape[0]) or original(self, x, sv))
    long = Trainer(data, _tiny_config(epoch_segments=40), device="cpu")
    assert long.n_train_segments > 400
    long.train_epoch()
    assert sum(seen) == 40
    assert long.x_val.shape[0] <= 40 and np.ptp(long.val_starts) > 0.6 * data.shape[0]  # spread over the recording

    short = data[:600]
    a = Trainer(short, _tiny_config(epoch_segments=None), device="cpu", seed=2)
    b = Trainer(short, _tiny_config(epoch_segments=4096), device="cpu", seed=2)
    assert a.n_train_segments < 4096
    ma, mb = a.train_epoch(), b.train_epoch()
    assert ma["train_loss"] == mb["train_loss"] and ma["val_loss"] == mb["val_loss"]
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_multisession_annotate_writes_through_the_estimate_store(tmp_path, monkeypatch):
    """Annotating with a stitched model puts its estimates into the run's estimate store block by block (as a
    single-session annotate does), never whole in memory, and writes the same values as inference in memory."""
    from nwb_lfads_emg import pipeline, sessions
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb
    from nwb_lfads_emg.store import EstimateStore

    files = [write_session_nwb(simulate_session(SimulationConfig(emg_model="carrier", n_muscles=N_MUSCLES,
                                                                 duration_s=12.0, emg_rate=RATE, n_units=4, seed=s)),
                               tmp_path / f"s{s}.nwb", store_truth=False) for s in (0, 1)]
    job = pipeline.JobConfig(preset="demo", max_epochs=1, bin_ms=20.0, n_posterior_samples=2, progress=False,
                             lowpass_cutoff_hz=5.0, bayes={"diffusion": 0.1, "jump": 1.0})
    sessions.fit_sources([str(f) for f in files], tmp_path / "run", job=job)
    allocated: list[tuple[str, tuple]] = []
    allocate = EstimateStore.allocate
    monkeypatch.setattr(EstimateStore, "allocate", lambda self, name, shape: allocated.append((name, tuple(shape)))
                        or allocate(self, name, shape))
    out = sessions.annotate_session(files[1], tmp_path / "run", out=tmp_path / "out.nwb", job=job)
    monkeypatch.undo()
    emg_input, _ = pipeline.read(files[1], None, None, job.preprocess, job.chunk_s)
    shape = emg_input.binned.data.shape
    names = dict(allocated)
    assert names["AutoLFADS/data"] == names["AutoLFADS/uncertainty"] == names["LowPass/data"] == shape
    assert {"LatentFactors/data", "BayesianFilter/data"} <= set(names)
    assert not any(p.name.startswith(".estimates-") for p in (tmp_path / "run").iterdir())  # removed after
    in_memory, _, _ = sessions.infer_session(tmp_path / "run", emg_input, job)
    got = _written(out)
    np.testing.assert_array_equal(got["AutoLFADS"], np.asarray(in_memory.rates, dtype=np.float32))
    np.testing.assert_array_equal(got["LatentFactors"], np.asarray(in_memory.factors, dtype=np.float32))
