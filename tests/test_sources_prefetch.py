"""Concurrent prefetch of the HDF5 chunks under a window (real pynwb files, real HTTP range requests on loopback)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from dandi_server import dandi_server  # noqa: F401  (pytest fixture)
from test_sources import noise, write_nwb

from nwb_lfads_emg.errors import EMGDataError, SourceError
from nwb_lfads_emg.sources import EMGReader, open_source, prefetch
from nwb_lfads_emg.sources.prefetch import SPAN_SLACK_BYTES, block_runs, chunk_byte_ranges

DS = "000941"
RATE = 2000.0


def write_es(path: Path, data: np.ndarray, chunks: tuple[int, int], compression: str | None = None,
             conversion: float = 1.0, shuffle: bool = False) -> Path:
    """A Myomatrix-like ElectricalSeries with the given stored dtype, chunk shape and compression."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    n_ch = data.shape[1]
    nwb = NWBFile(session_description="test", identifier=path.stem,
                  session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    dev = nwb.create_device(name="amp", description="amplifier")
    grp = nwb.create_electrode_group(name="EMG", description="bipolar EMG", location="forelimb", device=dev)
    for k in range(n_ch):
        nwb.add_electrode(location=f"M{k:02d}", group=grp)
    region = nwb.create_electrode_table_region(list(range(n_ch)), "all")
    nwb.add_acquisition(ElectricalSeries(name="EMG", data=H5DataIO(data, chunks=chunks, compression=compression, shuffle=shuffle),
                                         electrodes=region, rate=RATE, starting_time=0.0, conversion=conversion))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def refilter(path: Path, data: np.ndarray, chunks: tuple[int, int], filters: list[str],
             stored_raw: dict[int, int]) -> Path:
    """Rewrite acquisition/EMG/data with ``filters`` in that pipeline order (h5py's high level always puts shuffle
    first); the chunks starting at the rows in ``stored_raw`` are written with that filter mask (filters skipped)."""
    import zlib

    with h5py.File(path, "r+") as f:
        grp = f["acquisition/EMG"]
        attrs = dict(grp["data"].attrs)
        del grp["data"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(chunks)
        for name in filters:
            dcpl.set_deflate(4) if name == "gzip" else dcpl.set_shuffle()
        dsid = h5py.h5d.create(grp.id, b"data", h5py.h5t.py_create(data.dtype), h5py.h5s.create_simple(data.shape),
                               dcpl=dcpl)
        d = h5py.Dataset(dsid)
        d[...] = data
        d.attrs.update(attrs)
        for row, mask in stored_raw.items():
            b = data[row:row + chunks[0], :chunks[1]].tobytes()
            for bit, name in enumerate(filters):
                if mask >> bit & 1:
                    continue
                if name == "gzip":
                    b = zlib.compress(b)
                else:
                    b = np.frombuffer(b, np.uint8).reshape(-1, data.itemsize).T.tobytes()
            d.id.write_direct_chunk((row, 0), b, filter_mask=mask)
    return path


def rewrite_in_order(path: Path, data: np.ndarray, chunks: tuple[int, int], order: list[int]) -> Path:
    """Rewrite acquisition/EMG/data unfiltered with its row chunks written in ``order``: HDF5 lays them out in the
    file in that order (a layout where a window's chunks are not back to back, or not ascending)."""
    with h5py.File(path, "r+") as f:
        grp = f["acquisition/EMG"]
        attrs = dict(grp["data"].attrs)
        del grp["data"]
        d = grp.create_dataset("data", shape=data.shape, dtype=data.dtype, chunks=chunks)
        for k in order:
            d.id.write_direct_chunk((k * chunks[0], 0), np.ascontiguousarray(data[k * chunks[0]:(k + 1) * chunks[0]]).tobytes())
        d.attrs.update(attrs)
    return path


def int16_emg(n: int, n_ch: int, dtype: str = "<i2") -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.normal(0, 800, size=(n, n_ch)) * np.linspace(0.2, 1.0, n)[:, None]).astype(dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Layouts: float32 in 1 s x 32 ch chunks, int16 gzip chunks, big-endian int16 in (1500 x 12) tiles,
    contiguous, per-muscle TimeSeries; compressed: int16 shuffle+gzip tiles (NeuroConv's default filters),
    float32 gzip-then-shuffle with chunks stored with filters skipped, float32 shuffle+gzip, lzf (h5py decodes)."""
    d = tmp_path_factory.mktemp("prefetch")
    muscles = [f"M{k:02d}" for k in range(32)]
    chunked = write_nwb(d / "chunked.nwb", electrical=noise(80_000, 32, 5), muscles=muscles, rate=RATE, chunks=(2000, 32))
    contiguous = write_nwb(d / "contiguous.nwb", electrical=noise(40_000, 8, 6), rate=RATE)
    gz = write_es(d / "gzip.nwb", int16_emg(60_000, 16), (1000, 16), "gzip", 1e-7)
    tiles = write_es(d / "tiles.nwb", int16_emg(50_000, 32, ">i2"), (1500, 12), None, 1e-7)  # big-endian, 3 column chunks
    signals = noise(100_000, 8, 7)
    per_muscle = write_nwb(d / "per_muscle.nwb", per_muscle={f"M{k}": signals[:, k] for k in range(8)}, rate=RATE)
    nc = write_es(d / "nc.nwb", int16_emg(60_000, 32), (3000, 12), "gzip", 1e-7, shuffle=True)  # tiles, shuffle+gzip
    f32 = noise(60_000, 16, 8).astype("<f4")
    order = refilter(write_es(d / "order.nwb", f32, (1000, 16)), f32, (1000, 16), ["gzip", "shuffle"],
                     {5000: 0b11, 8000: 0b01, 9000: 0b10})  # raw; shuffled only; deflated only
    sg32 = write_es(d / "sg32.nwb", f32, (2000, 16), "gzip", shuffle=True)
    with pytest.warns(UserWarning, match="lzf"):  # h5py's portability note
        lzf = write_es(d / "lzf.nwb", int16_emg(60_000, 16), (1000, 16), "lzf", 1e-7)
    f32 = noise(40_000, 16, 9).astype("<f4")
    swaps = [k for pair in zip(range(1, 40, 2), range(0, 40, 2), strict=True) for k in pair]  # 1, 0, 3, 2, ...
    scattered = rewrite_in_order(write_es(d / "scattered.nwb", f32, (1000, 16)), f32, (1000, 16),
                                 swaps[:20] + list(range(20, 30)) + list(range(39, 29, -1)))  # swapped, in order, reversed
    f32 = noise(40_000, 16, 10).astype("<f4")
    f32[12_345, 3], f32[12_400, 7], f32[20_100, 0] = np.nan, np.inf, np.nan  # 6.17 s, 6.2 s; 10.05 s
    nan = write_es(d / "nan.nwb", f32, (1000, 16))
    nan_gz = write_es(d / "nan_gz.nwb", f32, (1000, 16), "gzip", shuffle=True)
    return {"chunked": chunked, "contiguous": contiguous, "gzip": gz, "tiles": tiles, "per_muscle": per_muscle,
            "nc": nc, "order": order, "sg32": sg32, "lzf": lzf, "scattered": scattered, "nan": nan,
            "nan_gz": nan_gz}


def covering_bytes(path: Path, series: str, i0: int, i1: int) -> int:
    with h5py.File(path, "r") as f:
        return sum(size for _, size in chunk_byte_ranges(f[series], i0, i1))


def local_window(path: Path, t0: float, t1: float, muscles: list[str] | None = None):
    with open_source(path) as opened:
        return EMGReader(opened).window(t0, t1, muscles=muscles)


def test_block_runs_split_and_coalesce() -> None:
    assert block_runs([5, 3, 4, 9, 10, 4], part_blocks=8) == [(3, 3), (9, 2)]
    assert block_runs(range(10), part_blocks=4) == [(0, 4), (4, 4), (8, 2)]


def test_decode_chunk_inflates_unshuffles_and_checks_the_size() -> None:
    import zlib

    from nwb_lfads_emg.sources.prefetch import DEFLATE, SHUFFLE, decode_chunk

    values = np.arange(-500, 500, dtype=">f8")
    planes = values.view(np.uint8).reshape(-1, 8).T.tobytes() + b"xyz"  # shuffled, and a tail of 3 bytes
    stored = memoryview(zlib.compress(planes))
    assert bytes(decode_chunk(stored, (DEFLATE, SHUFFLE), 8, 8003)) == values.tobytes() + b"xyz"
    assert bytes(decode_chunk(memoryview(planes), (SHUFFLE,), 8, 8003)) == values.tobytes() + b"xyz"
    into = memoryview(bytearray(8003))
    decode_chunk(stored, (DEFLATE, SHUFFLE), 8, 8003, into)  # written where it belongs (a slice of the output)
    assert bytes(into) == values.tobytes() + b"xyz"
    raw = memoryview(zlib.compress(values.tobytes()))
    into = memoryview(bytearray(8000))
    decode_chunk(raw, (DEFLATE,), 8, 8000, into)
    assert bytes(into) == values.tobytes()
    for dest in (None, memoryview(bytearray(8000))):
        with pytest.raises(ValueError, match="decodes to 8003 bytes, not the chunk's 8000"):
            decode_chunk(stored, (DEFLATE, SHUFFLE), 8, 8000, dest)
    with pytest.raises(zlib.error):
        decode_chunk(memoryview(planes), (DEFLATE,), 8, 8003)


def test_chunk_ranges_match_the_layout(files) -> None:
    with h5py.File(files["chunked"], "r") as f:
        d = f["acquisition/EMG/data"]
        ranges = chunk_byte_ranges(d, 3000, 9000)  # rows 3000..8999 touch chunks 1..4
        assert len(ranges) == 4 and all(size == 2000 * 32 * 4 for _, size in ranges)
        assert ranges[0][0] == d.id.get_chunk_info_by_coord((2000, 0)).byte_offset
    with h5py.File(files["contiguous"], "r") as f:
        d = f["acquisition/EMG/data"]
        assert chunk_byte_ranges(d, 100, 300) == [(d.id.get_offset() + 100 * 8 * 4, 200 * 8 * 4)]


@pytest.mark.parametrize("name,t0,t1,muscles", [
    ("chunked", 4.3, 33.9, None),
    ("chunked", 10.0, 20.0, ["M03", "M17"]),
    ("gzip", 2.2, 27.7, None),
    ("nc", 0.7, 25.3, None),
    ("nc", 1.1, 23.9, ["M30", "M03", "M17", "M13", "M03"]),
    ("order", 1.3, 28.8, None),  # deflate then shuffle, float32, chunks stored with filters skipped
    ("sg32", 0.4, 29.9, ["M07", "M02", "M15"]),
    ("lzf", 2.2, 27.7, None),  # not decoded here: prefetch, then h5py
    ("tiles", 0.3, 24.1, None),
    ("tiles", 1.1, 23.9, ["M30", "M03", "M17", "M13", "M03"]),  # unordered, repeated, across the column tiles
    ("contiguous", 1.0, 17.5, None),
    ("per_muscle", 5.0, 45.0, ["M1", "M2", "M4", "M6", "M7"]),
])
def test_prefetched_window_equals_the_local_read_and_moves_only_its_chunks(
        dandi_server, files, name, t0, t1, muscles) -> None:  # noqa: F811
    srv = dandi_server({DS: {f"sub-a/{name}.nwb": files[name]}})
    with open_source(srv.blob_url(DS, f"sub-a/{name}.nwb"), cache_dir=False) as opened:
        reader = EMGReader(opened, check_dead=False)
        srv.reset_counts()
        remote = reader.window(t0, t1, muscles=muscles)
        sent, n_requests = srv.bytes_served, len(srv.range_requests)
        assert opened._prefetcher.requests >= 1  # the window did go through the prefetch
        assert bool(opened._prefetcher._pinned) == (name == "lzf")  # only lzf went through h5py's read
    local = local_window(files[name], t0, t1, muscles)
    np.testing.assert_array_equal(remote.values, local.values)
    np.testing.assert_array_equal(remote.time.values, local.time.values)
    assert remote.dtype == local.dtype
    i0, i1 = int(round(t0 * RATE)), int(np.ceil(t1 * RATE))
    series = ([f"acquisition/preprocessed_emg/{m}/data" for m in muscles] if name == "per_muscle"
              else ["acquisition/EMG/data"])
    covering = sum(covering_bytes(files[name], s, i0, i1) for s in series)
    assert covering > 1_000_000
    assert sent <= 1.1 * covering, (sent, covering, n_requests)  # counted by the server, chunk look-ups included
    assert n_requests <= 12, n_requests


def test_requests_are_concurrent_and_old_path_is_not(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {"sub-a/chunked.nwb": files["chunked"]}})
    url = srv.blob_url(DS, "sub-a/chunked.nwb")
    local = local_window(files["chunked"], 0.0, 40.0)
    seen = {}
    for workers in (4, 0, None):
        with open_source(url, cache_dir=False, prefetch_workers=workers) as opened:
            reader = EMGReader(opened, check_dead=False)
            if workers == 4:
                opened._prefetcher.span_bytes = 2 * 1024 * 1024  # a 10 MB window in 2 MiB spans, 4 at once
            srv.latency = 0.05  # a far server: each request waits 50 ms before answering
            srv.reset_counts()
            t = time.monotonic()
            np.testing.assert_array_equal(reader.window(0.0, 40.0).values, local.values)
            seen[workers] = (srv.max_in_flight, len(srv.range_requests), time.monotonic() - t)
            srv.latency = 0.0
    assert seen[4][0] >= 3, seen  # the server saw several requests in flight at once
    assert seen[0][0] == 1, seen  # remfile alone: one at a time
    assert seen[4][2] < seen[0][2], seen
    assert seen[None][:2] == (1, 1), seen  # default spans: the whole window in one request, none for look-ups
    assert seen[None][2] < seen[0][2], seen


def test_pinned_blocks_are_released_by_the_next_window(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {"sub-a/lzf.nwb": files["lzf"]}})  # lzf: prefetch, then h5py reads
    with open_source(srv.blob_url(DS, "sub-a/lzf.nwb"), cache_dir=False) as opened:
        reader = EMGReader(opened, check_dead=False)
        pre = opened._prefetcher
        reader.window(5.0, 20.0)
        first = set(pre._pinned)
        assert len(first) * pre.block >= covering_bytes(files["lzf"], "acquisition/EMG/data", 10_000, 40_000)
        reader.window(24.0, 25.0)
        assert first and not first & pre._pinned
        assert not any(b in opened._remote_file._chunks for b in first)  # released from remfile's memory
        srv.reset_counts()
        reader.window(24.2, 24.9)  # inside the last window: served from memory
        assert srv.bytes_served == 0


def test_consecutive_windows_fetch_each_chunk_once_and_keep_little(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {"sub-a/chunked.nwb": files["chunked"]}})  # uncompressed: decoded without h5py
    with open_source(srv.blob_url(DS, "sub-a/chunked.nwb"), cache_dir=False) as opened:
        reader = EMGReader(opened, check_dead=False)
        pre = opened._prefetcher
        srv.reset_counts()
        chunks = list(reader.iter_chunks(chunk_s=2.5, t0=0.3, t1=39.7))  # window edges fall inside 1 s chunks
        sent = srv.bytes_served
        assert not pre._pinned and pre.requests >= 16
        assert len(pre._edges) <= 8  # only the edge chunks are kept, for the next window
    np.testing.assert_array_equal(np.concatenate([c.values for c in chunks]),
                                  local_window(files["chunked"], 0.3, 39.7).values)
    covering = covering_bytes(files["chunked"], "acquisition/EMG/data", 600, 79_400)
    assert sent <= 1.1 * covering, (sent, covering)  # an edge chunk is fetched once, not by both its windows


def test_chunks_not_laid_out_back_to_back_are_fetched_where_they_are(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {"sub-a/scattered.nwb": files["scattered"]}})
    with open_source(srv.blob_url(DS, "sub-a/scattered.nwb"), cache_dir=False) as opened:
        pre = opened._prefetcher
        reader = EMGReader(opened, check_dead=False)
        srv.reset_counts()
        chunks = list(reader.iter_chunks(chunk_s=1.7))  # windows over swapped, ascending and reversed chunks
        sent = srv.bytes_served
        assert pre.requests > len(chunks)  # chunks not where the span's guess put them: asked for again
    np.testing.assert_array_equal(np.concatenate([c.values for c in chunks]),
                                  local_window(files["scattered"], 0.0, 20.0).values)
    covering = covering_bytes(files["scattered"], "acquisition/EMG/data", 0, 40_000)
    assert sent <= 2.5 * covering, (sent, covering)  # each window wastes at most its span (1.6x measured)


@pytest.mark.parametrize("index", ["whole", "ends"])
def test_a_fresh_window_waits_for_no_look_up_and_a_cached_one_moves_nothing(
        dandi_server, tmp_path: Path, monkeypatch, index: str) -> None:  # noqa: F811
    """The reader reads the series' chunk index when built, in one pass (past MAX_INDEX_ENTRIES chunks: only the
    first and last chunk, between which a window's first chunk is guessed): a window in the middle of a fresh open
    then goes out as one range request before any look-up of its own. A disk cache holding the window's chunks
    stops the guess: a re-read after a new open moves nothing."""
    if index == "ends":
        monkeypatch.setattr(prefetch, "MAX_INDEX_ENTRIES", 100)  # the file's 200 chunks: too many to index whole
    data = noise(200_000, 16, 11).astype("<f4")
    path = write_es(tmp_path / "long.nwb", data, (1000, 16))  # 200 chunks of 64 kB: several B-tree leaves
    with h5py.File(path, "r") as f:
        infos = [f["acquisition/EMG/data"].id.get_chunk_info_by_coord((r * 1000, 0)) for r in range(200)]
    first = infos[120].byte_offset
    covering = covering_bytes(path, "acquisition/EMG/data", 120_000, 170_000)
    srv = dandi_server({DS: {"sub-a/long.nwb": path}})
    for k, cache in enumerate((False, tmp_path / "cache", tmp_path / "cache")):
        with open_source(srv.blob_url(DS, "sub-a/long.nwb"), cache_dir=cache) as opened:
            reader = EMGReader(opened, check_dead=False)
            pre = opened._prefetcher
            layout = pre._layouts["/acquisition/EMG/data"]
            if index == "whole":  # every chunk, as HDF5 answers one look-up
                assert layout.index == {(r, 0): (i.byte_offset, i.size, ()) for r, i in enumerate(infos)}
            else:
                assert sorted(layout.index) == [(0, 0), (199, 0)]
            guess = pre._guess_start(layout, range(120, 170))
            srv.reset_counts()
            window = reader.window(60.0, 85.0)
            sent, asked = srv.bytes_served, list(srv.range_requests)
        np.testing.assert_array_equal(window.values, data[120_000:170_000])
        if k == 2:
            assert guess is None and sent == 0 and asked == [], (guess, sent, asked)  # all in the disk cache
            continue
        assert guess is not None and guess[1] <= first <= guess[1] + SPAN_SLACK_BYTES, (guess, first)
        assert asked[0].startswith(f"bytes={guess[1]}-"), (asked, guess)  # the span: asked for as guessed, first
        assert index == "ends" or len(asked) == 1, asked  # (with the ends only, B-tree nodes may be read after it)
        assert sent <= 1.1 * covering, (sent, covering, asked)


@pytest.mark.parametrize("name", ["nan", "nan_gz"])  # received straight into the window; inflated into it
def test_streamed_float_windows_find_nan_and_inf_as_a_local_read_does(dandi_server, files, name) -> None:  # noqa: F811
    srv = dandi_server({DS: {"sub-a/nan.nwb": files[name]}})
    with open_source(srv.blob_url(DS, "sub-a/nan.nwb"), cache_dir=False) as opened, \
            open_source(files[name]) as local:
        remote, here = EMGReader(opened, check_dead=False), EMGReader(local, check_dead=False)
        for t0, t1 in ((2.0, 10.01), (6.18, 9.0), (10.0, 13.0)):  # NaN and Inf; an Inf; a NaN at 10.05 s
            with pytest.raises(EMGDataError) as streamed:
                remote.window(t0, t1)
            with pytest.raises(EMGDataError) as read_here:
                here.window(t0, t1)
            assert str(streamed.value).replace(str(srv.blob_url(DS, "sub-a/nan.nwb")), "") == \
                str(read_here.value).replace(str(files[name]), "")
        window = remote.window(6.201, 10.04)  # the NaN at 6.17 s and the one at 10.05 s lie in its edge chunks only
        assert np.isfinite(window.values).all() and "valid" not in window.coords
        assert opened._prefetcher._edges  # (its edge chunks, NaN included, were fetched and kept)
        masked = EMGReader(opened, check_dead=False, on_nonfinite="mask").window(2.0, 13.0)
        expected = EMGReader(local, check_dead=False, on_nonfinite="mask").window(2.0, 13.0)
    np.testing.assert_array_equal(masked.values, expected.values)
    np.testing.assert_array_equal(masked.valid.values, expected.valid.values)
    assert int((~masked.valid.values).sum()) == 3


@pytest.mark.parametrize("name", ["chunked", "sg32"])  # uncompressed (one span); shuffle+gzip (decoded in the fetch threads)
def test_streamed_window_is_checked_by_the_fetch_threads_as_it_arrives(dandi_server, files, monkeypatch, name) -> None:  # noqa: F811
    """The NaN/Inf check of a streamed float window runs on the fetch threads, piece by piece as the bytes land (or are
    inflated); the reading thread checks only what came another way (a window's partial edge chunks), and returns the
    same window."""
    from nwb_lfads_emg.sources import reader as reader_module

    checked: list[tuple[str, int]] = []
    check = reader_module._all_finite
    monkeypatch.setattr(reader_module, "_all_finite", lambda data: checked.append(
        (threading.current_thread().name, data.size)) or check(data))
    monkeypatch.setattr(prefetch, "LANDED_STEP_BYTES", 96 * 1024)  # several steps per run of 1 s chunks
    srv = dandi_server({DS: {f"sub-a/{name}.nwb": files[name]}})
    with open_source(srv.blob_url(DS, f"sub-a/{name}.nwb"), cache_dir=False) as opened:
        reader = EMGReader(opened, check_dead=False)
        width = len(reader.muscles)
        for (t0, t1), edge_rows in (((4.0, 20.0), 0), ((20.25, 28.5), 1500 + 1000)):  # 1 s chunks: aligned; two edges
            checked.clear()
            window = reader.window(t0, t1)
            here = sum(n for thread, n in checked if thread == threading.current_thread().name)
            fetchers = [n for thread, n in checked if thread.startswith("nwb-prefetch")]
            assert here == edge_rows * width, (t0, t1, checked)
            assert len(fetchers) > 1 and sum(fetchers) == window.size - here, (t0, t1, checked)
            expected = local_window(files[name], t0, t1)
            expected.attrs["source"] = window.attrs["source"]
            xr.testing.assert_identical(window, expected)


def test_a_window_from_a_far_server_goes_out_over_every_worker(dandi_server, files, monkeypatch) -> None:  # noqa: F811
    """A window from a server on this machine is one request (concurrent connections would share its cores); from a
    server elsewhere (each connection capped) it is split over the workers, all in flight at once."""
    from nwb_lfads_emg.sources.remote import RetryingSession

    srv = dandi_server({DS: {"sub-a/chunked.nwb": files["chunked"]}})
    url = srv.blob_url(DS, "sub-a/chunked.nwb")
    expected = local_window(files["chunked"], 4.0, 20.0)  # 4 MB
    for far in (False, True):
        if far:
            monkeypatch.setattr(RetryingSession, "peer_is_local", lambda self, url: False)
        with open_source(url, cache_dir=False) as opened:
            assert opened._prefetcher.workers == (prefetch.FAR_WORKERS if far else prefetch.DEFAULT_WORKERS)
        with open_source(url, cache_dir=False, prefetch_workers=3) as opened:  # (as given)
            assert opened._prefetcher.span_bytes == (prefetch.FAR_SPAN_BYTES if far else prefetch.SPAN_BYTES)
            reader = EMGReader(opened, check_dead=False)
            srv.reset_counts()
            srv.latency = 0.05  # each request waits before answering: concurrent ones overlap for sure
            window = reader.window(4.0, 20.0)
            srv.latency = 0.0
            np.testing.assert_array_equal(window.values, expected.values)
            assert (len(srv.range_requests), srv.max_in_flight) == ((3, 3) if far else (1, 1)), srv.range_requests


def test_integer_data_scaled_past_the_float_range_is_still_checked(tmp_path: Path) -> None:
    """Integer samples skip the NaN/Inf pass only when the type's bounds times the scale stay finite."""
    data = int16_emg(4000, 4)
    huge = write_es(tmp_path / "huge.nwb", data, (1000, 4), conversion=1e36)  # 32767 x 1e36 > float32's 3.4e38
    with open_source(huge) as opened, pytest.raises(EMGDataError, match="NaN/Inf sample"):
        EMGReader(opened, check_dead=False).window(0.0, 2.0)
    small = write_es(tmp_path / "small.nwb", data, (1000, 4), conversion=1e-7)
    with open_source(small) as opened:
        window = EMGReader(opened, check_dead=False).window(0.0, 2.0)
    np.testing.assert_array_equal(window.values, (data.astype(np.float32) * np.float32(1e-7)))


def test_requests_path_serves_the_same_bytes(dandi_server, files, monkeypatch) -> None:  # noqa: F811
    from nwb_lfads_emg.sources.remote import RetryingSession

    monkeypatch.setattr(RetryingSession, "_lean", lambda self, url: False)  # as behind a proxy: requests does it all
    srv = dandi_server({DS: {"sub-a/chunked.nwb": files["chunked"]}})
    with open_source(srv.blob_url(DS, "sub-a/chunked.nwb"), cache_dir=False) as opened:
        opened._prefetcher.span_bytes = 2 * 1024 * 1024  # several spans, each received through requests
        window = EMGReader(opened, check_dead=False).window(3.3, 21.7)
        assert opened._prefetcher.requests >= 2
    np.testing.assert_array_equal(window.values, local_window(files["chunked"], 3.3, 21.7).values)


def test_streamed_iter_chunks_reads_the_next_chunk_ahead(dandi_server, files) -> None:  # noqa: F811
    import threading

    srv = dandi_server({DS: {"sub-a/chunked.nwb": files["chunked"]}})
    with open_source(srv.blob_url(DS, "sub-a/chunked.nwb"), cache_dir=False) as opened:
        reader = EMGReader(opened, check_dead=False)
        chunks = reader.iter_chunks(chunk_s=5.0, t0=0.0, t1=30.0)
        first = next(chunks)
        deadline = time.monotonic() + 10
        sent = srv.bytes_served
        while srv.bytes_served < sent + 5 * 2000 * 32 * 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # the caller "works"; the second chunk arrives meanwhile
        assert srv.bytes_served >= sent + 5 * 2000 * 32 * 4  # fetched before it was asked for
        srv.reset_counts()
        second = next(chunks)
        assert srv.bytes_served == 0  # it was already there
        chunks.close()  # stopping early leaves no read-ahead thread behind
        assert not [t for t in threading.enumerate() if t.name.startswith("nwb-read-ahead")]
    assert not [t for t in threading.enumerate() if t.name.startswith(("nwb-read-ahead", "nwb-prefetch"))]
    local = local_window(files["chunked"], 0.0, 10.0).values
    np.testing.assert_array_equal(np.concatenate([first.values, second.values]), local)


def test_a_window_cut_short_mid_transfer_is_asked_for_again_whole(dandi_server, files) -> None:  # noqa: F811
    """A span's body that breaks off inside a run of chunks received in one piece: the retry receives it again from
    its first byte into the same output, and the window equals the local read."""
    srv = dandi_server({DS: {"sub-a/chunked.nwb": files["chunked"]}})
    key = srv.asset_id(DS, "sub-a/chunked.nwb")
    with open_source(srv.blob_url(DS, "sub-a/chunked.nwb"), cache_dir=False) as opened:
        reader = EMGReader(opened, check_dead=False)
        srv.reset_counts()
        srv.fail(key, "cut", 3_000_000)  # inside the run of whole chunks after the first (partly read) one
        remote = reader.window(5.5, 35.0)
        requests, sent = srv.range_requests, srv.bytes_served
    assert len(requests) == 2 and requests[0] == requests[1], requests  # the same range, asked for again
    covering = covering_bytes(files["chunked"], "acquisition/EMG/data", 11_000, 70_000)
    assert 3_000_000 + covering <= sent <= 3_000_000 + 1.1 * covering
    np.testing.assert_array_equal(remote.values, local_window(files["chunked"], 5.5, 35.0).values)


def test_failing_server_gives_the_one_line_error(dandi_server, files) -> None:  # noqa: F811
    srv = dandi_server({DS: {"sub-a/chunked.nwb": files["chunked"]}})
    key = srv.asset_id(DS, "sub-a/chunked.nwb")
    with open_source(srv.blob_url(DS, "sub-a/chunked.nwb"), cache_dir=False, retries=2) as opened:
        reader = EMGReader(opened, check_dead=False)
        srv.fail(key, "status", 503, times=1000)
        t = time.monotonic()
        with pytest.raises(SourceError) as err:
            reader.window(5.0, 35.0)
        assert time.monotonic() - t < 5
        text = str(err.value)
        assert "\n" not in text and "Traceback" not in text
        assert text.endswith("acquisition/EMG: streaming failed: HTTP 503 Service Unavailable; gave up after 3 attempts"), text
        with pytest.raises(SourceError) as err:  # the same through iter_chunks' read-ahead thread
            list(reader.iter_chunks(chunk_s=5.0, t0=5.0, t1=35.0))
        assert str(err.value) == text
        with srv.lock:
            srv._failures.clear()  # the server recovers: the same reader reads the window
        np.testing.assert_array_equal(reader.window(5.0, 35.0).values, local_window(files["chunked"], 5.0, 35.0).values)
