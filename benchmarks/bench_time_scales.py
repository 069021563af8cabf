"""Does the time-scale selection's criterion (held-out R^2 of hidden cells, no truth) rank candidates as the truth does?

For each session, `timescales.select_time_scales` trains its candidates; each candidate's rates (on the
common time base, held-out cells hidden) are then scored against what the selection never sees: the
true activation (simulator; R^2 after an affine map, mean over muscles) or the measured behaviour (real
recordings: cross-validated lagged linear decoding R^2 of the knee angle or force). A criterion that
works puts its best held-out R^2 on (or near) the best truth/behaviour score.

    python benchmarks/bench_time_scales.py                       # simulator both tasks + 3 UCI sessions
    python benchmarks/bench_time_scales.py --sim motor_units:isometric --real none --seeds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT.parent / "shared" / "data"


def _probe(src: Path) -> tuple[np.ndarray, float, object]:
    from nwb_lfads_emg.pipeline import JobConfig, read

    job = JobConfig()
    emg, _ = read(src, None, None, replace(job.preprocess, bin_ms=2.0, clip_percentile=None))
    b = emg.binned
    return np.asarray(b.data, dtype=np.float64) * np.asarray(b.scale)[None, :], 1000.0 / b.bin_rate, job.preprocess


def _cells(x: np.ndarray, per: int, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return x[: n * per].reshape(n, per, x.shape[1]).mean(1)


def check(label: str, src: Path, reference: np.ndarray, reference_rate: float, kind: str, steps: int) -> None:
    from nwb_lfads_emg.metrics import decode_r2, r2_affine
    from nwb_lfads_emg.timescales import select_time_scales

    t0 = time.perf_counter()
    rect, probe_ms, prep = _probe(src)
    trace: list = []
    chosen = select_time_scales(rect, probe_ms, prep, steps=steps, trace=trace)
    cell_ms = chosen["common_bin_ms"]
    per = int(round(cell_ms / 1000.0 * reference_rate))
    parts = []
    for cand, (bin_ms, pred) in zip(chosen["candidates"], trace, strict=True):
        n = min(pred.shape[0], reference.shape[0] // per)
        ref = _cells(reference, per, n)
        if kind == "truth":
            score = float(r2_affine(pred[:n], ref).mean())
        else:
            score = float(np.mean(decode_r2(pred[:n], ref, 1000.0 / cell_ms)))
        parts.append(f"{bin_ms:g} ms: held-out {cand['held_out_r2']:.3f} / {kind} {score:.3f}")
    print(f"{label:<28} chose {chosen['bin_ms']:g} ms / {chosen['segment_ms'] / 1000:g} s | " + "; ".join(parts)
          + f" | {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sim", nargs="*", default=["motor_units:locomotion", "motor_units:isometric"])
    p.add_argument("--real", nargs="*", default=["3Apie", "3Asen", "3Amar"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    from real_nwb import elderly_to_nwb, uci_to_nwb

    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for spec in ([] if args.sim == ["none"] else args.sim):
            label, task = spec.split(":")
            model, _, band = label.partition("-")
            extra = {"carrier_band_hz": tuple(float(f) for f in band.split("-"))} if band else {}
            for seed in args.seeds:
                s = simulate_session(SimulationConfig(emg_model=model, task=task, seed=seed, duration_s=60.0, **extra))
                src = write_session_nwb(s, work / f"{label}_{task}_{seed}.nwb")
                check(f"sim {label} {task} {seed}", src, s.activation, s.emg_rate, "truth", args.steps)
        for name in ([] if args.real == ["none"] else args.real):
            if name.startswith("subject"):
                subject, task = name.split(":")
                npz = np.load(DATA / "elderly-isometric" / f"{subject}.npz")
                src = elderly_to_nwb(DATA / "elderly-isometric" / f"{subject}.npz", task, work / f"{name}.nwb")
                ref, rate = npz["force"][:, ["VL", "BF", "TA", "LG"].index(task)], float(npz["fs"])
            else:
                npz = np.load(DATA / "uci-lower-limb" / f"{name}.npz")
                src = uci_to_nwb(DATA / "uci-lower-limb" / f"{name}.npz", work / f"{name}.nwb")
                ref, rate = npz["knee_deg"], 1000.0
            check(name, src, np.asarray(ref, dtype=np.float64), rate, "decode", args.steps)


if __name__ == "__main__":
    main()
