"""The tutorials in tutorials/ run from start to end in fast mode, as a user would run them.

Each tutorial runs as a script in a fresh interpreter (cwd = a temporary folder), with the fast
mode and the output folder set by environment variables; tutorial 2 streams its asset from the
local DANDI stand-in. Each file must also be a valid jupytext percent-format notebook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dandi_server import DandiServer

pytestmark = pytest.mark.slow

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NAMES = [
    "01_annotate_local_file",
    "02_stream_dandi_asset",
    "03_compare_methods",
    "04_scale_out_pbt_ray_gpu",
    "05_reuse_trained_model",
    "06_multisession",
]
METHODS = {"AutoLFADS", "LowPass", "BayesianFilter"}
FALCON_ASSET = "sub-MonkeyL-held-in-calib/sub-MonkeyL-held-in-calib_ses-20120924_behavior+ecephys.nwb"
TIMEOUT_S = 600


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
                "RAY_ADDRESS", "TUTORIAL_RAY_ADDRESS", "TUTORIAL_DANDI_ASSET", "DANDI_INSTANCE"):
        env.pop(var, None)
    env.update(
        NWB_LFADS_EMG_TUTORIAL_FAST="1",
        NWB_LFADS_EMG_TUTORIAL_OUT=str(tmp_path / "out"),
        NWB_LFADS_EMG_CACHE_DIR=str(tmp_path / "cache"),
        MPLBACKEND="Agg",
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        DANDI_NO_ET="1",
        NO_PROXY="127.0.0.1,localhost",
        # one torch thread: on a small, shared machine more threads only contend (10x slower)
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        **extra,
    )
    return env


def _run(name: str, tmp_path: Path, **extra: str) -> Path:
    """Run one tutorial script; return its output folder."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TUTORIALS / f"{name}.py")], cwd=work, env=_env(tmp_path, **extra),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    out = tmp_path / "out" / name
    assert out.is_dir()
    assert not (work / "tutorial_output").exists()  # everything went to the chosen folder
    return out


def _results(path: Path) -> dict[str, str]:
    """Names and NWB types of the objects in processing/ecephys, read with plain pynwb in a fresh
    interpreter that does not import nwb_lfads_emg (the file's cached schema suffices)."""
    code = (
        "import json, sys; from pynwb import NWBHDF5IO\n"
        "with NWBHDF5IO(sys.argv[1], 'r') as io:\n"
        "    m = io.read().processing['ecephys']\n"
        "    print(json.dumps({k: type(v).__name__ for k, v in m.data_interfaces.items()}))\n"
        "assert 'nwb_lfads_emg' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_annotated(path: Path) -> None:
    assert path.is_file(), path
    found = _results(path)
    assert {k for k, v in found.items() if v == "MuscleActivation"} == METHODS, found
    assert found.get("LatentFactors") == "LatentFactors" and "LFADSModelProvenance" in found, found


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000, path


@pytest.mark.parametrize("name", NAMES)
def test_tutorial_is_a_percent_notebook(name):
    text = (TUTORIALS / f"{name}.py").read_text()
    assert text.startswith("# %% [markdown]\n")
    first = text.split("\n# %%", 1)[0]
    assert "What you will see" in first and "How long it takes" in first and "fast mode" in first.lower()
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.reads(text, fmt="py:percent")
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown" and kinds.count("code") >= 3 and kinds.count("markdown") >= 3
    for cell in notebook.cells:  # every code cell is valid Python on its own
        if cell.cell_type == "code":
            compile(cell.source, f"{name}.py cell", "exec")


def test_tutorial_index_lists_all_in_order():
    index = (TUTORIALS / "README.md").read_text()
    positions = [index.find(f"{name}.py") for name in NAMES]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)


def test_01_annotate_local_file(tmp_path):
    out = _run("01_annotate_local_file", tmp_path)
    _assert_annotated(out / "session_annotated.nwb")
    _assert_png(out / "emg_and_estimates.png")
    assert (out / "run" / "job.json").is_file()


def test_02_stream_dandi_asset(tmp_path):
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

    session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=15.0, task="isometric", seed=3))
    source = write_session_nwb(session, tmp_path / "falcon_like.nwb", layout="per_muscle", timestamps=True)
    with DandiServer({"000941": {FALCON_ASSET: source}}) as server:
        out = _run("02_stream_dandi_asset", tmp_path, DANDI_INSTANCE=server.api_url,
                   TUTORIAL_DANDI_ASSET=f"DANDI:000941/{FALCON_ASSET}")
        assert server.bytes_served > 0
    derived = out / "derived_activation.nwb"
    _assert_annotated(derived)
    _assert_png(out / "streamed_estimates.png")
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(derived), "r") as io:
        nwbfile = io.read()
        provenance = nwbfile.processing["ecephys"]["LFADSModelProvenance"]
        assert "000941" in provenance.source_url
        assert provenance.source_series_path == "acquisition/preprocessed_emg"
        assert "preprocessed_emg" not in nwbfile.acquisition  # the raw EMG stays on the archive
        assert len(nwbfile.units) == 30


def test_03_compare_methods(tmp_path):
    out = _run("03_compare_methods", tmp_path)
    _assert_annotated(out / "session_annotated.nwb")
    for figure in ("decoding_r2.png", "decoded_angle.png", "report/traces.png", "report/r2_bars.png",
                   "report/phase_response.png", "report/smoothness.png"):
        _assert_png(out / figure)
    assert (out / "report" / "report.html").is_file()
    import pandas as pd

    table = pd.read_csv(out / "report" / "evaluation.csv")
    decoded = set(table.loc[table["analysis"] == "decode_linear", "method"])
    assert METHODS <= decoded


def test_04_scale_out_pbt_ray_gpu(tmp_path):
    out = _run("04_scale_out_pbt_ray_gpu", tmp_path)
    _assert_annotated(out / "session_single.nwb")
    run = out / "run_pbt"
    history = json.loads((run / "pbt_history.json").read_text())
    assert history.get("ray")
    _assert_png(run / "pbt_progress.png")
    assert (run / "best" / "model.pt").is_file()


def test_05_reuse_trained_model(tmp_path):
    out = _run("05_reuse_trained_model", tmp_path)
    annotated = out / "session_B_annotated.nwb"
    _assert_annotated(annotated)
    _assert_png(out / "session_b_estimates.png")
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(annotated), "r") as io:
        estimate = io.read().processing["ecephys"]["AutoLFADS"]
        assert json.loads(estimate.method_parameters)["trained_on"].endswith("session_A.nwb")
    assert not (out / "session_C_annotated.nwb").exists()


def test_06_multisession(tmp_path):
    from nwb_lfads_emg.simulate import write_session_nwb
    from nwb_lfads_emg.simulate_sessions import SessionSetConfig, simulate_sessions

    # the tutorial's dandiset, served by the local stand-in (the tutorial writes the same files locally)
    sims = simulate_sessions(SessionSetConfig(n_sessions=4, duration_s=10.0, seed=0))
    assets = {f"sub-rat1/sub-rat1_ses-{k}.nwb": write_session_nwb(s, tmp_path / f"s{k}.nwb") for k, s in enumerate(sims)}
    with DandiServer({"000999": assets}) as server:
        out = _run("06_multisession", tmp_path, DANDI_INSTANCE=server.api_url,
                   TUTORIAL_DANDISET="dandi://DANDI/000999@draft")
        assert server.bytes_served > 0
    for name in ("ses-0_annotated.nwb", "ses-4_annotated.nwb"):
        _assert_annotated(out / name)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(out / "ses-4_annotated.nwb"), "r") as io:
        multi = json.loads(io.read().processing["ecephys"]["LFADSModelProvenance"].config)["multisession"]
        assert multi["readin_readout"]["adapted"] and len(multi["training_sessions"]) == 4
        assert all("000999" in s["source_url"] for s in multi["training_sessions"])
    assert (out / "r2_vs_truth.csv").is_file()
