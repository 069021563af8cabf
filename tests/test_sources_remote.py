"""Streaming through a local DANDI stand-in (real dandi client, real HTTP Range/206, real pynwb files)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from dandi_server import dandi_server  # noqa: F401  (pytest fixture)
from test_sources import noise, write_nwb

from nwb_lfads_emg.errors import SourceError
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb
from nwb_lfads_emg.sources import EMGReader, inspect_source, open_source

DS = "000941"
ASSET = "sub-MonkeyX/sub-MonkeyX_ses-big_ecephys.nwb"
SMALL = "sub-Rat1/sub-Rat1_ses-sim.nwb"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A large Myomatrix-like file (32 ch x 2 kHz x 180 s float32, 1 s chunks) and a simulated one."""
    d = tmp_path_factory.mktemp("remote")
    muscles = [f"M{k:02d}" for k in range(32)]
    big = write_nwb(d / "big.nwb", electrical=noise(360_000, 32, 7), muscles=muscles, rate=2000.0, chunks=(2000, 32))
    session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=4, duration_s=8.0, n_units=4, seed=1))
    small = write_session_nwb(session, d / "sim.nwb", layout="per_muscle", timestamps=True)
    return {"big": big, "small": small}


def _local_window(path: Path, t0: float, t1: float):
    with open_source(path) as opened:
        return EMGReader(opened).window(t0, t1)


def test_window_streams_a_small_fraction_and_cache_makes_rereads_free(dandi_server, files, tmp_path: Path) -> None:  # noqa: F811
    srv = dandi_server({DS: {ASSET: files["big"], SMALL: files["small"]}})
    size = files["big"].stat().st_size
    cache = tmp_path / "cache"
    ref = f"dandi://DANDI/{DS}@draft/{ASSET}"
    with open_source(ref, cache_dir=cache) as opened:
        assert opened.dandi_url == f"{srv.api_url}/dandisets/{DS}/versions/draft/assets/{srv.asset_id(DS, ASSET)}/"
        assert opened.location == srv.blob_url(DS, ASSET)  # redirect followed, signature query stripped
        reader = EMGReader(opened)
        opening = srv.bytes_served
        remote = reader.window(40.0, 41.0, muscles=["M03", "M17"])
    first = srv.bytes_served
    chunk_bytes = 2000 * 32 * 4  # the one HDF5 chunk holding [40 s, 41 s)
    assert all(r.startswith("bytes=") for r in srv.range_requests)
    assert 0 < first < 0.10 * size, (first, size)  # open + dead-channel probe + window
    assert first - opening < 4 * chunk_bytes, (first - opening, chunk_bytes)
    local = _local_window(files["big"], 40.0, 41.0).sel(muscle=["M03", "M17"])
    np.testing.assert_array_equal(remote.values, local.values)
    np.testing.assert_array_equal(remote.time.values, local.time.values)
    assert list(remote.muscle.values) == ["M03", "M17"]

    srv.reset_counts()
    with open_source(ref, cache_dir=cache) as opened:
        again = EMGReader(opened).window(40.0, 41.0, muscles=["M03", "M17"])
    assert srv.bytes_served == 0 and srv.range_requests == []
    np.testing.assert_array_equal(again.values, remote.values)


def test_every_reference_form_reaches_the_same_asset(dandi_server, files, tmp_path: Path) -> None:  # noqa: F811
    srv = dandi_server({DS: {ASSET: files["big"], SMALL: files["small"], "sub-Rat1/sub-Rat1_ses-b.nwb": files["small"]}})
    local = _local_window(files["small"], 2.0, 2.5)
    refs = [
        f"DANDI:{DS}/{SMALL}",
        f"DANDI:{DS}/draft/{SMALL}",
        f"dandi://DANDI/{DS}/{SMALL}",
        f"{srv.api_url}/dandisets/{DS}/versions/draft/assets/?path={SMALL}",
        f"{srv.api_url}/dandisets/{DS}/versions/draft/assets/{srv.asset_id(DS, SMALL)}/",
        f"{srv.base_url}/dandiset/{DS}/draft/files?location={SMALL}",
        srv.blob_url(DS, SMALL),  # a plain URL of an NWB file
    ]
    for ref in refs:
        with open_source(ref, cache_dir=False) as opened:
            w = EMGReader(opened).window(2.0, 2.5)
            np.testing.assert_array_equal(w.values, local.values, err_msg=ref)
            assert opened.location == srv.blob_url(DS, SMALL)
            assert (opened.dandi_url is None) == (ref == srv.blob_url(DS, SMALL))
    text = inspect_source(f"DANDI:{DS}/{SMALL}", cache_dir=tmp_path / "c")
    assert "acquisition/preprocessed_emg [per_muscle] 4 ch" in text and "dandi: " + srv.api_url in text
    with pytest.raises(SourceError, match=r"location=sub-Rat1/: sub-Rat1/: 2 \.nwb assets under this path; pick one of: "
                       r"sub-Rat1/sub-Rat1_ses-b\.nwb, sub-Rat1/sub-Rat1_ses-sim\.nwb"):
        open_source(f"{srv.base_url}/dandiset/{DS}/draft/files?location=sub-Rat1/", cache_dir=False)


def test_missing_asset_and_missing_blob_are_404_errors(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {SMALL: files["small"]}})
    with pytest.raises(SourceError, match=r"DANDI:000941/sub-Rat1/nope\.nwb: sub-Rat1/nope\.nwb: no asset at this path"):
        open_source(f"DANDI:{DS}/sub-Rat1/nope.nwb", cache_dir=False)
    with pytest.raises(SourceError, match=r"/blobs/deadbeef: HTTP 404 Not Found"):
        open_source(f"{srv.base_url}/blobs/deadbeef", cache_dir=False)
    srv.fail(srv.asset_id(DS, SMALL), "status", 404)
    with pytest.raises(SourceError, match="HTTP 404"):
        open_source(f"DANDI:{DS}/{SMALL}", cache_dir=False)


def test_refused_connection_is_retried_then_reported(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    t = time.monotonic()
    with pytest.raises(SourceError, match=rf"127\.0\.0\.1:{port}/x\.nwb: cannot reach the file: connection failed \(connection refused\); gave up after 3 attempts"):
        open_source(f"http://127.0.0.1:{port}/x.nwb", cache_dir=False, retries=2)
    assert time.monotonic() - t < 5


def test_timeouts_are_retried_a_bounded_number_of_times(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {ASSET: files["big"]}})
    url, key = srv.blob_url(DS, ASSET), srv.asset_id(DS, ASSET)
    local = _local_window(files["big"], 10.0, 10.5)
    with open_source(url, cache_dir=False, timeout=0.4, retries=2) as opened:
        reader = EMGReader(opened, check_dead=False)
        srv.fail(key, "stall", 1.0, times=1)  # one stalled request: the retry gets the bytes
        np.testing.assert_array_equal(reader.window(10.0, 10.5).values, local.values)
        srv.fail(key, "stall", 1.0, times=3)  # every attempt stalls: bounded, then a clear error
        t = time.monotonic()
        with pytest.raises(SourceError, match=r"acquisition/EMG: streaming failed: timed out after 0\.4 s; gave up after 3 attempts"):
            reader.window(70.0, 70.5)
        assert time.monotonic() - t < 6
    srv.fail(key, "stall", 1.0, times=3)
    with pytest.raises(SourceError, match="cannot reach the file: timed out"):
        open_source(url, cache_dir=False, timeout=0.4, retries=2)


def test_server_without_range_support_is_refused(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {SMALL: files["small"]}})
    srv.support_range = False
    with pytest.raises(SourceError, match="ignores HTTP Range requests"):
        open_source(srv.blob_url(DS, SMALL), cache_dir=False)


def test_remote_file_that_is_not_nwb(dandi_server, tmp_path: Path) -> None:  # noqa: F811
    junk = tmp_path / "junk.nwb"
    junk.write_bytes(b"not hdf5 at all" * 1000)
    dandi_server({DS: {"sub-x/junk.nwb": junk}})
    with pytest.raises(SourceError, match=r"DANDI:000941/sub-x/junk\.nwb \(sub-x/junk\.nwb\): not an HDF5/NWB file"):
        open_source(f"DANDI:{DS}/sub-x/junk.nwb", cache_dir=False)
