"""Local reading: discovery, the lazy EMG reader, behaviour/spikes, and every bad-input error."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from nwb_lfads_emg.errors import EMGDataError, SourceError
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb
from nwb_lfads_emg.sources import (
    EMGReader,
    find_emg_candidates,
    inspect_source,
    open_source,
    read_behavior,
    read_spikes_binned,
)

# ----------------------------------------------------------------------------- test files


def write_nwb(path: Path, *, per_muscle: dict[str, np.ndarray] | None = None, rate: float = 1000.0,
              timestamps: dict[str, np.ndarray] | None = None, rates: dict[str, float] | None = None,
              electrical: np.ndarray | None = None, muscles: list[str] | None = None,
              es_name: str = "EMG", group_description: str = "bipolar EMG electrodes",
              extra_electrical: np.ndarray | None = None, behavior: np.ndarray | None = None,
              chunks: tuple[int, ...] | None = None) -> Path:
    """Small NWB files: FALCON-like per-muscle TimeSeries and/or a Myomatrix-like ElectricalSeries."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.ecephys import ElectricalSeries

    nwb = NWBFile(session_description="test", identifier=path.stem,
                  session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    if per_muscle is not None:
        box = BehavioralTimeSeries(name="preprocessed_emg")
        for name, data in per_muscle.items():
            timing = ({"timestamps": timestamps[name]} if timestamps and name in timestamps
                      else {"rate": (rates or {}).get(name, rate), "starting_time": 0.0})
            box.add_timeseries(TimeSeries(name=name, data=data, unit="volts", **timing))
        nwb.add_acquisition(box)
    for es_data, name in ((electrical, es_name), (extra_electrical, "EMG_2")):
        if es_data is None:
            continue
        device = nwb.create_device(name=f"amp_{name}", description="amplifier")
        group = nwb.create_electrode_group(name=f"grp_{name}", description=group_description,
                                           location="forelimb", device=device)
        n_ch = es_data.shape[1] if es_data.ndim == 2 else 1
        first = len(nwb.electrodes) if nwb.electrodes is not None else 0
        for k in range(n_ch):
            nwb.add_electrode(location=(muscles or [f"m{j}" for j in range(n_ch)])[k], group=group)
        region = nwb.create_electrode_table_region(list(range(first, first + n_ch)), "channels")
        data = H5DataIO(es_data, chunks=chunks) if chunks else es_data
        nwb.add_acquisition(ElectricalSeries(name=name, data=data, electrodes=region, rate=rate,
                                             starting_time=0.0, description="raw"))
    if behavior is not None:
        mod = nwb.create_processing_module("behavior", "behaviour")
        mod.add(TimeSeries(name="force", data=behavior, unit="N", rate=100.0, starting_time=0.0))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def noise(n: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1e-4, size=(n, c)).astype(np.float32)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    """A simulated session written in both layouts (FALCON-like with timestamps, Myomatrix-like)."""
    d = tmp_path_factory.mktemp("sim")
    session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=5, duration_s=12.0, n_units=6, seed=3))
    el = write_session_nwb(session, d / "electrical.nwb", layout="electrical")
    pm = write_session_nwb(session, d / "per_muscle.nwb", layout="per_muscle", timestamps=True)
    return session, el, pm


# ----------------------------------------------------------------------------- discovery


def test_discovery_in_both_layouts(sim) -> None:
    session, el, pm = sim
    with open_source(el) as opened:
        (cand,) = find_emg_candidates(opened.nwbfile)
        assert (cand.path, cand.kind, cand.rate) == ("acquisition/EMG", "ElectricalSeries", 2000.0)
        assert cand.muscles == session.muscle_names
        assert cand.duration_s == pytest.approx(12.0)
    with open_source(pm) as opened:
        (cand,) = find_emg_candidates(opened.nwbfile)
        assert (cand.path, cand.kind, cand.timestamped) == ("acquisition/preprocessed_emg", "per_muscle", True)
        assert cand.muscles == sorted(session.muscle_names)  # HDF5 lists group members by name
        assert cand.rate == pytest.approx(2000.0)


def test_inspect_lists_emg_units_and_behaviour(sim, capsys: pytest.CaptureFixture[str]) -> None:
    from nwb_lfads_emg.cli import main

    _, el, pm = sim
    text = inspect_source(str(pm), cache_dir=None)
    assert "acquisition/preprocessed_emg [per_muscle] 5 ch, 2000 Hz, 12.0 s, unit volts, timestamped" in text
    assert "Units: units (6 units" in text
    assert "processing/behavior/joint_angles" in text
    # the truth is listed (inspect hides no series), but never as EMG or behaviour
    listed_as_input = text.split("Other time series")[0]
    assert "ground_truth" not in listed_as_input
    assert "processing/ground_truth/true_activation [TimeSeries] shape (12000, 5), 1000 Hz" in text.split("Other time series")[1]
    assert main(["inspect", str(el)]) == 0
    assert "acquisition/EMG [ElectricalSeries] 5 ch" in capsys.readouterr().out


# ----------------------------------------------------------------------------- reading


def test_electrical_reader_values_units_and_metadata(sim) -> None:
    session, el, _ = sim
    with open_source(el) as opened:
        r = EMGReader(opened)
        assert (r.rate, r.n_samples, r.starting_time, r.unit) == (2000.0, 24000, 0.0, "volts")
        assert r.source_kind == "ElectricalSeries" and r.electrode_indices == [0, 1, 2, 3, 4]
        assert r.series_object.name == "EMG" and r.series_path == "acquisition/EMG"
        w = r.window(2.0, 3.5)
        assert w.dims == ("time", "muscle") and w.shape == (3000, 5)
        assert w.attrs["units"] == "volts"
        assert float(w.time[0]) == 2.0 and float(w.time[-1]) == pytest.approx(3.5 - 1 / 2000)
        step = opened.nwbfile.acquisition["EMG"].conversion
        np.testing.assert_allclose(w.values, session.emg[4000:7000], atol=step * 0.51, rtol=0)
        sub = r.window(2.0, 2.1, muscles=[session.muscle_names[3], session.muscle_names[1]])
        np.testing.assert_array_equal(sub.values, w.values[:200, [3, 1]])
        assert list(sub.muscle.values) == [session.muscle_names[3], session.muscle_names[1]]


def test_per_muscle_timestamped_reader_is_exact(sim) -> None:
    session, _, pm = sim
    with open_source(pm) as opened:
        r = EMGReader(opened, series="preprocessed_emg")
        assert r.source_kind == "per_muscle" and r.electrode_indices is None
        order = [session.muscle_names.index(m) for m in r.muscles]
        assert r.series_object.name == r.muscles[0]
        assert r.rate == 2000.0 and sorted(r.muscles) == sorted(session.muscle_names)
        w = r.window(1.0, 1.25)
        np.testing.assert_array_equal(w.values, session.emg[2000:2500][:, order])
        np.testing.assert_allclose(w.time.values, np.arange(2000, 2500) / 2000.0)


def test_iter_chunks_walks_everything_in_bounded_pieces(sim) -> None:
    session, el, _ = sim
    with open_source(el) as opened:
        r = EMGReader(opened)
        chunks = list(r.iter_chunks(chunk_s=5.0))
        assert [c.sizes["time"] for c in chunks] == [10000, 10000, 4000]
        whole = r.to_dataarray()
        np.testing.assert_array_equal(np.concatenate([c.values for c in chunks]), whole.values)
        np.testing.assert_array_equal(np.concatenate([c.time.values for c in chunks]), whole.time.values)
        part = list(r.iter_chunks(chunk_s=1.0, t0=3.0, t1=5.5))
        assert [c.sizes["time"] for c in part] == [2000, 2000, 1000]
        np.testing.assert_array_equal(part[0].values, r.window(3.0, 4.0).values)


def test_behaviour_and_spikes_on_a_common_time_base(sim) -> None:
    session, el, _ = sim
    with open_source(el) as opened:
        beh = read_behavior(opened.nwbfile)
        assert beh.dims == ("time", "output") and beh.shape == session.behavior.shape
        assert list(beh.coords["output"].values) == session.behavior_names  # named as in the evaluation
        np.testing.assert_allclose(beh.values, session.behavior)
        times = np.array([0.5, 0.505, 11.0])
        on = read_behavior(opened.nwbfile, name="joint_angles", times=times)
        np.testing.assert_allclose(on.values[0], session.behavior[50])
        np.testing.assert_allclose(on.values[1], (session.behavior[50] + session.behavior[51]) / 2)
        np.testing.assert_allclose(on.time.values, times)
        edges = np.arange(0, 12.001, 0.02)
        counts = read_spikes_binned(opened.nwbfile, edges)
        assert counts.shape == (600, 6)
        for u, st in enumerate(session.spike_times):
            np.testing.assert_array_equal(counts[:, u], np.histogram(st, bins=edges)[0])
        with pytest.raises(EMGDataError, match="no such behaviour series.*joint_angles"):
            read_behavior(opened.nwbfile, name="cursor")


# ----------------------------------------------------------------------------- bad input


def test_not_hdf5_and_truncated_files(tmp_path: Path, sim) -> None:
    bad = tmp_path / "notes.nwb"
    bad.write_text("this is not an NWB file\n")
    with pytest.raises(SourceError, match=r"notes\.nwb: not an HDF5/NWB file"):
        open_source(bad)
    _, el, _ = sim
    cut = tmp_path / "cut.nwb"
    with open(el, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(el.stat().st_size // 2))
    with pytest.raises(SourceError, match=r"cut\.nwb: truncated HDF5 file") as info:
        open_source(cut)
    assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "missing.nwb")


def test_no_emg_lists_what_exists(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "beh.nwb", behavior=np.zeros((50, 2)))
    with open_source(path) as opened, pytest.raises(EMGDataError) as info:
        EMGReader(opened)
    msg = str(info.value)
    assert "beh.nwb" in msg and "no EMG-like series" in msg and "processing/behavior/force (TimeSeries)" in msg


def test_series_not_found_and_several_candidates(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "two.nwb", electrical=noise(500, 3), extra_electrical=noise(500, 2, 1))
    with open_source(path) as opened:
        with pytest.raises(EMGDataError, match="several EMG-like series.*acquisition/EMG, acquisition/EMG_2"):
            EMGReader(opened)
        with pytest.raises(EMGDataError, match=r"two\.nwb: emgz: no EMG-like series by this name; candidates: acquisition/EMG"):
            EMGReader(opened, series="emgz")
        assert EMGReader(opened, series="EMG_2").muscles == ["m0", "m1"]


def test_nonfinite_samples_refused_or_masked(tmp_path: Path) -> None:
    a, b = noise(2000, 1, 1)[:, 0], noise(2000, 1, 2)[:, 0]
    b[1500] = np.nan
    b[1501] = np.inf
    path = write_nwb(tmp_path / "nan.nwb", per_muscle={"FDS": a, "EDC": b})
    with open_source(path) as opened:
        r = EMGReader(opened)
        assert r.window(0.0, 1.0).shape == (1000, 2)
        with pytest.raises(EMGDataError, match=r"nan\.nwb: acquisition/preprocessed_emg: 2 NaN/Inf .* muscle EDC at t=1\.5000"):
            r.window(1.0, 2.0)
        m = EMGReader(opened, on_nonfinite="mask").window(1.0, 2.0)
        edc = m.sel(muscle="EDC")
        assert np.isfinite(m.values).all() and float(edc[500]) == 0.0 and float(edc[501]) == 0.0
        assert not edc.valid.values[500] and not edc.valid.values[501] and int(m.valid.sum()) == 1998


def test_nonfinite_samples_found_in_a_large_window_checked_on_two_threads(tmp_path: Path) -> None:
    """A window of >= OVERLAP_CHECK_MIN samples is checked in two parts at once: a NaN in the part the second
    thread checks and an Inf in the part the reading thread checks are each refused, and both masked."""
    from nwb_lfads_emg.sources import reader as reader_module

    data = noise(80000, 32)
    data[100, 3] = np.nan  # in the first window's head (second thread)
    data[79000, 30] = np.inf  # in the second window's tail (reading thread)
    rows = 40000
    assert rows * 32 >= reader_module.OVERLAP_CHECK_MIN and 1000 < rows * reader_module.OVERLAP_CHECK_SHARE < 39000
    path = write_nwb(tmp_path / "big.nwb", electrical=data, muscles=[f"m{k}" for k in range(32)])
    with open_source(path) as opened:
        r = EMGReader(opened, check_dead=False)
        with pytest.raises(EMGDataError, match=r"big\.nwb: acquisition/EMG: 1 NaN/Inf .* muscle m3 at t=0\.1000"):
            r.window(0.0, 40.0)
        with pytest.raises(EMGDataError, match=r"big\.nwb: acquisition/EMG: 1 NaN/Inf .* muscle m30 at t=79\.0000"):
            r.window(40.0, 80.0)
        clean = r.window(1.0, 41.0)  # neither: as stored, no mask
        np.testing.assert_array_equal(clean.values, data[1000:41000])
        assert "valid" not in clean.coords
        m = EMGReader(opened, on_nonfinite="mask", check_dead=False).window(0.0, 80.0)
        assert int((~m.valid.values).sum()) == 2 and not m.valid.values[100, 3] and not m.valid.values[79000, 30]
        assert np.isfinite(m.values).all() and float(m.values[100, 3]) == 0.0


def test_dead_channel_refused_or_dropped(tmp_path: Path) -> None:
    data = noise(3000, 3)
    data[:, 1] = 0.25
    path = write_nwb(tmp_path / "dead.nwb", electrical=data, muscles=["BIC", "TRI", "DEL"])
    with open_source(path) as opened:
        with pytest.raises(EMGDataError, match=r"dead\.nwb: acquisition/EMG: constant \(dead\) channel\(s\): TRI"):
            EMGReader(opened)
        r = EMGReader(opened, drop_dead=True)
        assert r.muscles == ["BIC", "DEL"] and r.dropped_muscles == ["TRI"]
        np.testing.assert_array_equal(r.window(0, 0.5).values, data[:500][:, [0, 2]])


def test_one_dimensional_electrical_series(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "flat.nwb", electrical=noise(800, 1)[:, 0])
    with open_source(path) as opened, pytest.raises(EMGDataError, match=r"flat\.nwb: acquisition/EMG: data is 1-D"):
        EMGReader(opened)


def test_mismatched_rates_between_muscles(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "rates.nwb", per_muscle={"FDS": noise(900, 1)[:, 0], "EDC": noise(900, 1, 3)[:, 0]},
                     rates={"EDC": 500.0})
    with open_source(path) as opened, pytest.raises(EMGDataError, match="mismatched rates.*EDC 500 Hz, FDS 1000 Hz"):
        EMGReader(opened)


def test_irregular_timestamps_error_or_resample(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    stamps = np.cumsum(rng.uniform(0.0008, 0.0012, size=3000))
    a, b = noise(3000, 1, 1)[:, 0], noise(3000, 1, 2)[:, 0]
    path = write_nwb(tmp_path / "jitter.nwb", per_muscle={"FDS": a, "EDC": b}, timestamps={"FDS": stamps, "EDC": stamps})
    with open_source(path) as opened:
        with pytest.raises(EMGDataError, match=r"jitter\.nwb: acquisition/preprocessed_emg: irregular timestamps.*resample"):
            EMGReader(opened)
        r = EMGReader(opened, irregular="resample")
        assert r.rate == pytest.approx(1000.0, rel=0.02)
        w = r.window(1.0, 1.2)
        np.testing.assert_allclose(w.sel(muscle="FDS").values, np.interp(w.time.values, stamps, a), rtol=1e-5, atol=1e-12)
        assert np.allclose(np.diff(w.time.values), 1 / r.rate)


def test_hdf5_that_is_not_nwb(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(SourceError, match=r"plain\.h5: an HDF5 file but not NWB"):
        open_source(path)


def test_damaged_dataset_gives_one_line_error(tmp_path: Path) -> None:
    """A file whose EMG chunks are cut off opens (metadata intact) but a read fails cleanly."""
    data = noise(200_000, 4)
    path = write_nwb(tmp_path / "big.nwb", electrical=data, chunks=(10_000, 4))
    cut = tmp_path / "cutdata.nwb"
    shutil.copy(path, cut)
    import h5py

    with h5py.File(path, "r") as f:
        offset = f["acquisition/EMG/data"].id.get_chunk_info(15).byte_offset
    with open(cut, "r+b") as fh:
        fh.truncate(offset)
    try:
        opened = open_source(cut)
    except SourceError as exc:  # the library may already notice the truncation when opening
        assert "cutdata.nwb" in str(exc) and "truncated" in str(exc)
        return
    with opened, pytest.raises(SourceError, match=r"cutdata\.nwb: acquisition/EMG: cannot read the data"):
        EMGReader(opened, check_dead=False).window(16.0, 17.0)
