"""Shared fixtures: simulated sessions and the NWB files written from them (session-scoped, seeded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DANDI_NO_ET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One CPU core per test worker (`-n 2` on 2 cores): BLAS/OpenMP pools of 2 threads in each of two
    # workers would fight over the same cores; subprocesses (CLI runs, tutorials, Ray) inherit this.
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

# Tests that must run in one worker, one after another, under `pytest -n N --dist loadgroup`: the
# ones sharing the suite's one trained demo model (else every worker would train its own), and the
# ones starting Ray clusters (two at once on one machine would compete for its CPUs and ports).
# Every other test is its own unit of work. (xdist's `xdist_group` marker cannot do this under
# pytest 9: the node id it rewrites is read-only there.)
SERIAL_GROUPS = {
    "demo_model": ("tests/test_e2e.py::", "tests/test_lfads_accuracy.py::"),
    "ray": ("tests/test_pbt_local.py::", "tests/test_pbt_cluster.py::", "tests/test_pbt_multisession.py::",
            "tests/test_tutorials.py::test_04_", "tests/test_simulator_claim.py::"),
    "stitching_claim": ("tests/test_multisession.py::test_stitching_claim_",),  # one set of trained models
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadgroup`: xdist's scope scheduler, the scopes being SERIAL_GROUPS and single tests."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SerialGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for group, prefixes in SERIAL_GROUPS.items():
                if nodeid.startswith(prefixes):
                    return group
            return nodeid

    return SerialGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """`claim` tests train full-length models (minutes each): run only with NWB_LFADS_EMG_CLAIMS=1."""
    if os.environ.get("NWB_LFADS_EMG_CLAIMS") == "1":
        return
    skip = pytest.mark.skip(reason="a claim measured at full training length; set NWB_LFADS_EMG_CLAIMS=1 to run it")
    for item in items:
        if item.get_closest_marker("claim"):
            item.add_marker(skip)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_stream_cache(tmp_path_factory):
    """Keep the tests' streamed-bytes cache out of the user's ~/.cache."""
    os.environ["NWB_LFADS_EMG_CACHE_DIR"] = str(tmp_path_factory.mktemp("http-cache"))


@pytest.fixture(scope="session")
def small_session():
    """A 20 s, 8-muscle locomotion session at 2 kHz (seed 0)."""
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session

    return simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=20.0, seed=0))


@pytest.fixture(scope="session")
def small_nwb(small_session, tmp_path_factory) -> Path:
    """`small_session` written with an ElectricalSeries (Myomatrix-like layout)."""
    from nwb_lfads_emg.simulate import write_session_nwb

    return write_session_nwb(small_session, tmp_path_factory.mktemp("sim") / "electrical.nwb")


@pytest.fixture(scope="session")
def small_nwb_per_muscle(small_session, tmp_path_factory) -> Path:
    """`small_session` written as one timestamped TimeSeries per muscle (FALCON-like layout)."""
    from nwb_lfads_emg.simulate import write_session_nwb

    path = tmp_path_factory.mktemp("sim") / "per_muscle.nwb"
    return write_session_nwb(small_session, path, layout="per_muscle", timestamps=True)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of small real recordings beside the project (skips when absent, as on a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} is absent")
    return SHARED_DATA


# The regime of the accuracy claim: narrow, low EMG carrier band (see tests/test_lfads_accuracy.py).
ACCURACY_SIMULATION = dict(emg_model="carrier", n_muscles=8, duration_s=60.0, seed=0, carrier_band_hz=(15.0, 50.0))


@pytest.fixture(scope="session")
def accuracy_session():
    """The simulated session on which the accuracy claim is tested (60 s, 8 muscles, 15-50 Hz carrier)."""
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session

    return simulate_session(SimulationConfig(**ACCURACY_SIMULATION))


@pytest.fixture(scope="session")
def accuracy_nwb(accuracy_session, tmp_path_factory) -> Path:
    """`accuracy_session` as an NWB file (ElectricalSeries), the source of the trained demo model."""
    from nwb_lfads_emg.simulate import write_session_nwb

    return write_session_nwb(accuracy_session, tmp_path_factory.mktemp("accuracy") / "sub-sim_ses-acc.nwb")


@pytest.fixture(scope="session")
def demo_run(accuracy_nwb, tmp_path_factory) -> Path:
    """ONE demo-preset model trained through the pipeline on `accuracy_nwb` (1 torch thread, seed 0).

    Trained once per test session and shared by the accuracy and end-to-end tests (it is the
    suite's most expensive step, about 2 minutes of CPU).
    """
    import torch

    from nwb_lfads_emg.pipeline import JobConfig, fit, read

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("demo-run")
        emg_input, _ = read(accuracy_nwb)
        fit(emg_input, run, JobConfig(preset="demo", seed=0, device="cpu", progress=False))
    finally:
        torch.set_num_threads(threads)
    return run
