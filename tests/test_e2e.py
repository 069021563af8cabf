"""End to end: CLI and Python API from a simulator file (local and through the local DANDI server)
to an annotated NWB file that plain pynwb opens, that validates, and whose AutoLFADS estimate beats
both baselines against the ground truth."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dandi_server import dandi_server  # noqa: F401  (pytest fixture)
from pynwb import NWBHDF5IO, validate

from nwb_lfads_emg.cli import main
from nwb_lfads_emg.metrics import r2_affine
from nwb_lfads_emg.simulate import (
    true_activation_binned,
)

pytestmark = pytest.mark.slow

METHODS = ("AutoLFADS", "LowPass", "BayesianFilter")


@pytest.fixture(scope="module")
def session(accuracy_session):
    return accuracy_session


@pytest.fixture(scope="module")
def source(accuracy_nwb) -> Path:
    return accuracy_nwb


@pytest.fixture(scope="module")
def run_dir(demo_run) -> Path:
    """The demo-preset model trained once for the suite (conftest.demo_run)."""
    return demo_run


def _plain_pynwb_summary(path: Path) -> str:
    """Open the file in a fresh interpreter that never imports nwb_lfads_emg (cached namespaces only)."""
    code = (
        "import sys; from pynwb import NWBHDF5IO\n"
        "with NWBHDF5IO(sys.argv[1], 'r') as io:\n"
        "    m = io.read().processing['ecephys']\n"
        "    print(sorted((k, type(v).__name__, v.data.shape) for k, v in m.data_interfaces.items()\n"
        "                 if hasattr(v, 'data')))\n"
        "    assert 'nwb_lfads_emg' not in sys.modules\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True,
                          text=True).stdout


def _estimates(path: Path) -> dict[str, tuple[np.ndarray, float, float]]:
    with NWBHDF5IO(str(path), "r") as io:
        module = io.read().processing["ecephys"]
        return {m: (module[m].data[:], module[m].rate, module[m].starting_time) for m in METHODS}


def test_annotate_local_file_beats_baselines(source, run_dir, session, tmp_path, capsys):
    out = tmp_path / "annotated.nwb"
    assert main(["annotate", str(source), "--run-dir", str(run_dir), "--out", str(out)]) == 0
    assert validate(path=str(out), use_cached_namespaces=True) == []
    summary = _plain_pynwb_summary(out)
    for method in METHODS:
        assert f"('{method}', 'MuscleActivation'" in summary
    assert "LatentFactors" in summary
    estimates = _estimates(out)
    n_bins = 60.0 * 200
    scores = {}
    for method, (data, rate, start) in estimates.items():
        assert data.shape == (n_bins, 8) and rate == 200.0 and start == 0.0
        truth = true_activation_binned(session, rate)
        scores[method] = float(r2_affine(data, truth[: len(data)]).mean())
    print("R2 vs truth:", scores)
    assert scores["AutoLFADS"] > scores["LowPass"] + 0.01, scores
    assert scores["AutoLFADS"] > scores["BayesianFilter"] + 0.01, scores


def test_annotate_dandi_asset_writes_shareable_copy(dandi_server, source, run_dir, tmp_path):  # noqa: F811
    asset = "sub-sim/sub-sim_ses-e2e.nwb"
    server = dandi_server({"000999": {asset: source}})
    out = tmp_path / "derived.nwb"
    ref = f"dandi://DANDI/000999@draft/{asset}"
    assert main(["annotate", ref, "--run-dir", str(run_dir), "--out", str(out)]) == 0
    assert server.bytes_served > 0
    assert validate(path=str(out), use_cached_namespaces=True) == []
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        module = nwb.processing["ecephys"]
        provenance = module["LFADSModelProvenance"].as_dict()
        assert provenance["source_series_path"] == "acquisition/EMG"  # where the model's training data came from
        assert provenance["source_file_identifier"] and len(provenance["weights_sha256"]) == 64
        inputs = json.loads(module["AutoLFADS"].method_parameters)  # where the annotated EMG came from
        assert "000999" in inputs["input_url"] and inputs["input_series_path"] == "acquisition/EMG"
        assert nwb.session_id == "sim-locomotion-seed0" and len(nwb.units) == 30
    local = tmp_path / "local.nwb"
    assert main(["annotate", str(source), "--run-dir", str(run_dir), "--out", str(local)]) == 0
    remote_estimates, local_estimates = _estimates(out), _estimates(local)
    for method in METHODS:  # streamed and local inputs give the same estimates
        np.testing.assert_allclose(remote_estimates[method][0], local_estimates[method][0], rtol=1e-5, atol=1e-6)
    assert main(["annotate", ref, "--run-dir", str(run_dir), "--in-place"]) == 2


def test_cli_run_in_place_then_refuses_second_run(source, tmp_path, capsys):
    target = tmp_path / "session.nwb"
    shutil.copyfile(source, target)
    args = ["run", str(target), "--emg", "EMG", "--in-place", "--max-epochs", "2", "--quiet",
            "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0
    assert validate(path=str(target), use_cached_namespaces=True) == []
    before = target.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds results" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == before


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    junk = tmp_path / "notes.nwb"
    junk.write_text("not an HDF5 file")
    assert main(["inspect", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(junk) in err and len(err.splitlines()) == 1
    assert main(["annotate", str(junk), "--run-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o.nwb")]) == 2
    assert "no trained model" in capsys.readouterr().err


def test_annotate_uses_the_callers_preprocessing(source, run_dir, tmp_path):
    """A job given to `annotate` is used as given (its preprocessing is not replaced by the recorded one):
    10 ms bins do not fit a model trained on 5 ms bins, and that is said before anything is written."""
    from nwb_lfads_emg.errors import TrainingError
    from nwb_lfads_emg.pipeline import JobConfig, annotate
    from nwb_lfads_emg.preprocess import PreprocessConfig

    out = tmp_path / "never.nwb"
    job = JobConfig(device="cpu", progress=False, preprocess=PreprocessConfig(bin_ms=10.0))
    with pytest.raises(TrainingError, match=r"bin rate 100(\.0)? Hz differs from the model's 200(\.0)? Hz"):
        annotate(source, run_dir, out=out, job=job)
    assert not out.exists()
