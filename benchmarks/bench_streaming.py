"""Benchmark: streaming a window over loopback HTTP (concurrent prefetch vs request by request) vs
a local h5py read vs one raw HTTP GET of the same bytes; bytes moved; bounded-memory iteration.

    python benchmarks/bench_streaming.py [--workdir DIR] [--repeats 7] [--latency-ms 20] [--link-mbps 100] [--hours 1.0]

1. a 60 s window of a 32-channel 2 kHz float32 recording (1 s x 32 ch chunks) served by the local
   DANDI stand-in (tests/dandi_server.py, range requests, in a separate process so that it does not
   share the client's interpreter lock), read in one run, interleaved, median of ``--repeats``:
   - plain h5py on the local file (warm page cache) and the same through EMGReader.window;
   - one raw HTTP GET (http.client) of as many bytes as the covering chunks, on a new connection and on one opened
     beforehand (as the library's are): the faster of the two (by median) is the link's speed, the yardstick of the
     "x raw GET" figures;
   - the library's HTTP receive path alone on the same bytes (``fetch_range`` from a pool thread on a connection
     opened beforehand, into a fresh array with one ``readinto``, as the library receives a run of chunks that lie
     back to back; no look-ups): the floor under the library read;
   - the time to open (``open_source``) and to build the reader (for a streamed series it reads the series' HDF5
     chunk index in one pass, so that no window waits for chunk look-ups), reported beside the first window;
   - streamed, each on a fresh open: the library read (``OpenedSource.read_rows``: one range request per
     16 MiB span, asked for once its first chunk is located and received straight into the output while
     the other look-ups go on, chunks that lie back to back in one ``readinto``; no h5py read), prefetch + h5py's read (the path of other filters),
     EMGReader.window (first window after the open) and the same reader's next window (the time per
     window of a pass over a recording: its span starts from the memoised chunk before it);
   - streamed the old way (prefetch off: h5py asks remfile chunk by chunk);
   - both streamed paths again with ``--latency-ms`` added by the server to every request (a far
     server's round trip), where concurrency is what counts;
   - with ``--link-mbps`` the server paces each response to that rate (a far server capping each connection, as S3
     does): one request per window against the window split over 2 and over 4 workers (a far server's default);
   - beside the ratio of medians, each repeat's streamed read against the GET of the same repeat (paired: the machine's
     slow spells, which move single GETs by +-30% here, cancel), as median and quartiles;
   - the page faults of the GETs and of the reader's windows (on a VM each first touch of fresh memory costs ~3 us
     per 4 kB page: a 15 MB array that reuses no freed memory pays up to ~10 ms);
   - the uncompressed window's rows (without added latency or pacing) once more with the server on a CPU of its own
     and this process on the others (``--no-split`` skips it): a server elsewhere takes none of the client's cores,
     whereas on a 2-core machine a loopback server and the reader's threads compete for both;
2. bytes the server sent for the window (chunk look-ups included) vs bytes of the covering chunks;
3. the same window (1 and 2, without the added latency) from the same recording compressed as NeuroConv
   writes it by default (chunked gzip, level 4; ``--compressed gzip,gzip+shuffle``): the library read now
   inflates and unshuffles the chunks in its fetch threads; "prefetch + h5py read" is the old path
   (h5py decompresses serially); the local row is h5py on the same compressed file;
4. peak RSS of a process iterating a ``--hours`` 32-channel 2 kHz series end to end (10 s chunks),
   locally and streamed, against its raw float32 size (``--hours 0`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RATE, N_CH = 2000.0, 32
SERIES = "acquisition/EMG/data"
#: The two raw GETs of a window's bytes: on a new connection, and on one opened beforehand (as the library's are);
#: the faster of them (by median) is the link's speed the streamed reads are measured against.
GET_NEW, GET_OPEN = "raw HTTP GET", "raw HTTP GET, connection opened beforehand"


def write_emg(path: Path, duration_s: float, seed: int = 0, compression: str | None = None,
              shuffle: bool = False) -> Path:
    """A Myomatrix-like NWB file written block by block (bounded writer memory), 1 s x 32 ch chunks."""
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.data_utils import DataChunkIterator
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    n = int(duration_s * RATE)
    block = int(RATE) * 10

    def blocks():
        rng = np.random.default_rng(seed)
        for a in range(0, n, block):
            yield from rng.normal(0, 1e-4, size=(min(block, n - a), N_CH)).astype(np.float32)

    nwb = NWBFile(session_description="benchmark", identifier=path.stem,
                  session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    dev = nwb.create_device(name="amp", description="amplifier")
    grp = nwb.create_electrode_group(name="EMG", description="bipolar EMG", location="forelimb", device=dev)
    for k in range(N_CH):
        nwb.add_electrode(location=f"M{k:02d}", group=grp)
    region = nwb.create_electrode_table_region(list(range(N_CH)), "all")
    it = DataChunkIterator(data=blocks(), maxshape=(n, N_CH), dtype=np.dtype("float32"), buffer_size=block)
    nwb.add_acquisition(ElectricalSeries(name="EMG", data=H5DataIO(it, chunks=(int(RATE), N_CH), compression=compression,
                                                                       shuffle=shuffle),
                                         electrodes=region, rate=RATE, starting_time=0.0))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def covering_chunks(path: Path, i0: int, i1: int) -> tuple[int, int]:
    """(file offset of the first, total stored bytes) of the HDF5 chunks of the series overlapping rows [i0, i1)."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f[SERIES]
        rows = d.chunks[0]
        infos = [d.id.get_chunk_info_by_coord((r, 0)) for r in range(i0 - i0 % rows, i1, rows)]
        return min(i.byte_offset for i in infos), sum(i.size for i in infos)


_SERVER_CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[3]:  # before any thread starts: every thread of the server inherits it
    os.sched_setaffinity(0, {int(c) for c in sys.argv[3].split(",")})
from dandi_server import DandiServer
srv = DandiServer({"000941": {"sub-bench/sub-bench_ecephys.nwb": sys.argv[2]}}).start()
print(json.dumps({"url": srv.blob_url("000941", "sub-bench/sub-bench_ecephys.nwb")}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "reset":
        srv.reset_counts()
    elif cmd[0] == "latency":
        srv.latency = float(cmd[1])
    elif cmd[0] == "link":
        srv.link_bytes_per_s = float(cmd[1])
    print(json.dumps({"bytes": srv.bytes_served, "requests": len(srv.range_requests),
                      "max_in_flight": srv.max_in_flight}), flush=True)
srv.stop()
"""


class ServerProcess:
    """tests/dandi_server.py serving one file from a child process, driven over its stdin/stdout."""

    def __init__(self, path: Path, cpus: set[int] | None = None) -> None:
        self.log = open(path.with_suffix(".server.log"), "w")  # noqa: SIM115 (the server's tracebacks of clients that hang up)
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER_CHILD, str(ROOT / "tests"), str(path),
                                      cpu_list(cpus) if cpus else ""],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = json.loads(self.proc.stdout.readline())["url"]

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.log.close()


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Every thread of this process (and those started meanwhile) kept to ``cpus``, then put back (None: no change)."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)

    def every_thread(to: set[int]) -> None:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(tid), to)

    every_thread(cpus)
    try:
        yield
    finally:
        every_thread(before)


def cpu_list(cpus: set[int]) -> str:
    """CPU numbers as "0,1" (the server child's argument, and the split run's label)."""
    return ",".join(map(str, sorted(cpus)))


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(the server's CPU, the bench's CPUs): the last usable CPU for the server, the rest for the client; None when
    there are fewer than two (or no way to pin)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[-1]}, set(cpus[:-1])) if len(cpus) >= 2 else None


def minor_faults() -> int:
    """This process's minor page faults so far (each first touch of fresh memory: ~3 us apiece on this VM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def raw_get(url: str, offset: int, n: int, faults: dict | None = None, connected: bool = False) -> float:
    """Seconds for one plain HTTP GET of bytes [offset, offset + n) (http.client, a new connection; ``connected``: one
    opened beforehand, as the library's are, its set-up not timed); with ``faults``, its page faults under "faults"
    (0 when its body lands in memory freed by the last one)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    if connected:
        conn.connect()
    f = minor_faults()
    t = time.perf_counter()
    conn.request("GET", u.path, headers={"Range": f"bytes={offset}-{offset + n - 1}"})
    body = conn.getresponse().read()
    dt = time.perf_counter() - t
    if faults is not None:
        faults["faults"] = minor_faults() - f
    conn.close()
    assert len(body) == n, (len(body), n)
    return dt


def bare_receive(url: str, offset: int, n: int, pool: ThreadPoolExecutor) -> float:
    """Seconds for the library's HTTP receive path alone: one ``RetryingSession.fetch_range`` of the raw GET's bytes
    on a connection opened beforehand, sent and received by a pool thread into a fresh array in one ``readinto`` (as
    the library receives chunks that lie back to back; no look-ups, no reader): the floor under the library read."""
    from nwb_lfads_emg.sources.remote import RetryingSession

    session = RetryingSession()
    pool.submit(session.connect, url).result()
    t = time.perf_counter()
    view = memoryview(np.empty(n, dtype=np.uint8))
    pool.submit(session.fetch_range, url, offset, [view]).result()
    dt = time.perf_counter() - t
    session.close()
    return dt


def _opened(url: str, workers: int, span_bytes: int | None) -> Any:
    """``open_source`` of ``url`` streamed with ``workers`` fetch threads, its span size set when given."""
    from nwb_lfads_emg.sources import open_source

    opened = open_source(url, cache_dir=False, prefetch_workers=workers)
    if span_bytes and opened._prefetcher is not None:
        opened._prefetcher.span_bytes = span_bytes
    return opened


def streamed(url: str, srv: ServerProcess, workers: int, i0: int, i1: int, t0s: float, t1s: float,
             reference: np.ndarray, span_bytes: int | None = None) -> dict:
    """Fresh opens of ``url``: the window read by the library (``read_rows``: chunks fetched concurrently,
    decoded without h5py; with ``workers`` 0, h5py asks remfile chunk by chunk), by prefetch + h5py's read
    (the path of compressed data), and through EMGReader.window, then the reader's next window."""
    from nwb_lfads_emg.sources import EMGReader

    out = {}
    with _opened(url, workers, span_bytes) as opened:
        d = opened.h5file[SERIES]
        srv.ask("reset")
        t = time.perf_counter()
        values = opened.read_rows([d], i0, i1) if workers else None
        values = values[0] if values is not None else d[i0:i1, :]
        out["h5py_s"] = time.perf_counter() - t
        out.update(srv.ask("stats"))
        assert np.array_equal(values, reference), "streamed values differ from the local read"
    if workers:
        with _opened(url, workers, span_bytes) as opened:
            d = opened.h5file[SERIES]
            t = time.perf_counter()
            for r in range(i0 // d.chunks[0], (i1 - 1) // d.chunks[0] + 1):
                d.id.get_chunk_info_by_coord((r * d.chunks[0], 0))
            out["lookups_s"] = time.perf_counter() - t  # the chunk look-ups alone, on a fresh open
            t = time.perf_counter()
            opened.read_rows([d], i0, i1)  # B-tree nodes now in HDF5's cache: the transfer (and cheap look-ups) alone
            out["transfer_s"] = time.perf_counter() - t
        with _opened(url, workers, span_bytes) as opened:
            d = opened.h5file[SERIES]
            t = time.perf_counter()
            opened.prefetch_rows([d], i0, i1)
            values = d[i0:i1, :]
            out["prefetch_h5py_s"] = time.perf_counter() - t
            assert np.array_equal(values, reference)
    t = time.perf_counter()
    with _opened(url, workers, span_bytes) as opened:
        out["open_s"] = time.perf_counter() - t
        t = time.perf_counter()
        reader = EMGReader(opened, check_dead=False)  # streamed: reads the series' chunk index (Prefetcher.learn)
        out["reader_init_s"] = time.perf_counter() - t
        f, t = minor_faults(), time.perf_counter()
        window = reader.window(t0s, t1s)
        out["reader_s"] = time.perf_counter() - t
        out["reader_faults"] = minor_faults() - f
        f, t = minor_faults(), time.perf_counter()
        reader.window(t1s, 2 * t1s - t0s)
        out["reader_next_s"] = time.perf_counter() - t
        out["reader_next_faults"] = minor_faults() - f
        assert np.array_equal(window.values, reference)  # after both: its 30 MB pass would slow the next window
    return out


def window_bench(path: Path, repeats: int, latency_ms: float, workers: int, link_mbps: float = 0.0,
                 split: tuple[set[int], set[int]] | None = None) -> dict:
    """The window rows (module docstring, 1-3); with ``split``, the server runs on the first CPUs and this process on
    the second, as a server on another machine takes none of the client's cores."""
    with pinned(split[1] if split else None):
        return _window_bench(path, repeats, latency_ms, workers, link_mbps, split[0] if split else None)


def _window_bench(path: Path, repeats: int, latency_ms: float, workers: int, link_mbps: float,
                  server_cpus: set[int] | None) -> dict:
    import h5py

    from nwb_lfads_emg.sources import EMGReader, open_source
    from nwb_lfads_emg.sources.prefetch import FAR_SPAN_BYTES, FAR_WORKERS, SPAN_BYTES

    t0s, t1s = 60.0, 120.0
    i0, i1 = int(t0s * RATE), int(t1s * RATE)
    raw_mb = (i1 - i0) * N_CH * 4 / 1e6
    first, covering = covering_chunks(path, i0, i1)
    with h5py.File(path, "r") as f:
        reference = f[SERIES][i0:i1, :]  # also warms the page cache
    runs: dict[str, list] = {}
    srv = ServerProcess(path, server_cpus)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        for _ in range(repeats):
            with h5py.File(path, "r") as f:
                t = time.perf_counter()
                f[SERIES][i0:i1, :]
                runs.setdefault("local h5py", []).append({"h5py_s": time.perf_counter() - t})
            t = time.perf_counter()
            with open_source(path) as opened:
                runs["local h5py"][-1]["open_s"] = time.perf_counter() - t
                t = time.perf_counter()
                reader = EMGReader(opened, check_dead=False)
                runs["local h5py"][-1]["reader_init_s"] = time.perf_counter() - t
                t = time.perf_counter()
                reader.window(t0s, t1s)
                runs["local h5py"][-1]["reader_s"] = time.perf_counter() - t
                t = time.perf_counter()
                reader.window(t1s, 2 * t1s - t0s)
                runs["local h5py"][-1]["reader_next_s"] = time.perf_counter() - t
            for label, connected in ((GET_NEW, False), (GET_OPEN, True)):
                get: dict = {}
                get["h5py_s"] = raw_get(srv.url, first, covering, get, connected)
                runs.setdefault(label, []).append(get)
            runs.setdefault("library HTTP receive alone", []).append(
                {"h5py_s": bare_receive(srv.url, first, covering, pool)})
            for label, w in ((f"streamed ({workers} workers)", workers), ("old (request by request)", 0)):
                runs.setdefault(label, []).append(streamed(srv.url, srv, w, i0, i1, t0s, t1s, reference))
        if latency_ms > 0:
            srv.ask(f"latency {latency_ms / 1000}")
            for _ in range(max(1, repeats // 2)):
                runs.setdefault(f"raw HTTP GET +{latency_ms:g} ms", []).append(
                    {"h5py_s": raw_get(srv.url, first, covering)})
                for label, w in ((f"streamed +{latency_ms:g} ms", workers), (f"old +{latency_ms:g} ms", 0)):
                    runs.setdefault(label, []).append(streamed(srv.url, srv, w, i0, i1, t0s, t1s, reference))
            srv.ask("latency 0")
        if link_mbps > 0:  # a far server capping each connection: split windows against one request
            srv.ask(f"link {link_mbps * 1e6}")
            for _ in range(max(1, repeats // 3)):
                runs.setdefault(f"raw HTTP GET, link {link_mbps:g} MB/s", []).append(
                    {"h5py_s": raw_get(srv.url, first, covering)})
                for label, span, w in ((f"streamed, link {link_mbps:g} MB/s, one request", SPAN_BYTES, workers),
                                       (f"streamed, link {link_mbps:g} MB/s, split over {workers} workers",
                                        FAR_SPAN_BYTES, workers),
                                       (f"streamed, link {link_mbps:g} MB/s, split over {FAR_WORKERS} workers "
                                        "(a far server's default)", FAR_SPAN_BYTES, FAR_WORKERS)):
                    runs.setdefault(label, []).append(streamed(srv.url, srv, w, i0, i1, t0s, t1s, reference,
                                                               span_bytes=span))
            srv.ask("link 0")
    finally:
        pool.shutdown()
        srv.close()

    def med(label: str, key: str) -> float | None:
        vals = [r[key] for r in runs[label] if key in r]
        return statistics.median(vals) if vals else None

    def paired(label: str, key: str, get_label: str) -> list[float] | None:
        """Quartiles (25, 50, 75 %) of the GET's time over ``key``'s, each repeat against the GET of the same repeat
        (the GET and the streamed reads of one repeat run back to back, so a slow spell of the machine cancels)."""
        pairs = [g["h5py_s"] / r[key] for g, r in zip(runs[get_label], runs[label], strict=False) if key in r]
        return [float(q) for q in np.percentile(pairs, [25, 50, 75])] if pairs else None

    local_s = med("local h5py", "h5py_s")
    fastest_get = min((GET_NEW, GET_OPEN), key=lambda label: med(label, "h5py_s"))  # the yardstick: the faster GET
    local_rd, local_next = med("local h5py", "reader_s"), med("local h5py", "reader_next_s")
    rows = {}
    for label in runs:
        h5_s, rd_s, next_s = med(label, "h5py_s"), med(label, "reader_s"), med(label, "reader_next_s")
        pre_s = med(label, "prefetch_h5py_s")
        get_label = (f"raw HTTP GET +{latency_ms:g} ms" if "+" in label else
                     f"raw HTTP GET, link {link_mbps:g} MB/s" if "link" in label else fastest_get)
        get_ref = med(get_label, "h5py_s")
        lookups_s, transfer_s = med(label, "lookups_s"), med(label, "transfer_s")
        open_s, init_s = med(label, "open_s"), med(label, "reader_init_s")
        faults = {k: v for k in ("faults", "reader_faults", "reader_next_faults") if (v := med(label, k)) is not None}
        row = {"get_label": get_label, "open_ms": open_s * 1e3 if open_s else None, "reader_init_ms": init_s * 1e3 if init_s else None,
               "lookups_ms": lookups_s * 1e3 if lookups_s else None,
               "transfer_ms": transfer_s * 1e3 if transfer_s else None, "library_ms": h5_s * 1e3,
               "MBps": raw_mb / h5_s, "x_local": local_s / h5_s, "x_raw_get": get_ref / h5_s,
               "prefetch_h5py_MBps": raw_mb / pre_s if pre_s else None,
               "reader_MBps": raw_mb / rd_s if rd_s else None,
               "reader_x_local": local_rd / rd_s if rd_s else None,
               "reader_x_raw_get": get_ref / rd_s if rd_s else None,
               "reader_next_MBps": raw_mb / next_s if next_s else None,
               "reader_next_x_local": local_next / next_s if next_s else None,
               "reader_next_x_raw_get": get_ref / next_s if next_s else None}
        if "GET" not in label and not label.startswith("local"):
            row.update(reader_x_raw_get_paired=paired(label, "reader_s", get_label),
                       reader_next_x_raw_get_paired=paired(label, "reader_next_s", get_label),
                       library_x_raw_get_paired=paired(label, "h5py_s", get_label))
        last = runs[label][-1]
        if "bytes" in last:
            row.update(bytes_sent=last["bytes"], sent_over_chunks=last["bytes"] / covering,
                       requests=last["requests"], max_in_flight=last["max_in_flight"])
        row["page_faults"] = faults
        rows[label] = row
    return {"window_s": t1s - t0s, "window_raw_MB": raw_mb, "bytes_of_covering_chunks": covering, "yardstick": fastest_get,
            "repeats": repeats, "rows": rows}


def print_table(win: dict, kind: str = "uncompressed") -> None:
    """The window results as a markdown table."""
    print(f"\n60 s window, 32 ch x 2 kHz float32, {kind} ({win['window_raw_MB']:.2f} MB; covering chunks "
          f"{win['bytes_of_covering_chunks'] / 1e6:.2f} MB), median of {win['repeats']}; x raw GET: against the faster "
          f"GET, here \"{win['yardstick']}\":\n")
    print("| path | library read MB/s (x local, x raw GET) | prefetch + h5py read MB/s | EMGReader.window, first "
          "after open: MB/s (x local, x raw GET) | EMGReader.window, next: MB/s (x local, x raw GET) | requests | "
          "max in flight | bytes sent / covering chunks |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(mbps: float | None, xl: float | None, xg: float | None) -> str:
        return "-" if not mbps else f"{mbps:.0f} ({xl:.2f}, {xg:.2f})"

    for label, r in win["rows"].items():
        extra = (f"{r['requests']} | {r['max_in_flight']} | {r['sent_over_chunks']:.3f}" if "requests" in r
                 else "1 | 1 | " + ("1.000" if "GET" in label else "-"))
        pre = f"{r['prefetch_h5py_MBps']:.0f}" if r["prefetch_h5py_MBps"] else "-"
        print(f"| {label} | {cell(r['MBps'], r['x_local'], r['x_raw_get'])} | {pre} | "
              f"{cell(r['reader_MBps'], r['reader_x_local'], r['reader_x_raw_get'])} | "
              f"{cell(r['reader_next_MBps'], r['reader_next_x_local'], r['reader_next_x_raw_get'])} | {extra} |")

    print("\nx raw GET, paired: each repeat's GET time over its streamed read's (the GET runs just before them), "
          "median (quartiles):\n")
    print("| path | library read | EMGReader.window, first after open | EMGReader.window, next |")
    print("|---|---|---|---|")

    def quartiles(q: list[float] | None) -> str:
        return "-" if not q else f"{q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})"

    for label, r in win["rows"].items():
        if r.get("library_x_raw_get_paired"):
            print(f"| {label} | {quartiles(r['library_x_raw_get_paired'])} | "
                  f"{quartiles(r.get('reader_x_raw_get_paired'))} | {quartiles(r.get('reader_next_x_raw_get_paired'))} |")

    print("\nopening, before the first window (medians, ms): `open_source`, then `EMGReader(opened, check_dead=False)`,"
          " which for a streamed series reads its HDF5 chunk index in one pass:\n")
    print("| path | open_source | EMGReader built | first window | all three |")
    print("|---|---|---|---|---|")
    for label, r in win["rows"].items():
        if r.get("open_ms") and r.get("reader_MBps"):
            first = win["window_raw_MB"] / r["reader_MBps"] * 1e3
            print(f"| {label} | {r['open_ms']:.1f} | {r['reader_init_ms']:.1f} | {first:.1f} | "
                  f"{r['open_ms'] + r['reader_init_ms'] + first:.1f} |")

    print("\npage faults (medians; each first touch of fresh memory, ~3 us apiece on a VM; memory freed by the last read is"
          " reused without them): the GET's body, the first window, the next window (the first one still held):\n")
    for label, r in win["rows"].items():
        if r.get("page_faults"):
            print(f"- {label}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["page_faults"].items()))

    print("\nwhere the library read's time goes (fresh open; medians, ms):\n")
    print("| path | whole read | chunk look-ups alone | transfer alone (B-tree nodes already read by HDF5) | raw GET |")
    print("|---|---|---|---|---|")
    for label, r in win["rows"].items():
        if r.get("lookups_ms"):
            get = win["rows"][r["get_label"]]
            print(f"| {label} | {r['library_ms']:.1f} | {r['lookups_ms']:.1f} | {r['transfer_ms']:.1f} | "
                  f"{get['library_ms']:.1f} |")


_ITER_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from nwb_lfads_emg.sources import EMGReader, open_source
def hwm():  # this process's peak RSS in MB (VmHWM; ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm()
t = time.perf_counter(); n = 0; total = 0.0
with open_source(sys.argv[1], cache_dir=False) as opened:
    r = EMGReader(opened, check_dead=(sys.argv[2] == "1"))
    for chunk in r.iter_chunks(chunk_s=10.0):
        n += chunk.sizes["time"]; total += float(abs(chunk.values).sum())
print(json.dumps({"samples": n, "seconds": time.perf_counter() - t,
                  "peak_rss_after_imports_MB": base, "peak_rss_MB": hwm()}))
"""


def iterate_bench(path: Path) -> dict:
    from dandi_server import DandiServer

    out = {"file_bytes": path.stat().st_size}
    cmd = [sys.executable, "-c", _ITER_CHILD]
    out["local"] = json.loads(subprocess.run(cmd + [str(path), "1", str(ROOT / "tests")], check=True,
                                             capture_output=True, text=True).stdout)
    with DandiServer({"000941": {"sub-bench/long.nwb": path}}) as srv:
        url = srv.blob_url("000941", "sub-bench/long.nwb")
        out["streamed"] = json.loads(subprocess.run(cmd + [url, "1", str(ROOT / "tests")], check=True,
                                                    capture_output=True, text=True).stdout)
        out["streamed"]["bytes_sent"] = srv.bytes_served
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=None, help="prefetch workers (default: the library's)")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--link-mbps", type=float, default=100.0,
                    help="also serve the window paced to this many MB/s per connection (a far server; 0 skips it)")
    ap.add_argument("--compressed", default="gzip,gzip+shuffle",
                    help="comma-separated compressed variants of the window bench (gzip, gzip+shuffle; '' for none)")
    ap.add_argument("--no-split", action="store_true",
                    help="skip the uncompressed window's second run with the server on a CPU of its own")
    args = ap.parse_args()
    from nwb_lfads_emg.sources.prefetch import DEFAULT_WORKERS

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    short = work / "emg_180s.nwb"
    if not short.exists():
        write_emg(short, 180.0)
    result: dict = {"loadavg_start": os.getloadavg()}
    result["window"] = window_bench(short, args.repeats, args.latency_ms, args.workers or DEFAULT_WORKERS,
                                    args.link_mbps)
    split = None if args.no_split else split_cpus()
    if split:  # as a far server: it takes none of the client's cores (added latency and pacing: the first run's rows)
        key = f"window uncompressed, server on CPU {cpu_list(split[0])}, bench on CPU {cpu_list(split[1])}"
        result[key] = window_bench(short, args.repeats, 0.0, args.workers or DEFAULT_WORKERS, split=split)
    for kind in [k for k in args.compressed.split(",") if k]:
        path = work / f"emg_180s_{kind.replace('+', '_')}.nwb"
        if not path.exists():
            write_emg(path, 180.0, compression="gzip", shuffle=kind == "gzip+shuffle")
        result[f"window {kind}"] = window_bench(path, args.repeats, 0.0, args.workers or DEFAULT_WORKERS)
        result[f"window {kind}"]["file_MB"] = path.stat().st_size / 1e6
    if args.hours > 0:
        long = work / f"emg_{args.hours:g}h.nwb"
        if not long.exists():
            t = time.perf_counter()
            write_emg(long, args.hours * 3600.0, seed=1)
            result["write_long_s"] = time.perf_counter() - t
        result["iterate"] = iterate_bench(long)
        result["iterate"]["raw_float32_MB"] = args.hours * 3600 * RATE * N_CH * 4 / 1e6
    result["bench_peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    print_table(result["window"], "uncompressed, server and bench sharing every CPU")
    for key in [k for k in result if k.startswith("window ")]:
        print_table(result[key], key.split(" ", 1)[1])
    print(f"\nload average (1, 5, 15 min) at start {result['loadavg_start']}, at end {result['loadavg_end']}; "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
