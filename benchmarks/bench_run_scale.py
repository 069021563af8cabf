"""Benchmark: the whole `run --preset demo --max-epochs 1` as the recording grows; time per stage, peak RSS.

    nice -n 15 python benchmarks/bench_run_scale.py [--sizes 10m@2000,30m@2000,60m@2000,10m@30000]
        [--channels 32] [--workdir DIR] [--label after] [--json results.json] [--preset auto]

Each size is a simulated session (`simulate_session`, 32 muscles, `--base-s` seconds simulated once per
rate and tiled to the length) written as a Myomatrix-like NWB file (int16 ElectricalSeries with a
conversion, 1 s x channels gzip chunks, block by block so the writer's memory stays flat), by a process of
its own. Each run is its own process (`pipeline.run`, the API the CLI calls); its peak RSS is the largest
VmHWM of its stages and of the code between them (VmHWM reset at each stage's start and end), not
`ru_maxrss`, which Linux carries over exec from the forked copy of the benchmark (whose simulation held
4.9-7.6 GB at 30 kHz: the old 30 kHz rows' 2.0 GB); the write-back's forked child's `ru_maxrss` is given apart
(it counts the pages it shares with the run). The benchmark also samples the PSS of the whole process tree
every 0.2 s (pages the forked child shares with its parent counted once). Stage times are wall and CPU seconds (CPU: this process's threads). The stages are timed by wrapping the pipeline's functions
(exclusive time, nested wrapped calls subtracted): read+preprocess (`read`, the raw series loaded for
the baselines), baselines, training (`fit`), inference (`infer`), write-back (`write`); "other" is the
rest (locks, checks, provenance). The same script times any revision of the package: put its folder
first on PYTHONPATH (a checkout of main gives the BEFORE column).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STAGES = {  # stage -> (module, attribute) wrapped when present in the revision under test
    "read+preprocess": [("nwb_lfads_emg.pipeline", "read"), ("nwb_lfads_emg.pipeline", "read_pass"),
                        ("nwb_lfads_emg.sources.reader", "EMGReader.to_dataarray")],
    "baselines": [("nwb_lfads_emg.pipeline", "baseline_estimates"),
                  ("nwb_lfads_emg.pipeline", "finish_baselines"),
                  ("nwb_lfads_emg.baselines.streaming", "BaselineStreams.choose_cutoff")],
    "time scales": [("nwb_lfads_emg.pipeline", "_choose_from_probe")],  # --preset auto: inside the read pass
    "training": [("nwb_lfads_emg.pipeline", "fit")],
    "inference": [("nwb_lfads_emg.pipeline", "infer")],
    "write-back": [("nwb_lfads_emg.pipeline", "write")],
}


def write_session(path: Path, minutes: float, rate: float, n_ch: int, base_s: float) -> int:
    """A simulated session of `minutes` (a `base_s` simulation tiled), written block by block; bytes of raw int16."""
    from datetime import datetime, timezone

    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.data_utils import DataChunkIterator
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject

    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session

    cfg = SimulationConfig(emg_model="carrier", n_muscles=n_ch, duration_s=base_s, emg_rate=rate, seed=0)
    session = simulate_session(cfg)
    conversion = cfg.emg_amplitude_v * 20 / 32767
    base = np.clip(np.round(session.emg / conversion), -32767, 32767).astype(np.int16)
    del session
    n = int(round(minutes * 60 * rate))
    block = int(rate) * 10

    def blocks():
        done = 0
        while done < n:
            a = done % base.shape[0]
            take = min(block, n - done, base.shape[0] - a)
            yield from base[a:a + take]
            done += take

    nwb = NWBFile(session_description=f"Simulated {minutes:g} min, {n_ch}-muscle EMG at {rate:g} Hz (benchmark).",
                  identifier=f"bench-run-scale-{path.stem}", session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    nwb.subject = Subject(subject_id="bench", species="Rattus norvegicus", sex="M", age="P90D")
    dev = nwb.create_device(name="EMGAmplifier", description="Simulated bipolar EMG amplifier.")
    grp = nwb.create_electrode_group(name="EMG", description="Bipolar intramuscular EMG electrodes.",
                                     location="hindlimb", device=dev)
    for k in range(n_ch):
        nwb.add_electrode(location=f"M{k:02d}", group=grp)
    region = nwb.create_electrode_table_region(list(range(n_ch)), "one bipolar EMG channel per muscle")
    it = DataChunkIterator(data=blocks(), maxshape=(n, n_ch), dtype=np.dtype("int16"), buffer_size=block)
    nwb.add_acquisition(ElectricalSeries(
        name="EMG", description="Raw EMG (simulated), one bipolar channel per muscle.",
        data=H5DataIO(it, chunks=(int(rate), n_ch), compression="gzip", compression_opts=1),
        electrodes=region, rate=rate, starting_time=0.0, conversion=conversion))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return n * n_ch * 2


def _hwm_mb() -> float:
    """This process's peak resident memory since the last reset (VmHWM), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux: `5` into clear_refs), so each stage's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _wrap_stages(times: dict[str, float], cpu: dict[str, float], peaks: dict[str, float]) -> None:
    """Wrap the pipeline's stage functions with exclusive wall and CPU timers (nested wrapped calls
    subtracted) and each stage's peak RSS (VmHWM reset at its start; an outer stage keeps its own peak)."""
    import importlib

    stack: list[list[float]] = []  # [wall start, nested wall, cpu start, nested cpu, peak so far]
    last = ["start"]  # the outermost stage that ended last: the code between stages is "other (after X)"

    def timed(stage: str, fn):  # type: ignore[no-untyped-def]
        def inner(*args, **kwargs):  # type: ignore[no-untyped-def]
            if stack:
                stack[-1][4] = max(stack[-1][4], _hwm_mb())
            else:  # the peak of the code since the last outermost stage ended (VmHWM reset there)
                key = f"other (after {last[0]})"
                peaks[key] = max(peaks.get(key, 0.0), _hwm_mb())
            _reset_hwm()
            stack.append([time.perf_counter(), 0.0, time.process_time(), 0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, nested, c0, cnested, peak = stack.pop()
                spent, cspent = time.perf_counter() - start, time.process_time() - c0
                peak = max(peak, _hwm_mb())
                times[stage] = times.get(stage, 0.0) + spent - nested
                cpu[stage] = cpu.get(stage, 0.0) + cspent - cnested
                peaks[stage] = max(peaks.get(stage, 0.0), peak)
                peaks["all"] = max(peaks.get("all", 0.0), peak)
                print(f"# stage {stage}: wall {spent - nested:.0f} s, cpu {cspent - cnested:.0f} s, peak RSS "
                      f"{peak:.0f} MB", file=sys.stderr, flush=True)  # partial results of a run cut short
                if stack:
                    stack[-1][1] += spent
                    stack[-1][3] += cspent
                    stack[-1][4] = max(stack[-1][4], peak)
                else:
                    last[0] = stage
                    _reset_hwm()
        return inner

    for stage, targets in STAGES.items():
        for module_name, attr in targets:
            module = importlib.import_module(module_name)
            owner, name = module, attr
            if "." in attr:
                cls, name = attr.split(".")
                owner = getattr(module, cls)
            if hasattr(owner, name):
                setattr(owner, name, timed(stage, getattr(owner, name)))


def child(source: Path, workdir: Path, preset: str = "demo") -> dict:
    """One `run --preset PRESET --max-epochs 1` in this process; stage times (wall, CPU) and peak RSS."""
    from nwb_lfads_emg import pipeline

    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    peaks: dict[str, float] = {}
    _wrap_stages(times, cpu, peaks)
    job = pipeline.JobConfig(preset=preset, max_epochs=1, progress=False, seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    pipeline.run(str(source), workdir / "run", out=workdir / "out.nwb", job=job)
    peaks["other (after the last stage)"] = _hwm_mb()
    wall = time.perf_counter() - t0
    times["other"] = wall - sum(times.values())
    cpu["other"] = time.process_time() - c0 - sum(cpu.values())
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # the run's peak: VmHWM over its stages and the code between them (from its exec on). Not ru_maxrss: Linux
    # carries it over exec from the forked copy of the parent, so it also counts the parent's memory at the fork
    # (the old 30 kHz rows' 2.0 and 7.4 GB were the benchmark's own simulation, written just before)
    return {"wall_s": wall, "stages": times, "stage_cpu_s": cpu, "stage_peak_rss_mb": peaks,
            "peak_rss_mb": max(peaks.values()), "ru_maxrss_mb": self_kb / 1024,
            "child_peak_rss_mb": child_kb / 1024,
            "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
            "children_cpu_s": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]),
            "out_mb": (workdir / "out.nwb").stat().st_size / 1e6}


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """(sum of PSS, sum of RSS) over a process tree, MB: PSS counts pages a forked child shares once."""
    pss = rss = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) / 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) / 1024
        except OSError:
            pass
    return pss, rss


def run_sampled(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd`, sampling its process tree's memory every 0.2 s; (result, peak PSS sum, peak RSS sum) in MB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=os.environ.copy())
    peaks = [0.0, 0.0]
    done = threading.Event()

    def sample() -> None:
        told = time.perf_counter()
        while not done.wait(0.2):
            pss, rss = _tree_memory_mb(proc.pid)
            peaks[0], peaks[1] = max(peaks[0], pss), max(peaks[1], rss)
            if time.perf_counter() - told > 60:  # partial results of a run cut short
                told = time.perf_counter()
                print(f"# process tree peak so far: PSS {peaks[0]:.0f} MB, RSS {peaks[1]:.0f} MB", file=sys.stderr,
                      flush=True)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peaks[0], peaks[1]


def markdown_table(rows: list[dict]) -> str:
    """One line per (size, label): raw size, wall (CPU) time per stage, peak RSS of the run (and of its
    write-back child), and the peak PSS summed over the process tree (shared pages of the fork counted once)."""
    stages = ("read+preprocess", "baselines", "training", "inference", "write-back")
    head = ("| session (32 ch) | raw float32 | code | " + " | ".join(stages) + " | total "
            "| peak RSS (write-back child) | peak PSS, process tree |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted((r for r in rows if "stages" in r), key=lambda r: (r["rate"], r["minutes"], r["label"] != "before")):
        s, c = r["stages"], r.get("stage_cpu_s", {})

        def cell(k: str, s: dict = s, c: dict = c) -> str:
            return f"{s.get(k, 0.0):.0f} s" + (f" ({c[k]:.0f})" if k in c else "")

        tree = f"{r['tree_peak_pss_mb'] / 1000:.2f} GB" if "tree_peak_pss_mb" in r else "-"
        lines.append(f"| {r['minutes']:g} min at {r['rate'] / 1000:g} kHz | {r['raw_float32_mb'] / 1000:.2f} GB | "
                     f"{r['label']} | " + " | ".join(cell(k) for k in stages)
                     + f" | {r['wall_s']:.0f} s" + (f" ({r['cpu_s'] + r.get('children_cpu_s', 0.0):.0f})"
                                                     if "cpu_s" in r else "")
                     + f" | {r['peak_rss_mb'] / 1000:.2f} GB ({r['child_peak_rss_mb'] / 1000:.2f} GB) | {tree} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10m@2000,30m@2000,60m@2000,10m@30000",
                    help="comma-separated MINUTESm@RATE")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--base-s", type=float, default=120.0, help="seconds simulated per rate, tiled to each length")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--preset", default="demo", help="the run's preset (auto: the time scales chosen in the read "
                    "pass, its 'time scales' stage; the issue's table uses demo)")
    ap.add_argument("--json", default=None, help="append the results to this JSON file")
    ap.add_argument("--table", nargs="+", default=None, metavar="JSON",
                    help="print the README's markdown table from --json files (e.g. before.json after.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--write", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        print(markdown_table([r for f in args.table for r in json.loads(Path(f).read_text())]))
        return
    if args.child:
        print(json.dumps(child(Path(args.child), Path(args.workdir), args.preset)), flush=True)
        return
    if args.write:
        minutes, rate = args.sizes.split("m@")
        write_session(Path(args.write), float(minutes), float(rate), args.channels, args.base_s)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_run_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.sizes.split(","):
        minutes, rate = spec.split("m@")
        minutes, rate = float(minutes), float(rate)
        src = workdir / f"emg_{minutes:g}min_{rate:g}Hz_{args.channels}ch.nwb"
        if not src.exists():  # in a process of its own: the simulation's memory (GBs at 30 kHz) is not this one's
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--write", str(src), "--sizes", spec, "--channels",
                            str(args.channels), "--base-s", str(args.base_s)], check=True)
            print(f"# wrote {src.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        raw_mb = minutes * 60 * rate * args.channels * 4 / 1e6
        job_dir = Path(tempfile.mkdtemp(prefix="job_", dir=workdir))
        proc, tree_pss, tree_rss = run_sampled([sys.executable, __file__, "--child", str(src), "--workdir",
                                                str(job_dir), "--preset", args.preset])
        if proc.returncode != 0:  # its error went to stderr as it came
            rows.append({"size": spec, "failed": proc.returncode})
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res.update(size=spec, minutes=minutes, rate=rate, channels=args.channels, raw_float32_mb=raw_mb, preset=args.preset,
                   tree_peak_pss_mb=tree_pss, tree_peak_rss_mb=tree_rss,
                   file_mb=src.stat().st_size / 1e6, label=args.label)
        rows.append(res)
        s = res["stages"]
        print(f"{args.label:8s} {minutes:5g} min {rate:6g} Hz {args.channels} ch  raw f32 {raw_mb:7.0f} MB  "
              f"wall {res['wall_s']:6.1f} s  " + "  ".join(f"{k} {v:6.1f}" for k, v in s.items())
              + f"  peak RSS {res['peak_rss_mb']:6.0f} MB (write child {res['child_peak_rss_mb']:.0f} MB, tree PSS "
              f"{tree_pss:.0f} MB)  stage peaks " + " ".join(f"{k} {v:.0f}" for k, v in res["stage_peak_rss_mb"].items())
              + "  cpu " + " ".join(f"{k} {v:.0f}" for k, v in res["stage_cpu_s"].items()),
              flush=True)
        subprocess.run(["rm", "-rf", str(job_dir)], check=False)
        if args.json:  # after every size: a long series of runs keeps what it measured
            path = Path(args.json)
            old = json.loads(path.read_text()) if path.exists() else []
            path.write_text(json.dumps(old + [res], indent=1))


if __name__ == "__main__":
    main()
