"""The paper's analyses against known answers: a Butterworth low-pass's phase-resolved gain, the truth's
wider band at sharp burst onsets, a 10 Hz tremor found, coherent with force and carrying it, and the
smoothness control of the cortex correlation; the report's sections and the CLI flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.signal as sps

from nwb_lfads_emg.analyses.oscillations import oscillations
from nwb_lfads_emg.analyses.phase_response import cycle_profile, onset_offset, phase_response
from nwb_lfads_emg.baselines import bayes_filter, lowpass_envelope
from nwb_lfads_emg.cli import main
from nwb_lfads_emg.preprocess import PreprocessConfig, bin_like, bin_to, preprocess, rectify_highpass
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb
from nwb_lfads_emg.writeback import ActivationEstimate, SessionResults, write_into_copy

RATE = 200.0


def _annotate(session, source, out, cutoff_hz: float = 10.0):
    """Write the low-pass (at `cutoff_hz`) and Bayesian-filter baselines into a copy of `source`."""
    b = preprocess(session.emg, session.emg_rate, PreprocessConfig())
    rect = rectify_highpass(session.emg, session.emg_rate)
    lp = bin_to(lowpass_envelope(rect, session.emg_rate, cutoff_hz), session.emg_rate, b) / b.scale
    bf = bin_to(bayes_filter(rect, session.emg_rate), session.emg_rate, b) / b.scale
    results = SessionResults(
        estimates=[ActivationEstimate("LowPass", lp.astype("float32")),
                   ActivationEstimate("BayesianFilter", bf.astype("float32"))],
        rate=b.bin_rate, starting_time=b.starting_time, muscles=session.muscle_names,
        source_series_path="acquisition/EMG",
    )
    return write_into_copy(source, results, out, validate=False)


@pytest.fixture(scope="module")
def gait_report(small_session, small_nwb, tmp_path_factory):
    """`evaluate --cycles gait_cycles --report` (the CLI) on the small simulated session with baselines."""
    tmp = tmp_path_factory.mktemp("gait")
    out = _annotate(small_session, small_nwb, tmp / "annotated.nwb")
    assert main(["evaluate", str(out), "--cycles", "gait_cycles", "--report", str(tmp / "report"),
                 "--quiet"]) == 0
    return tmp / "report", out


def test_simulator_writes_cycles_and_holds(small_nwb, small_session, tmp_path):
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(small_nwb), "r") as io:
        cycles = io.read().intervals["gait_cycles"].to_dataframe()
    np.testing.assert_allclose(cycles[["start_time", "stop_time"]].to_numpy(), small_session.intervals)
    duration = cycles["stop_time"] - cycles["start_time"]
    assert 0.5 < duration.median() < 1.2  # 1.2 Hz strides with drift
    stance = (cycles["liftoff_time"] - cycles["start_time"]) / duration
    np.testing.assert_allclose(stance, 0.6)
    iso = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=4, duration_s=12.0, task="isometric", seed=3))
    path = write_session_nwb(iso, tmp_path / "iso.nwb")
    with NWBHDF5IO(str(path), "r") as io:
        holds = io.read().intervals["holds"].to_dataframe()
    assert len(holds) >= 3 and ((holds["stop_time"] - holds["start_time"]) >= 1.0).all()
    # during a hold the force target is constant: the force settles there (twitch tau 40 ms)
    t = np.arange(iso.behavior.shape[0]) / iso.behavior_rate
    h0, h1 = holds.iloc[0]
    inside = (t > h0 + 0.3) & (t < h1)
    assert np.ptp(iso.behavior[inside], axis=0).max() < 0.25 * np.ptp(iso.behavior, axis=0).max()


def test_lowpass_gain_matches_butterworth_at_every_phase(gait_report):
    """A fixed zero-phase Butterworth (order 4, 10 Hz) is recovered at every phase: its response is
    |H(f)|^2 of the one-way filter. Tolerance 0.05 in gain up to Nyquist (measured max 0.01), bandwidth
    8.95 Hz (where |H|^2 = 1/sqrt(2)) within 0.2 Hz in every muscle and phase bin."""
    report, _ = gait_report
    gains = pd.read_csv(report / "phase_response_gains.csv")
    lp = gains[gains["method"] == "LowPass"]
    f = np.sort(lp["freq_hz"].unique())
    _, h = sps.sosfreqz(sps.butter(4, 10.0, fs=2000.0, output="sos"), worN=f, fs=2000.0)
    expected = pd.Series(np.abs(h) ** 2, index=f)
    err = np.abs(lp["gain"].to_numpy() - expected.loc[lp["freq_hz"]].to_numpy())
    assert lp.groupby(["muscle", "phase_bin"]).ngroups == 8 * 10
    assert err.max() < 0.05, err.max()
    summary = pd.read_csv(report / "phase_response.csv")
    bw = summary.loc[summary["method"] == "LowPass", "bandwidth_hz"]
    assert len(bw) == 80 and np.all(np.abs(bw - 8.95) < 0.2), bw.describe()
    assert (summary.loc[summary["method"] == "LowPass", "r2"] > 0.999).all()
    # the Bayesian filter is no fixed filter: its bandwidth varies over the cycle
    bayes = summary[summary["method"] == "BayesianFilter"].groupby("phase_bin")["bandwidth_hz"].median()
    assert bayes.max() - bayes.min() > 2.0


def test_truth_is_wider_band_at_sharp_onsets():
    """The simulator's bursts rise sharply and fall slowly: the ideal (truth) filter of the rectified EMG
    passes a wider band at each muscle's burst onset than at its offset (60 s; measured medians
    24.2 vs 2.7 Hz for seed 0, 10.3 vs 3.0 Hz for seed 1)."""
    s = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=60.0, seed=0))
    n = int(s.duration_s * RATE)
    rect = rectify_highpass(s.emg, s.emg_rate)
    reference = bin_like(lowpass_envelope(rect, s.emg_rate, 0.4 * RATE), s.emg_rate, RATE, n)
    truth = bin_like(s.activation, s.emg_rate, RATE, n)
    summary, _ = phase_response({"truth": truth}, reference, RATE, s.intervals, muscle_names=s.muscle_names)
    onoff = onset_offset(summary, cycle_profile(reference, RATE, 0.0, s.intervals, 10), s.muscle_names)
    assert len(onoff) == 8
    on, off = onoff["bandwidth_onset_hz"], onoff["bandwidth_offset_hz"]
    assert on.median() > 2.0 * off.median(), onoff
    assert (on > off).mean() >= 0.6


def _isometric(tremor: float):
    s = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=40.0, task="isometric", seed=0,
                                          tremor_amplitude=tremor))
    n = int(s.duration_s * RATE)
    rect = rectify_highpass(s.emg, s.emg_rate)
    est = {"truth": bin_like(s.activation, s.emg_rate, RATE, n)}
    for c in (4.0, 20.0):
        est[f"LowPass_{c:g}hz"] = bin_like(lowpass_envelope(rect, s.emg_rate, c), s.emg_rate, RATE, n)
    force = bin_like(s.behavior, s.behavior_rate, RATE, n)
    return s, est, force


def test_tremor_is_found_coherent_with_force_and_carries_it():
    """10 Hz tremor during holds (amplitude 0.2): a peak at 10 +- 1 Hz in the truth and in the 20 Hz
    envelope that keeps it, not in the 4 Hz envelope that removes it; notching 8-12 Hz lowers the force
    R^2 of those that keep it (measured: truth 0.77 -> 0.31, envelope 0.57 -> 0.0)."""
    s, est, force = _isometric(0.2)
    table, spectra = oscillations(est, RATE, s.intervals, force)
    table = table.set_index("method")
    for keeps in ("truth", "LowPass_20hz"):
        assert abs(table.loc[keeps, "peak_hz"] - 10.0) <= 1.0, table
        assert table.loc[keeps, "r2_notched"] < table.loc[keeps, "r2_intact"] - 0.1, table
        assert table.loc[keeps, "coherence_at_peak"] > 0.3, table
    assert (table["band_lo_hz"] == 8.0).all() and (table["band_hi_hz"] == 12.0).all()
    assert not np.isfinite(table.loc["LowPass_4hz", "peak_hz"])
    assert set(spectra["method"]) == set(est)


def test_no_tremor_no_peak():
    s, est, force = _isometric(0.0)
    table, _ = oscillations(est, RATE, s.intervals, force)
    assert table["peak_hz"].isna().all(), table
    assert table["r2_intact"].isna().all()  # no band to ablate


def test_smoothness_control_and_report(gait_report):
    """from_spikes beside low-pass envelopes at several cutoffs and the truth; the 10 Hz envelope is the
    LowPass method itself (computed from the rectified reference instead of the raw EMG)."""
    report, _ = gait_report
    sm = pd.read_csv(report / "smoothness.csv").set_index("series")
    env = sm[sm["kind"] == "envelope"]
    assert list(env["cutoff_hz"]) == [1.0, 2.0, 5.0, 10.0, 20.0]
    assert {"LowPass", "BayesianFilter", "truth"} <= set(sm.index)
    assert abs(sm.loc["envelope 10 Hz", "from_spikes"] - sm.loc["LowPass", "from_spikes"]) < 0.03
    assert abs(sm.loc["envelope 10 Hz", "vs_truth"] - sm.loc["LowPass", "vs_truth"]) < 0.03
    assert sm.loc["truth", "vs_truth"] > 0.999
    # smoother envelopes have lower bandwidth, and the smoothest is far from the truth
    assert env["bandwidth_hz"].is_monotonic_increasing
    assert env.loc["envelope 1 Hz", "vs_truth"] < 0.5
    page = (report / "report.html").read_text()
    for title in ("Phase-resolved frequency response", "Cortex correlation controlled for smoothness"):
        assert title in page
    assert page.count("What to look for") == 2
    for png in ("phase_response.png", "smoothness.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_holds_through_the_file(tmp_path, capsys):
    """`evaluate --behavior force --holds holds` on a simulated isometric file with strong tremor."""
    s = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=4, duration_s=16.0, task="isometric", seed=1,
                                          tremor_amplitude=0.2, n_units=0))
    src = write_session_nwb(s, tmp_path / "iso.nwb")
    out = _annotate(s, src, tmp_path / "iso_annotated.nwb", cutoff_hz=20.0)
    assert main(["evaluate", str(out), "--behavior", "force", "--holds", "holds", "--report",
                 str(tmp_path / "report"), "--quiet"]) == 0
    assert "oscillations:" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "report" / "oscillations.csv").set_index("method")
    assert abs(table.loc["truth", "peak_hz"] - 10.0) <= 1.0
    assert "Oscillations that carry force" in (tmp_path / "report" / "report.html").read_text()


def test_bad_analysis_arguments_are_one_line_errors(gait_report, capsys):
    _, annotated = gait_report
    assert main(["evaluate", str(annotated), "--cycles", "strides"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "intervals/strides" in err and "--cycles" in err and str(annotated) in err
    assert main(["evaluate", str(annotated), "--holds", "gait_cycles"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--behavior" in err
    assert main(["evaluate", str(annotated), "--cycles-from", "nope"]) == 2
    assert "--cycles-from" in capsys.readouterr().err
    assert main(["evaluate", str(annotated), "--cycles", "gait_cycles", "--phase-bins", "1"]) == 2
    assert "--phase-bins" in capsys.readouterr().err


def test_one_colour_per_method():
    from nwb_lfads_emg.colors import METHOD_COLORS, method_color

    assert method_color("AutoLFADS") == METHOD_COLORS["AutoLFADS"]
    assert method_color("LowPass_20hz") == method_color("LowPass")
    assert method_color("SomeNewMethod") == method_color("SomeNewMethod")
    assert len({method_color(m) for m in ("AutoLFADS", "LowPass", "LowPassOracle", "BayesianFilter", "truth",
                                          "rectified")}) == 6


def test_cycles_from_a_rhythmic_series():
    """--cycles-from: cycles from the Hilbert phase of a behavioural series (a 1.25 Hz oscillation with
    slow drift and noise): one cycle per period, from one peak of the oscillation to the next."""
    from nwb_lfads_emg.analyses import cycles_from_series

    rate = 100.0
    t = np.arange(0, 40, 1 / rate)
    rng = np.random.default_rng(0)
    angle = 0.8 * np.sin(2 * np.pi * 1.25 * t) + 0.2 * np.sin(2 * np.pi * 0.05 * t) + 0.05 * rng.normal(size=t.size)
    cycles = cycles_from_series(angle[:, None], rate, start=3.0)
    assert 46 <= len(cycles) <= 50
    np.testing.assert_allclose(np.median(cycles[:, 1] - cycles[:, 0]), 0.8, atol=0.02)
    # starts at the peaks of sin(2 pi f t): (t - 3 s) a quarter period past a multiple of 0.8 s, within 40 ms
    offset = ((cycles[:, 0] - 3.0 - 0.2) / 0.8) % 1.0
    assert np.all(np.minimum(offset, 1 - offset) * 0.8 < 0.04)
