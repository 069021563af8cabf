"""Benchmark: streaming EMG over loopback HTTP vs local h5py, bytes moved, and bounded-memory iteration.

    python benchmarks/bench_streaming.py [--workdir DIR] [--hours 1.0]

1. a 60 s window of a 32-channel 2 kHz float32 recording: MB/s streamed (remfile through the
   local DANDI stand-in in tests/dandi_server.py, no cache) vs MB/s with plain h5py on the local
   file, and their ratio, in one run;
2. bytes the server sent for that window vs bytes of the HDF5 chunks covering it;
3. peak RSS of a process iterating a 1-hour 32-channel 2 kHz series end to end (10 s chunks),
   locally and streamed, against the 0.92 GB of raw float32.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RATE, N_CH = 2000.0, 32


def write_emg(path: Path, duration_s: float, seed: int = 0) -> Path:
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
    nwb.add_acquisition(ElectricalSeries(name="EMG", data=H5DataIO(it, chunks=(int(RATE), N_CH)),
                                         electrodes=region, rate=RATE, starting_time=0.0))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def chunk_bytes(path: Path, i0: int, i1: int) -> int:
    """Stored bytes of the HDF5 chunks of acquisition/EMG/data that overlap rows [i0, i1)."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f["acquisition/EMG/data"]
        rows = d.chunks[0]
        return sum(d.id.get_chunk_info_by_coord((r, 0)).size for r in range(i0 - i0 % rows, i1, rows))


def window_bench(path: Path) -> dict:
    import h5py
    from dandi_server import DandiServer

    from nwb_lfads_emg.sources import EMGReader, open_source

    t0s, t1s = 60.0, 120.0
    i0, i1 = int(t0s * RATE), int(t1s * RATE)
    raw_mb = (i1 - i0) * N_CH * 4 / 1e6
    # local, plain h5py (warm page cache: read once first)
    with h5py.File(path, "r") as f:
        f["acquisition/EMG/data"][i0:i1, :]
        t = time.perf_counter()
        local = f["acquisition/EMG/data"][i0:i1, :]
        local_s = time.perf_counter() - t
    with DandiServer({"000941": {"sub-bench/sub-bench_ecephys.nwb": path}}) as srv:
        url = srv.blob_url("000941", "sub-bench/sub-bench_ecephys.nwb")
        with open_source(url, cache_dir=False) as opened:
            reader = EMGReader(opened, check_dead=False)
            srv.reset_counts()
            t = time.perf_counter()
            streamed = reader.window(t0s, t1s)
            stream_s = time.perf_counter() - t
            sent = srv.bytes_served
            n_requests = len(srv.range_requests)
    assert np.array_equal(streamed.values, local), "streamed values differ from the local read"
    covering = chunk_bytes(path, i0, i1)
    return {
        "window_s": t1s - t0s, "window_raw_MB": raw_mb,
        "local_h5py_MBps": raw_mb / local_s, "streamed_MBps": raw_mb / stream_s,
        "ratio_streamed_over_local": (raw_mb / stream_s) / (raw_mb / local_s),
        "bytes_sent": sent, "bytes_of_covering_chunks": covering, "sent_over_chunks": sent / covering,
        "range_requests": n_requests, "file_bytes": path.stat().st_size,
    }


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
    ap.add_argument("--hours", type=float, default=1.0)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    short = work / "emg_180s.nwb"
    if not short.exists():
        write_emg(short, 180.0)
    result = {"window": window_bench(short)}
    long = work / f"emg_{args.hours:g}h.nwb"
    if not long.exists():
        t = time.perf_counter()
        write_emg(long, args.hours * 3600.0, seed=1)
        result["write_long_s"] = time.perf_counter() - t
    result["iterate"] = iterate_bench(long)
    result["iterate"]["raw_float32_MB"] = args.hours * 3600 * RATE * N_CH * 4 / 1e6
    result["bench_peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
