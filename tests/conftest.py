"""Shared fixtures: simulated sessions and the NWB files written from them (session-scoped, seeded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DANDI_NO_ET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_stream_cache(tmp_path_factory):
    """Keep the tests' streamed-bytes cache out of the user's ~/.cache."""
    os.environ["NWB_LFADS_EMG_CACHE_DIR"] = str(tmp_path_factory.mktemp("http-cache"))


@pytest.fixture(scope="session")
def small_session():
    """A 20 s, 8-muscle locomotion session at 2 kHz (seed 0)."""
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session

    return simulate_session(SimulationConfig(n_muscles=8, duration_s=20.0, seed=0))


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
