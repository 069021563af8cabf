"""Real recorded EMG (treadmill walking, 13 leg muscles, 1 kHz; shared/data): converted to NWB, read back
through the EMG reader, and the estimates show the known physiology of gait."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from pynwb import NWBHDF5IO, NWBFile
from pynwb.ecephys import ElectricalSeries
from pynwb.epoch import TimeIntervals
from pynwb.file import Subject

from nwb_lfads_emg.pipeline import JobConfig, baseline_estimates, read
from nwb_lfads_emg.sources import EMGReader, find_emg_candidates, open_source

PLANTARFLEXORS = ["GM", "GL", "SO", "PL"]  # peak in mid-stance: 35-60 % of the cycle from touchdown
HAMSTRINGS = ["ST", "BF"]  # late swing: about 90-95 %


@pytest.fixture(scope="module")
def treadmill(shared_data_dir, tmp_path_factory) -> tuple[Path, dict]:
    raw = np.load(shared_data_dir / "treadmill-walking-13-muscles" / "emg.npz")
    muscles = [str(m) for m in raw["muscles"]]
    nwbfile = NWBFile(
        session_description="Treadmill walking, surface EMG of 13 leg muscles (musclesyneRgies ID0012_TW_01).",
        identifier="musclesyneRgies-ID0012_TW_01",
        session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
    )
    nwbfile.subject = Subject(subject_id="ID0012", species="Homo sapiens", sex="U", age="P30Y")
    device = nwbfile.create_device(name="EMGSystem", description="Surface EMG amplifier.")
    group = nwbfile.create_electrode_group(name="EMG", description="Bipolar surface EMG electrodes.",
                                           location="right leg", device=device)
    for muscle in muscles:
        nwbfile.add_electrode(location=muscle, group=group)
    nwbfile.add_acquisition(ElectricalSeries(
        name="EMG", description="Raw surface EMG, one channel per muscle.", data=raw["emg"],
        electrodes=nwbfile.create_electrode_table_region(list(range(len(muscles))), "muscles"),
        rate=1000.0, starting_time=float(raw["time"][0]), conversion=1e-6,
    ))
    cycles = TimeIntervals(name="gait_cycles", description="Gait cycles, touchdown to next touchdown.")
    cycles.add_column("liftoff_time", "Lift-off (end of stance) within the cycle, s.")
    for t0, t1 in zip(raw["touchdown"][:-1], raw["touchdown"][1:], strict=True):
        liftoff = raw["liftoff"][(raw["liftoff"] > t0) & (raw["liftoff"] < t1)]
        cycles.add_interval(start_time=float(t0), stop_time=float(t1),
                            liftoff_time=float(liftoff[0]) if len(liftoff) else float("nan"))
    nwbfile.add_time_intervals(cycles)
    path = tmp_path_factory.mktemp("real") / "treadmill.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path, {"touchdown": raw["touchdown"], "liftoff": raw["liftoff"], "muscles": muscles, "emg": raw["emg"]}


def test_reader_finds_the_emg_and_applies_units(treadmill):
    path, meta = treadmill
    with open_source(path) as opened:
        (candidate,) = find_emg_candidates(opened.nwbfile)
        assert candidate.muscles == meta["muscles"]
        window = EMGReader(opened).window(1.0, 2.0)
    assert window.shape == (1000, 13)
    np.testing.assert_allclose(window.values[:, 0], meta["emg"][986:1986, 0] * 1e-6, rtol=1e-6)


def _cycle_profile(estimate: np.ndarray, rate: float, start: float, touchdown: np.ndarray) -> np.ndarray:
    """Mean over gait cycles of each channel, on 100 points from touchdown to the next touchdown."""
    t = start + np.arange(len(estimate)) / rate
    cycles = []
    for t0, t1 in zip(touchdown[:-1], touchdown[1:], strict=True):
        grid = np.linspace(t0, t1, 100, endpoint=False)
        cycles.append(np.column_stack([np.interp(grid, t, estimate[:, j]) for j in range(estimate.shape[1])]))
    return np.mean(cycles, axis=0)


@pytest.fixture(scope="module")
def treadmill_baselines(treadmill):
    """The low-pass (the fixed 10 Hz envelope users type by hand, `--lowpass-hz 10`: a known filter for the
    phase-response test) and Bayesian-filter estimates of the treadmill recording, and its model input."""
    path, _ = treadmill
    emg_input, handle = read(path, keep_open=True)
    opened, reader = handle
    try:
        estimates = baseline_estimates(reader.to_dataarray(), emg_input.binned, JobConfig(lowpass_cutoff_hz=10.0))
    finally:
        opened.close()
    return estimates, emg_input


def test_baseline_estimates_show_gait_physiology(treadmill, treadmill_baselines):
    path, meta = treadmill
    estimates, emg_input = treadmill_baselines
    for estimate in estimates:
        profile = _cycle_profile(estimate.data, emg_input.binned.bin_rate, emg_input.binned.starting_time,
                                 meta["touchdown"])
        peak = {m: int(np.argmax(profile[:, meta["muscles"].index(m)])) for m in meta["muscles"]}
        for muscle in PLANTARFLEXORS:
            assert 30 <= peak[muscle] <= 62, (estimate.method, muscle, peak)
        for muscle in HAMSTRINGS:
            assert peak[muscle] >= 75 or peak[muscle] <= 3, (estimate.method, muscle, peak)


def test_phase_response_on_real_gait(treadmill, treadmill_baselines, tmp_path):
    """The paper's phase-resolved analysis runs on a real recording, cycles from its touchdowns: the
    fixed low-pass filter has the same bandwidth in every phase, and the report gets its figure."""
    from nwb_lfads_emg.evaluate import evaluate_file
    from nwb_lfads_emg.writeback import SessionResults, write_into_copy

    path, meta = treadmill
    estimates, emg_input = treadmill_baselines
    b = emg_input.binned
    results = SessionResults(estimates=estimates, rate=b.bin_rate, starting_time=b.starting_time,
                             muscles=meta["muscles"], source_series_path="acquisition/EMG")
    out = write_into_copy(path, results, tmp_path / "annotated.nwb", validate=False)
    evaluate_file(out, cycles="gait_cycles", report_dir=tmp_path / "report")
    import pandas as pd

    table = pd.read_csv(tmp_path / "report" / "phase_response.csv")
    assert set(table["method"]) == {"LowPass", "BayesianFilter"}
    assert set(table["muscle"]) == set(meta["muscles"]) and table["phase_bin"].nunique() == 10
    # the fixed 10 Hz zero-phase filter: |H|^2 falls to 1/sqrt(2) at 8.95 Hz in every phase; with only six
    # cycles a few bins' fits are poor (measured: median 8.4 Hz, 3.8-11.7 Hz over 130 muscle-phase bins)
    bandwidth = table.loc[table["method"] == "LowPass", "bandwidth_hz"]
    assert abs(bandwidth.median() - 8.95) < 1.0
    assert np.mean(np.abs(bandwidth - 8.95) < 1.0) > 0.8
    png = tmp_path / "report" / "phase_response.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "Phase-resolved frequency response" in (tmp_path / "report" / "report.html").read_text()
