"""Preprocessing: chunked == whole, strictly positive output, coords, provenance, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr

from nwb_lfads_emg.errors import EMGDataError
from nwb_lfads_emg.preprocess import (
    Binned,
    PreprocessConfig,
    bin_to,
    preprocess,
    preprocess_chunks,
    rectify_highpass,
)


def _dataarray(emg: np.ndarray, rate: float, t0: float = 0.0, names=None) -> xr.DataArray:
    names = names or [f"m{i}" for i in range(emg.shape[1])]
    return xr.DataArray(emg, dims=("time", "muscle"),
                        coords={"time": t0 + np.arange(emg.shape[0]) / rate, "muscle": names})


def _chunks(da: xr.DataArray, sizes):
    i = 0
    for s in sizes:
        yield da.isel(time=slice(i, i + s))
        i += s
    if i < da.sizes["time"]:
        yield da.isel(time=slice(i, None))


@pytest.mark.parametrize(
    "config",
    [
        PreprocessConfig(),
        PreprocessConfig(notch_hz=60.0, notch_harmonics=3, antialias_hz=80.0, bin_ms=7.0, clip_percentile=99.0),
        PreprocessConfig(highpass_hz=None, clip_percentile=None, normalize_percentile=None),
    ],
)
def test_chunked_equals_whole(small_session, config):
    rate = small_session.emg_rate
    da = _dataarray(small_session.emg, rate, t0=12.5, names=small_session.muscle_names)
    whole = preprocess(da, config=config)
    # uneven chunk sizes, none a multiple of the bin, one shorter than a bin, one empty
    sizes = [1, 7, 3333, 0, 12001, 5, 9999]
    chunked = preprocess_chunks(_chunks(da, sizes), config=config)
    assert chunked.data.shape == whole.data.shape
    assert chunked.data.dtype == np.float32
    # float32 precision: the two paths run the same filters with carried state
    np.testing.assert_allclose(chunked.data, whole.data, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(chunked.scale, whole.scale, rtol=1e-9)  # float64 round-off only
    assert chunked.starting_time == whole.starting_time == 12.5
    assert chunked.muscles == whole.muscles == small_session.muscle_names


def test_chunked_ndarray_chunks_and_given_stats(small_session):
    rate = small_session.emg_rate
    cfg = PreprocessConfig(notch_hz=60.0)
    whole = preprocess(small_session.emg, rate, cfg)
    pieces = np.array_split(small_session.emg, 7)
    chunked = preprocess_chunks(iter(pieces), rate, cfg, stats=None)
    np.testing.assert_allclose(chunked.data, whole.data, rtol=2e-6, atol=1e-6)
    # precomputed stats (e.g. from the first pass or another session) give the same output
    again = preprocess(small_session.emg, rate, cfg, stats=whole_stats(whole))
    np.testing.assert_array_equal(again.data, whole.data)
    assert again.stats_from == "given"


def whole_stats(b: Binned):
    from nwb_lfads_emg.preprocess import ChannelStats

    return ChannelStats(clip=b.clip, scale=b.scale)


def test_strictly_positive_with_silent_stretches():
    rng = np.random.default_rng(0)
    rate = 1000.0
    emg = rng.normal(size=(20000, 3)) * 1e-4
    emg[5000:9000] = 0.0  # exact zeros (a disconnected lead): binned values would be 0
    emg[:, 2] *= np.repeat([0.0, 1.0], 10000)  # a channel silent for half the recording
    b = preprocess(emg, rate, PreprocessConfig(highpass_hz=None))
    assert b.data.dtype == np.float32
    assert np.all(b.data > 0), "Gamma likelihood needs strictly positive input"
    assert np.all(np.isfinite(b.data))
    assert b.data.min() == pytest.approx(b.config.positive_floor, rel=1e-6)


def test_binning_scale_and_coords(small_session):
    rate = small_session.emg_rate
    cfg = PreprocessConfig(bin_ms=5.0, clip_percentile=None, normalize_percentile=95.0)
    da = _dataarray(small_session.emg, rate, t0=3.0, names=small_session.muscle_names)
    b = preprocess(da, config=cfg)
    assert b.bin_rate == pytest.approx(200.0)
    assert b.bin_samples == 10
    assert b.starting_time == pytest.approx(3.0)
    assert b.n_bins == small_session.emg.shape[0] // 10
    np.testing.assert_allclose(b.bin_times[:2], [3.0, 3.005])
    # scale recovers raw units: equal to the bin mean of the rectified, high-passed EMG (no clipping)
    rect = rectify_highpass(small_session.emg, rate, cfg)
    direct = rect[: b.n_bins * 10].reshape(b.n_bins, 10, -1).mean(axis=1)
    np.testing.assert_allclose(b.raw_units(), np.maximum(direct, cfg.positive_floor * b.scale), rtol=1e-5)
    # the scale is the normalisation percentile: 95 % of the bins lie at or below 1
    assert np.mean(b.data <= 1.0) == pytest.approx(0.95, abs=0.002)
    # provenance: every setting serialises
    rec = json.loads(json.dumps(dataclasses.asdict(b.config)))
    assert rec["bin_ms"] == 5.0 and "highpass_hz" in rec and "positive_floor" in rec


def test_bin_to_matches_truth_helper(small_session):
    from nwb_lfads_emg.simulate import true_activation_binned

    b = preprocess(small_session.emg, small_session.emg_rate, PreprocessConfig())
    mine = bin_to(small_session.activation, small_session.emg_rate, b)
    theirs = true_activation_binned(small_session, b.bin_rate)
    n = min(len(mine), len(theirs))
    np.testing.assert_allclose(mine[:n], theirs[:n], rtol=1e-5, atol=1e-6)
    # behaviour at 100 Hz onto 200 Hz bins: interpolation, same length
    beh = bin_to(small_session.behavior, small_session.behavior_rate, b)
    assert beh.shape == (b.n_bins, small_session.behavior.shape[1])


def test_highpass_removes_offset_and_drift():
    rate = 2000.0
    t = np.arange(int(10 * rate)) / rate
    rng = np.random.default_rng(1)
    carrier = rng.normal(size=t.size) * 1e-4
    drift = 5e-3 + 1e-3 * np.sin(2 * np.pi * 0.5 * t)  # DC offset + slow motion artefact, 10-50x the EMG
    r_clean = rectify_highpass(carrier[:, None], rate)
    r_dirty = rectify_highpass((carrier + drift)[:, None], rate)
    # after the first second the artefact is gone (to within 5 % of the EMG's mean rectified level)
    err = np.abs(r_dirty[int(rate):] - r_clean[int(rate):]).mean()
    assert err < 0.05 * r_clean.mean()


def test_errors_are_one_line():
    with pytest.raises(EMGDataError, match="non-finite"):
        preprocess(np.array([[0.0, 1.0], [np.nan, 1.0]] * 50), 1000.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 2))
    x[:, 1] = 0.0
    with pytest.raises(EMGDataError, match="flat"):
        preprocess(x, 1000.0, PreprocessConfig(highpass_hz=None))
    with pytest.raises(EMGDataError, match="rate"):
        preprocess(x, None)
    da = _dataarray(rng.normal(size=(4000, 2)), 1000.0)
    parts = [da.isel(time=slice(0, 1000)), da.isel(time=slice(2000, 4000))]  # a 1 s gap
    with pytest.raises(EMGDataError, match="chunk 1"):
        preprocess_chunks(parts, config=PreprocessConfig())
    with pytest.raises(EMGDataError) as exc:
        preprocess(x, 1000.0, PreprocessConfig(highpass_hz=900.0))
    assert "\n" not in str(exc.value)
