"""Accuracy as a user would see it: default options (`run`, auto preset) on real recordings and the simulator.

Real recordings (../shared/data): each is converted to NWB (tests/real_nwb.py), annotated by
`pipeline.run` with default options, and evaluated by `evaluate_file`: cross-validated decoding R^2
of the measured behaviour (knee angle; load-cell force) from each estimate. Simulator: R^2 against
the true activation (affine map per muscle, mean over muscles) for both EMG models and tasks.
Methods: AutoLFADS (auto preset), LowPass (cutoff chosen from the EMG alone), BayesianFilter
(parameters by maximum marginal likelihood), LowPassOracle (cutoff picked WITH the truth or the
behaviour: an upper reference, not a method a user can run).

    python benchmarks/bench_accuracy.py                         # everything (long on 2 CPU cores)
    python benchmarks/bench_accuracy.py --real 3Amar 3Apie --sim none
    python benchmarks/bench_accuracy.py --real none --sim motor_units:locomotion carrier-20-80:isometric --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT.parent / "shared" / "data"
METHODS = ("AutoLFADS", "LowPass", "BayesianFilter", "LowPassOracle")


ROWS: list[tuple[str, dict[str, float], float, str]] = []


def _row(label: str, scores: dict[str, float], seconds: float, extra: str = "") -> None:
    ROWS.append((label, scores, seconds, extra))
    cells = "  ".join(f"{scores.get(m, float('nan')):>13.3f}" for m in METHODS)
    print(f"{label:<34} {cells}  {seconds:7.0f} s  {extra}", flush=True)


def _markdown() -> str:
    """The table as the README shows it: best per row in bold, AutoLFADS' margin over each baseline."""
    head = "| session | " + " | ".join(METHODS) + " | AutoLFADS - LowPass / Bayes / oracle | time scales |"
    lines = [head, "|" + "---|" * (len(METHODS) + 3)]
    for label, scores, seconds, extra in ROWS:
        best = max(METHODS, key=lambda m: scores.get(m, float("-inf")))
        cells = [f"**{scores[m]:.3f}**" if m == best else f"{scores.get(m, float('nan')):.3f}" for m in METHODS]
        a = scores.get("AutoLFADS", float("nan"))
        margins = " / ".join(f"{a - scores.get(m, float('nan')):+.3f}" for m in METHODS[1:])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {margins} | {extra}, {seconds:.0f} s |")
    return "\n".join(lines)


def _time_scales(record: dict) -> str:
    ts = record["job"]["time_scales"]
    text = f"bins {ts['bin_ms']:g} ms, segments {ts['segment_ms'] / 1000:g} s"
    if ts.get("candidates"):
        text += " (held-out R^2 " + ", ".join(f"{c['bin_ms']:g} ms {c['held_out_r2']:.3f}"
                                              for c in ts["candidates"]) + ")"
    return text + f", {len(record['metrics'])} epochs"


def _scores(table: object, analysis: str, target: str | None) -> dict[str, float]:
    t = table[table.analysis == analysis]  # type: ignore[index]
    if target is not None:
        t = t[t.target == target]
    return t.groupby("method").r2.mean().to_dict()


def _annotate(src: Path, work: Path, max_epochs: int | None, seed: int) -> tuple[Path, dict]:
    import json

    from nwb_lfads_emg.pipeline import JobConfig, run

    out = work / (src.stem + "_annotated.nwb")
    run(src, work / (src.stem + "_run"), out=out, overwrite=True,
        job=JobConfig(seed=seed, max_epochs=max_epochs, progress=False))
    record = json.loads((work / (src.stem + "_run") / "job.json").read_text())
    return out, record


def bench_real(names: list[str], work: Path, max_epochs: int | None) -> None:
    from real_nwb import elderly_to_nwb, uci_to_nwb

    from nwb_lfads_emg.evaluate import evaluate_file

    for name in names:
        t0 = time.perf_counter()
        if name.startswith("subject"):
            subject, task = name.split(":")
            src = elderly_to_nwb(DATA / "elderly-isometric" / f"{subject}.npz", task, work / f"{subject}_{task}.nwb")
            target = "force"
        else:
            src = uci_to_nwb(DATA / "uci-lower-limb" / f"{name}.npz", work / f"{name}.nwb")
            target = "knee_angle"
        out, record = _annotate(src, work, max_epochs, 0)
        table = evaluate_file(out)
        _row(f"{name} decode {target}", _scores(table, "decode_linear", target), time.perf_counter() - t0,
             _time_scales(record))


def bench_sim(specs: list[str], seeds: list[int], work: Path, max_epochs: int | None) -> None:
    from nwb_lfads_emg.evaluate import evaluate_file
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

    for spec in specs:
        label, task = spec.split(":")
        model, _, band = label.partition("-")  # "carrier-30-250": the carrier model with that band (Hz)
        extra = {"carrier_band_hz": tuple(float(f) for f in band.split("-"))} if band else {}
        for seed in seeds:
            t0 = time.perf_counter()
            cfg = SimulationConfig(emg_model=model, task=task, seed=seed, duration_s=60.0, **extra)
            src = write_session_nwb(simulate_session(cfg), work / f"sim_{label}_{task}_{seed}.nwb")
            out, record = _annotate(src, work, max_epochs, 0)
            table = evaluate_file(out)
            _row(f"sim {label} {task} seed {seed}", _scores(table, "vs_truth", None), time.perf_counter() - t0,
                 _time_scales(record))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", nargs="*", default=["3Amar", "3Asen", "3Apie", "5Nmar", "5Npie", "5Nsen", "subject01:VL",
                                                "subject02:VL"])
    p.add_argument("--sim", nargs="*", default=["motor_units:locomotion", "motor_units:isometric",
                                                "carrier-30-250:locomotion", "carrier-30-250:isometric",
                                                "carrier-20-80:locomotion", "carrier-20-80:isometric"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, default=None, help="cap the auto preset's epochs (default: none)")
    args = p.parse_args()
    real = [] if args.real == ["none"] else args.real
    sims = [] if args.sim == ["none"] else args.sim
    print(f"{'session (R^2)':<34} " + "  ".join(f"{m:>13}" for m in METHODS) + "     time", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_real(real, work, args.max_epochs)
        bench_sim(sims, args.seeds, work, args.max_epochs)
    print("\n" + _markdown(), flush=True)


if __name__ == "__main__":
    main()
