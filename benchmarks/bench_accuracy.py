"""Accuracy as a user would see it: default options (`run`, auto preset) on real recordings and the simulator.

Real recordings (../shared/data): each is converted to NWB (tests/real_nwb.py), annotated by
`pipeline.run` with default options, and evaluated by `evaluate_file`: cross-validated decoding R^2
of the measured behaviour (knee angle; load-cell force) from each estimate. Simulator: R^2 against
the true activation (affine map per muscle, mean over muscles) for both EMG models and tasks.
Methods: AutoLFADS (auto preset), LowPass (cutoff chosen from the EMG alone), BayesianFilter
(parameters by maximum marginal likelihood), LowPassOracle (cutoff picked WITH the truth or the
behaviour: an upper reference, not a method a user can run).

Every cell runs in two modes (`--modes`): `single` is `run` with default options (one model of the
auto preset), `pbt` is `run --pbt` with the product's default PBT settings (population sized for
the compute: 4-6 on CPU; generations of max-epochs/4 epochs; each member the auto preset's epochs).
Both rows print the wall time and the CPU seconds of this process and every process it started
(Ray's daemons and workers included), the budget a user pays on these cores.

    python benchmarks/bench_accuracy.py                         # everything (long on 2 CPU cores)
    python benchmarks/bench_accuracy.py --real 3Amar 3Apie --sim none --modes single
    python benchmarks/bench_accuracy.py --real none --sim motor_units:locomotion carrier-20-80:isometric --seeds 0 1 2
    python benchmarks/bench_accuracy.py --real none --sim motor_units:locomotion --seeds 0 --modes pbt --record rows.jsonl
    python benchmarks/bench_accuracy.py --table rows.jsonl      # the README table from recorded rows, no training
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT.parent / "shared" / "data"
METHODS = ("AutoLFADS", "LowPass", "BayesianFilter", "LowPassOracle")


ROWS: list[tuple[str, dict[str, float], float, str]] = []
RECORD: Path | None = None  # --record: every row is appended here as one JSON line


class TreeCPU:
    """CPU seconds (user + system) of this process and all its descendants, sampled from /proc.

    A thread reads /proc every `period` s and keeps each process's last reading (by pid and start
    time), so processes that end (Ray's workers and daemons) still count, up to their last `period`.
    """

    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self.seen: dict[tuple[int, int], float] = {}
        self.base = 0.0
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        stats: dict[int, tuple[int, int, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
            ppid, utime, stime, start = int(fields[1]), int(fields[11]), int(fields[12]), int(fields[19])
            stats[int(entry)] = (ppid, start, (utime + stime) / self._tick)
        mine, frontier = set(), [os.getpid()]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            pid = frontier.pop()
            if pid in mine or pid not in stats:
                continue
            mine.add(pid)
            frontier.extend(children.get(pid, []))
        for pid in mine:
            _, start, cpu = stats[pid]
            self.seen[(pid, start)] = max(cpu, self.seen.get((pid, start), 0.0))

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> TreeCPU:
        self._sample()
        self.base = sum(self.seen.values())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        """CPU seconds used since entering."""
        return sum(self.seen.values()) - self.base


def _row(label: str, scores: dict[str, float], seconds: float, extra: str = "", cpu_s: float | None = None) -> None:
    if cpu_s is not None:
        extra = f"{extra}, CPU {cpu_s:.0f} s" if extra else f"CPU {cpu_s:.0f} s"
    ROWS.append((label, scores, seconds, extra))
    cells = "  ".join(f"{scores.get(m, float('nan')):>13.3f}" for m in METHODS)
    print(f"{label:<40} {cells}  {seconds:7.0f} s  {extra}", flush=True)
    if RECORD is not None:
        with RECORD.open("a") as f:
            f.write(json.dumps({"label": label, "scores": scores, "seconds": seconds, "extra": extra}) + "\n")


def _markdown() -> str:
    """The table as the README shows it: best per row in bold, AutoLFADS' margin over each baseline."""
    head = "| session | " + " | ".join(METHODS) + " | AutoLFADS - LowPass / Bayes / oracle | time scales, CPU, wall |"
    lines = [head, "|" + "---|" * (len(METHODS) + 3)]
    for label, scores, seconds, extra in ROWS:
        best = max(METHODS, key=lambda m: scores.get(m, float("-inf")))
        cells = [f"**{scores[m]:.3f}**" if m == best else f"{scores.get(m, float('nan')):.3f}" for m in METHODS]
        a = scores.get("AutoLFADS", float("nan"))
        diffs = [a - scores.get(m, float("nan")) for m in METHODS[1:]]
        margins = " / ".join(f"**{d:+.3f}**" if d < 0 else f"{d:+.3f}" for d in diffs)  # losses in bold
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {margins} | {extra}, wall {seconds:.0f} s |")
    return "\n".join(lines)


def _time_scales(record: dict) -> str:
    ts = record["job"]["time_scales"]
    text = f"bins {ts['bin_ms']:g} ms, segments {ts['segment_ms'] / 1000:g} s"
    if ts.get("candidates"):
        text += " (held-out R^2 " + ", ".join(f"{c['bin_ms']:g} ms {c['held_out_r2']:.3f}"
                                              for c in ts["candidates"]) + ")"
    hist = record.get("pbt_history")
    if not hist:
        return text + f", {len(record['metrics'])} epochs"
    win = hist["winner"]
    epochs = max((len(t["iterations"]) for t in hist["trials"].values()), default=0)
    return (text + f", population {hist['population']} x {epochs} epochs ({hist['generations']} generations; "
            f"{hist['stop_reason']}), {len(hist['exploits'])} exploits, winner {win['trial']} epoch "
            f"{win['iteration']}")


def _scores(table: object, analysis: str, target: str | None) -> dict[str, float]:
    t = table[table.analysis == analysis]  # type: ignore[index]
    if target is not None:
        t = t[t.target == target]
    return t.groupby("method").r2.mean().to_dict()


def _annotate(src: Path, work: Path, max_epochs: int | None, seed: int, pbt: bool = False
              ) -> tuple[Path, dict, float]:
    """`run` (or `run --pbt`) with default options: the annotated file, the job record, CPU seconds."""
    from nwb_lfads_emg.pipeline import JobConfig, PBTSettings, run

    tag = "_pbt" if pbt else ""
    out, run_dir = work / (src.stem + tag + "_annotated.nwb"), work / (src.stem + tag + "_run")
    with TreeCPU() as cpu:
        run(src, run_dir, out=out, overwrite=True,
            job=JobConfig(seed=seed, max_epochs=max_epochs, progress=False, pbt=pbt, pbt_settings=PBTSettings()))
    record = json.loads((run_dir / "job.json").read_text())
    return out, record, cpu.seconds


def _cells(modes: list[str]) -> list[tuple[str, bool]]:
    return [(m, m == "pbt") for m in modes]


def _run_cells(src: Path, work: Path, max_epochs: int | None, modes: list[str], label: str, analysis: str,
               target: str | None, t0: float) -> None:
    """One row per mode (`run`, `run --pbt`) on one session: annotate, evaluate, print (the first row's time
    includes writing the session, from `t0`)."""
    from nwb_lfads_emg.evaluate import evaluate_file

    for mode, pbt in _cells(modes):
        out, record, cpu_s = _annotate(src, work, max_epochs, 0, pbt)
        _row(f"{label} {mode}", _scores(evaluate_file(out), analysis, target), time.perf_counter() - t0,
             _time_scales(record), cpu_s)
        t0 = time.perf_counter()


def bench_real(names: list[str], work: Path, max_epochs: int | None, modes: list[str]) -> None:
    from real_nwb import elderly_to_nwb, uci_to_nwb

    for name in names:
        t0 = time.perf_counter()
        if name.startswith("subject"):
            subject, task = name.split(":")
            src = elderly_to_nwb(DATA / "elderly-isometric" / f"{subject}.npz", task, work / f"{subject}_{task}.nwb")
            target = "force"
        else:
            src = uci_to_nwb(DATA / "uci-lower-limb" / f"{name}.npz", work / f"{name}.nwb")
            target = "knee_angle"
        _run_cells(src, work, max_epochs, modes, f"{name} decode {target}", "decode_linear", target, t0)


def bench_sim(specs: list[str], seeds: list[int], work: Path, max_epochs: int | None, modes: list[str]) -> None:
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

    for spec in specs:
        label, task = spec.split(":")
        model, _, band = label.partition("-")  # "carrier-30-250": the carrier model with that band (Hz)
        extra = {"carrier_band_hz": tuple(float(f) for f in band.split("-"))} if band else {}
        for seed in seeds:
            t0 = time.perf_counter()
            cfg = SimulationConfig(emg_model=model, task=task, seed=seed, duration_s=60.0, **extra)
            src = write_session_nwb(simulate_session(cfg), work / f"sim_{label}_{task}_{seed}.nwb")
            _run_cells(src, work, max_epochs, modes, f"sim {label} {task} seed {seed}", "vs_truth", None, t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", nargs="*", default=["3Amar", "3Asen", "3Apie", "5Nmar", "5Npie", "5Nsen", "subject01:VL",
                                                "subject02:VL"])
    p.add_argument("--sim", nargs="*", default=["motor_units:locomotion", "motor_units:isometric",
                                                "carrier-30-250:locomotion", "carrier-30-250:isometric",
                                                "carrier-20-80:locomotion", "carrier-20-80:isometric"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, default=None, help="cap the auto preset's epochs (default: none)")
    p.add_argument("--modes", nargs="+", choices=("single", "pbt"), default=["single", "pbt"],
                   help="one default model (`run`) and/or AutoLFADS (`run --pbt`, default PBT settings) per cell")
    p.add_argument("--record", type=Path, default=None, help="append every row to this JSON-lines file")
    p.add_argument("--table", nargs="+", type=Path, default=None, metavar="ROWS.jsonl",
                   help="print the markdown table of rows recorded with --record (no training)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the NWB files and run directories here")
    args = p.parse_args()
    if args.table:
        for path in args.table:
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    ROWS.append((r["label"], r["scores"], r["seconds"], r["extra"]))
        print(_markdown(), flush=True)
        return
    global RECORD
    RECORD = args.record
    real = [] if args.real == ["none"] else args.real
    sims = [] if args.sim == ["none"] else args.sim
    print(f"{'session (R^2)':<40} " + "  ".join(f"{m:>13}" for m in METHODS) + "     time", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench_real(real, work, args.max_epochs, args.modes)
        bench_sim(sims, args.seeds, work, args.max_epochs, args.modes)
    print("\n" + _markdown(), flush=True)


if __name__ == "__main__":
    main()
