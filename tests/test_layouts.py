"""EMG as other people's converters write it, run through the whole CLI with default options.

Each file is written with pynwb the way a public converter writes it (their code read on GitHub):
- OpenCap-to-NWB (zoldello/opencap-to-nwb, nwb_writer.py): one 2-D `TimeSeries` "RawEMG" in
  acquisition, described as raw EMG, timestamps from the CSV, channel names in `comments`.
- A NeuroConv-based lab converter (Turner lab M1 MPTP, M1MPTPEMGInterface): one 1-D TimeSeries per
  muscle, `TimeSeriesEMG<Muscle>`, loose in acquisition, trials concatenated with 3 s gaps
  (per-trial `np.linspace` timestamps), "Data preprocessed (rectified and low-pass filtered)";
  a torque series on the same timestamps beside them.
- FALCON M1 (snel-repo/falcon-challenge, m1_reachgrasp_preprocv2.py + nwb_create_utils.py):
  `acquisition/preprocessed_emg` BehavioralTimeSeries of per-muscle TimeSeries (comments
  "columns=[name]", unit mV) on a 20 ms timestamp grid holding the envelope: zero-phase notch and
  65 Hz high-pass, rectified, clipped and scaled by quantiles, resampled to 50 Hz (resample_poly),
  rectified again, 10 Hz zero-phase low-pass; plus a boolean `eval_mask` series.
- NeuroConv recording interfaces (TDT EMG stream, es_key "ElectricalSeriesEMG", group
  "ElectrodeGroupEMG"): an int16 ElectricalSeries with a conversion factor and an electrodes table
  whose location is "unknown" (names in channel_name), next to a 384-channel Neuropixels LF series.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as sps

from nwb_lfads_emg.simulate import SimulationConfig, simulate_session

MUSCLES = ["biceps", "triceps long", "deltoid", "brachioradialis"]
TIMEOUT = 120


def _nwbfile(name: str):
    from pynwb import NWBFile
    from pynwb.file import Subject

    nwb = NWBFile(session_description=f"{name} layout", identifier=name,
                  session_start_time=datetime(2024, 5, 1, 12, tzinfo=timezone.utc))
    nwb.subject = Subject(subject_id="S1", species="Homo sapiens", sex="U", age="P30Y")
    return nwb


def _write(nwb, path: Path) -> Path:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.fixture(scope="module")
def raw_emg():
    """8 s of 4-muscle raw EMG at 1 kHz (volts) and its true activation."""
    s = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=len(MUSCLES), duration_s=8.0, emg_rate=1000.0, seed=3,
                                          n_units=4))
    return s


def opencap_file(path: Path, s) -> Path:
    from pynwb import TimeSeries

    nwb = _nwbfile("opencap")
    names = [f"emg_{m.replace(' ', '_')}_mV" for m in MUSCLES]
    times = np.round(np.arange(s.emg.shape[0]) / 1000.0, 3)  # as parsed from the CSV's time_s column
    nwb.add_acquisition(TimeSeries(
        name="RawEMG", data=s.emg * 1e3, unit="mV", timestamps=times,
        description="Raw EMG signals recorded during the movement trial. Timestamps are taken directly from the "
        "EMG file. No automatic synchronization, resampling, or time warping was applied.",
        comments=f"Rows are timepoints. Columns are EMG channels. Channels: {', '.join(names)}. "
        "Source file: EMGData/Squats_0_synthetic_raw_emg.csv."))
    behavior = nwb.create_processing_module("behavior", "OpenCap-derived pose and joint-angle data.")
    angles = s.behavior[:, :2]
    behavior.add(TimeSeries(name="OpenCapJointAngles", data=angles, unit="degrees",
                            timestamps=np.arange(angles.shape[0]) / s.behavior_rate,
                            description="Joint angle / coordinate time series parsed from an OpenCap/OpenSim-style "
                            "MOT file. Columns: hip_flexion_r, knee_angle_r."))
    return _write(nwb, path)


def envelope(emg: np.ndarray, rate: float, cutoff: float = 10.0) -> np.ndarray:
    sos = sps.butter(4, 20.0, "highpass", fs=rate, output="sos")
    rect = np.abs(sps.sosfiltfilt(sos, emg, axis=0))
    return sps.sosfiltfilt(sps.butter(4, cutoff, "lowpass", fs=rate, output="sos"), rect, axis=0)


TRIALS = [(0, 1450), (1500, 3050), (3200, 4700), (4800, 6250), (6400, 7950)]  # samples of the 1 kHz session


def turner_file(path: Path, s) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    from pynwb import TimeSeries

    nwb = _nwbfile("turner")
    env = envelope(s.emg, 1000.0)
    pieces, stamps, t = [], [], 0.0
    for a, b in TRIALS:  # concatenated timeline with a 3 s interval between trials, as the converter does
        n = b - a
        stamps.append(np.linspace(t, t + n / 1000.0, n))
        pieces.append(env[a:b])
        t += n / 1000.0 + 3.0
    data = np.concatenate(pieces)
    timestamps = np.concatenate(stamps)
    for k, muscle in enumerate(MUSCLES):
        camel = "".join(w.capitalize() for w in muscle.replace(".", "").split())
        nwb.add_acquisition(TimeSeries(
            name=f"TimeSeriesEMG{camel}", data=data[:, k], timestamps=timestamps, unit="a.u.",
            description=f"EMG signal from {muscle}. Recorded via chronically-implanted Teflon-insulated "
            "multistranded stainless steel wire electrode. Data preprocessed (rectified and low-pass filtered). "
            "Electrode placement verified post-surgically."))
    nwb.add_acquisition(TimeSeries(name="TimeSeriesElbowTorque", data=np.sin(timestamps), timestamps=timestamps,
                                   unit="arbitrary", description="Commands sent to torque controller during visuomotor task"))
    return _write(nwb, path), timestamps, stamps


def falcon_file(path: Path, s) -> tuple[Path, np.ndarray, np.ndarray]:
    from pynwb import TimeSeries
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.misc import Units

    nwb = _nwbfile("falcon")
    fs, target = 1000.0, 50
    x = s.emg.astype(np.float64)
    for f0 in (60, 180, 200, 300, 400):
        if f0 < fs / 2:
            b, a = sps.iirnotch(f0, f0 / 2, fs=fs)
            x = sps.filtfilt(b, a, x, axis=0)
    b, a = sps.butter(4, 65, "high", fs=fs)
    x = np.abs(sps.filtfilt(b, a, x, axis=0))
    clip = np.quantile(np.abs(x), 0.99)
    x = np.clip(x, -clip, clip)
    x = x / np.quantile(np.abs(x), 0.95)
    x = np.abs(sps.resample_poly(x, target, int(fs), axis=0))
    b, a = sps.butter(4, 10, "low", fs=target)
    env = sps.filtfilt(b, a, x, axis=0)
    t_new = (np.arange(0, env.shape[0]) / target).round(4)
    box = BehavioralTimeSeries(name="preprocessed_emg")
    for i, name in enumerate(MUSCLES):
        box.create_timeseries(name=name, data=env[:, i], unit="mV", timestamps=t_new, comments=f"columns=[{name}]")
    nwb.add_acquisition(box)
    nwb.add_acquisition(TimeSeries(name="eval_mask", description="Timesteps to KEEP covariates (for training, eval).",
                                   timestamps=t_new, data=np.ones(t_new.size, dtype=bool), unit="bool"))
    nwb.units = Units(name="units", description="Sampled at 30 kHz with anti-alias", resolution=1 / fs)
    for spikes in s.spike_times:
        nwb.units.add_unit(spike_times=spikes)
    return _write(nwb, path), env, t_new


def neuroconv_file(path: Path, s) -> Path:
    from pynwb.ecephys import ElectricalSeries

    nwb = _nwbfile("neuroconv")
    nwb.add_electrode_column("channel_name", "name of the channel")
    tdt = nwb.create_device(name="DeviceTDT", description="TDT recording system")
    group = nwb.create_electrode_group(name="ElectrodeGroupEMG", description="no description", location="unknown",
                                       device=tdt)
    for m in MUSCLES:
        nwb.add_electrode(location="unknown", group=group, channel_name=m)
    probe = nwb.create_device(name="NeuropixelsImec0", description="Neuropixels 1.0 probe")
    shank = nwb.create_electrode_group(name="Imec0", description="a group representing shank 0", location="unknown",
                                       device=probe)
    for k in range(384):
        nwb.add_electrode(location="unknown", group=shank, channel_name=f"LF{k}")
    conversion = 1e-6
    counts = np.round(s.emg / conversion).astype(np.int16)
    nwb.add_acquisition(ElectricalSeries(
        name="ElectricalSeriesEMG", description="Acquisition traces for the ElectricalSeriesEMG.", data=counts,
        electrodes=nwb.create_electrode_table_region(list(range(len(MUSCLES))), "EMG channels"),
        rate=1000.0, starting_time=0.0, conversion=conversion))
    rng = np.random.default_rng(1)
    lf = rng.integers(-300, 300, size=(2500, 384), dtype=np.int16)
    nwb.add_acquisition(ElectricalSeries(
        name="ElectricalSeriesLF", description="Acquisition traces for the ElectricalSeriesLF.", data=lf,
        electrodes=nwb.create_electrode_table_region(list(range(len(MUSCLES), len(MUSCLES) + 384)), "LF channels"),
        rate=2500.0, starting_time=0.0, conversion=2.34e-6))
    return _write(nwb, path)


# ----------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args: object, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "nwb_lfads_emg.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def run_default(src: Path, tmp: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """`run` with default options (tiny training); asserts success and that the input was not touched."""
    before = sha256(src)
    out = tmp / f"{src.stem}_annotated.nwb"
    done = cli("run", src, "--out", out, "--run-dir", tmp / f"run_{src.stem}", "--preset", "demo",
               "--max-epochs", "1", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sha256(src) == before, "the input file changed"
    import pynwb

    from nwb_lfads_emg import ndx  # noqa: F401 - registers the extension

    errors = pynwb.validate(path=str(out), use_cached_namespaces=True)
    assert not (errors[0] if isinstance(errors, tuple) else errors)
    return out, done


def results(out: Path) -> dict:
    from pynwb import NWBHDF5IO

    from nwb_lfads_emg import ndx  # noqa: F401

    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        mod = nwb.processing["ecephys"]
        got = {}
        for name in ("AutoLFADS", "LowPass", "BayesianFilter"):
            est = mod[name]
            got[name] = {"data": np.asarray(est.data[:]), "muscles": [str(m) for m in est.muscle_names[:]],
                         "timestamps": None if est.timestamps is None else np.asarray(est.timestamps[:]),
                         "rate": est.rate}
        prov = mod["LFADSModelProvenance"]
        got["preprocessing"] = json.loads(prov.preprocessing)
        got["source_series_path"] = prov.source_series_path
    return got


def no_start_transient(x: np.ndarray, n_start: int) -> None:
    """The first bins stay within the range of the rest (no filter start-up transient)."""
    head, rest = np.abs(x[:n_start]), np.abs(x[n_start:])
    assert np.all(head.max(axis=0) <= 2.0 * np.percentile(rest, 99.5, axis=0) + 1e-6), (
        head.max(axis=0), np.median(rest, axis=0))


# ----------------------------------------------------------------------------- the layouts


def test_opencap_raw_2d_timeseries(tmp_path: Path, raw_emg) -> None:
    src = opencap_file(tmp_path / "opencap.nwb", raw_emg)
    shown = cli("inspect", src)
    assert shown.returncode == 0, shown.stderr
    assert "acquisition/RawEMG [TimeSeries] 4 ch, 1000 Hz" in shown.stdout
    assert "muscles: emg_biceps_mV, emg_triceps_long_mV, emg_deltoid_mV, emg_brachioradialis_mV" in shown.stdout
    assert "input: raw, described as 'raw'" in shown.stdout
    assert "processing/behavior/OpenCapJointAngles" in shown.stdout
    out, _ = run_default(src, tmp_path)
    got = results(out)
    pre = got["preprocessing"]
    assert pre["input_decision"]["kind"] == "raw" and pre["highpass_hz"] == 20.0 and pre["bin_ms"] == 5.0
    assert got["AutoLFADS"]["data"].shape == (raw_emg.emg.shape[0] // 5, 4)
    # timestamps kept: every bin starts on an input timestamp
    stamps = np.round(np.arange(raw_emg.emg.shape[0]) / 1000.0, 3)
    np.testing.assert_array_equal(got["AutoLFADS"]["timestamps"], stamps[::5][: got["AutoLFADS"]["data"].shape[0]])


def test_turner_per_muscle_series_with_trial_gaps(tmp_path: Path, raw_emg) -> None:
    src, stamps, per_trial = turner_file(tmp_path / "turner.nwb", raw_emg)
    shown = cli("inspect", src)
    assert shown.returncode == 0, shown.stderr
    assert ("acquisition/TimeSeriesEMG* [per_muscle] 4 ch" in shown.stdout
            and "muscles: Biceps, Brachioradialis, Deltoid, TricepsLong" in shown.stdout), shown.stdout  # HDF5 order
    assert "999.31 Hz" in shown.stdout.split("Units")[0]  # the sampling rate (linspace per trial), not diluted by the gaps
    assert "input: envelope, described as 'preprocess'" in shown.stdout
    assert "acquisition/TimeSeriesElbowTorque" in shown.stdout.split("EMG candidates")[1].split("Units")[1]
    out, _ = run_default(src, tmp_path)
    got = results(out)
    pre = got["preprocessing"]
    assert pre["input_decision"]["kind"] == "envelope" and pre["highpass_hz"] is None and not pre["rectify"]
    assert pre["time_base"] == "input timestamps" and len(pre["segments"]) == len(TRIALS)
    assert got["source_series_path"] == "acquisition/TimeSeriesEMG*"
    # one estimate per 5 ms bin of each trial, written on the trial's own timestamps (none in the gaps)
    expected = np.concatenate([t[: (t.size // 5) * 5: 5] for t in per_trial])
    for method in ("AutoLFADS", "LowPass", "BayesianFilter"):
        np.testing.assert_array_equal(got[method]["timestamps"], expected)
        assert np.all(np.isfinite(got[method]["data"]))
    # the low-pass baseline restarts in each trial: no transient at any trial start
    for a, b in pre["segments"]:
        no_start_transient(got["LowPass"]["data"][a:b], 10)


def test_falcon_envelope_is_the_model_input(tmp_path: Path, raw_emg) -> None:
    from nwb_lfads_emg.pipeline import read

    src, env, t_new = falcon_file(tmp_path / "sub-MonkeyL_ses-falcon.nwb", raw_emg)
    shown = cli("inspect", src)
    assert shown.returncode == 0, shown.stderr
    assert "acquisition/preprocessed_emg [per_muscle] 4 ch, 50 Hz" in shown.stdout
    assert "input: envelope, sampled at 50 Hz" in shown.stdout and "bins 20 ms" in shown.stdout
    assert "acquisition/eval_mask [TimeSeries]" in shown.stdout
    # the model's input is the envelope itself: only clipped, normalised and floored, bin = sample
    emg_input, _ = read(src)
    b = emg_input.binned
    assert b.decision.kind == "envelope" and b.bin_rate == 50.0 and b.bin_samples == 1
    order = [MUSCLES.index(m) for m in emg_input.muscles]
    expected = np.maximum(np.minimum(env[:, order], b.clip) / b.scale, b.config.positive_floor)
    np.testing.assert_allclose(b.data, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(b.bin_times, t_new)
    out, _ = run_default(src, tmp_path)
    got = results(out)
    assert got["preprocessing"]["bin_rate"] == 50.0 and got["preprocessing"]["input_decision"]["bin_ms"] == 20.0
    np.testing.assert_array_equal(got["AutoLFADS"]["timestamps"], t_new)
    # the baselines have no start transient (no high-pass of the envelope's DC)
    for method in ("LowPass", "BayesianFilter"):
        no_start_transient(got[method]["data"], 25)


def test_neuroconv_electrical_series_beside_neuropixels_lf(tmp_path: Path, raw_emg) -> None:
    src = neuroconv_file(tmp_path / "neuroconv.nwb", raw_emg)
    shown = cli("inspect", src)
    assert shown.returncode == 0, shown.stderr
    emg_part, rest = shown.stdout.split("Units:")
    assert "acquisition/ElectricalSeriesEMG [ElectricalSeries] 4 ch, 1000 Hz" in emg_part
    assert "muscles: biceps, triceps long, deltoid, brachioradialis" in emg_part
    assert "ElectricalSeriesLF" not in emg_part
    assert "acquisition/ElectricalSeriesLF [ElectricalSeries] shape (2500, 384), 2500 Hz" in rest
    out, _ = run_default(src, tmp_path)
    got = results(out)
    assert got["AutoLFADS"]["muscles"] == MUSCLES and got["AutoLFADS"]["timestamps"] is None
    assert got["preprocessing"]["input_decision"]["kind"] == "raw"


# ----------------------------------------------------------------------------- choosing with --emg


def test_emg_names_paths_globs_and_lists(tmp_path: Path, raw_emg, caplog: pytest.LogCaptureFixture) -> None:
    from nwb_lfads_emg.errors import EMGDataError
    from nwb_lfads_emg.sources import EMGReader, open_source

    src, _, _ = turner_file(tmp_path / "turner.nwb", raw_emg)
    lf = neuroconv_file(tmp_path / "neuroconv.nwb", raw_emg)
    with open_source(src) as opened:
        assert EMGReader(opened, "TimeSeriesEMG*").muscles == ["Biceps", "Brachioradialis", "Deltoid", "TricepsLong"]
        two = EMGReader(opened, "TimeSeriesEMGBiceps, acquisition/TimeSeriesEMGDeltoid")
        assert two.muscles == ["Biceps", "Deltoid"] and len(two.segments) == len(TRIALS)
        with caplog.at_level("WARNING", logger="nwb_lfads_emg"):
            torque = EMGReader(opened, "TimeSeriesElbowTorque")
        assert torque.muscles == ["TimeSeriesElbowTorque"]
        assert "says EMG/muscle; using it because --emg names it" in caplog.text
        with pytest.raises(EMGDataError, match=r"turner\.nwb: Nothing\*: no EMG-like series by this name"):
            EMGReader(opened, "Nothing*")
    with open_source(lf) as opened:
        chosen = EMGReader(opened, "ElectricalSeriesLF", check_dead=False)  # any (time, channels) series
        assert len(chosen.muscles) == 384 and chosen.rate == 2500.0


def test_cli_flags_errors_and_zarr(tmp_path: Path, raw_emg) -> None:
    src, _, _ = falcon_file(tmp_path / "falcon.nwb", raw_emg)
    # a bin shorter than a sample names --bin-ms; a low-pass cutoff above Nyquist names --lowpass-hz
    done = cli("fit", src, "--run-dir", tmp_path / "r1", "--bin-ms", "5", "--quiet")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--bin-ms 5: shorter than one sample of the input (20 ms at 50 Hz); use --bin-ms 20" in done.stderr
    done = cli("run", src, "--out", tmp_path / "o.nwb", "--run-dir", tmp_path / "r2", "--quiet", "--lowpass-hz", "30")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--lowpass-hz 30: must lie in (0, 25) Hz for input sampled at 50 Hz" in done.stderr
    assert not (tmp_path / "r2").exists()  # refused before any training
    # a Zarr store is refused in one line that says why
    store = tmp_path / "session.nwb.zarr"
    store.mkdir()
    (store / ".zgroup").write_text('{"zarr_format": 2}')
    done = cli("inspect", store)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "NWB stored as Zarr (found .zgroup)" in done.stderr and "hdmf-zarr" in done.stderr


def test_offline_dandi_is_one_line(tmp_path: Path) -> None:
    """A refused DANDI instance: one line on the terminal, dandi's retries and tracebacks in the log."""
    log = tmp_path / "run.log"
    env_extra = {"DANDI_INSTANCE": "http://127.0.0.1:9/api", "NWB_LFADS_EMG_LOG": str(log)}
    done = subprocess.run([sys.executable, "-m", "nwb_lfads_emg.cli", "inspect", "DANDI:000941/sub-x/sub-x.nwb"],
                          capture_output=True, text=True, timeout=TIMEOUT, env=dict(os.environ, **env_extra))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: DANDI:000941/sub-x/sub-x.nwb: ")
    assert "Traceback" not in done.stderr
    assert "127.0.0.1" in log.read_text()


def test_input_decision_rules() -> None:
    """`--input auto`: rate, words and signs decide; the errors name the flag to change."""
    from nwb_lfads_emg.errors import EMGDataError
    from nwb_lfads_emg.preprocess import PreprocessConfig, decide_input, preprocess, resolved_config

    rng = np.random.default_rng(0)
    signed, positive = rng.normal(size=(4000, 2)), np.abs(rng.normal(size=(4000, 2)))
    auto = PreprocessConfig()
    assert decide_input(50.0, auto).kind == "envelope" and decide_input(50.0, auto).bin_ms == 20.0
    assert decide_input(2000.0, auto, ["acquisition/EMG", "Raw EMG"], positive).kind == "raw"
    assert decide_input(2000.0, auto, ["rectified and low-pass filtered"], signed).kind == "envelope"
    assert decide_input(2000.0, auto, ["acquisition/EMG"], positive).kind == "envelope"
    raw = decide_input(2000.0, auto, ["acquisition/EMG"], signed)
    assert raw.kind == "raw" and raw.bin_ms == 5.0 and raw.bin_rule == "default"
    forced = decide_input(50.0, PreprocessConfig(input="raw", bin_ms=40.0))
    assert (forced.kind, forced.reasons, forced.bin_ms, forced.bin_rule) == ("raw", ["--input raw"], 40.0, "--bin-ms")
    env = resolved_config(auto, decide_input(50.0, auto))
    assert env.highpass_hz is None and env.notch_hz is None and not env.rectify and env.bin_ms == 20.0
    with pytest.raises(EMGDataError, match=r"high-pass at 20 Hz is outside \(0, 15\) Hz .* pass --input envelope"):
        preprocess(positive, 30.0, PreprocessConfig(bin_ms=100.0))
    with pytest.raises(EMGDataError, match="--bin-ms 5: shorter than one sample"):
        decide_input(50.0, PreprocessConfig(bin_ms=5.0))
    with pytest.raises(EMGDataError, match="--input wavelet: must be one of auto, raw, envelope"):
        decide_input(50.0, PreprocessConfig(input="wavelet"))
