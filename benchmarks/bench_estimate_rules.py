"""Which checkpoint(s) make the estimate: rules scored after the fact from one training run per recording and seed.

On short real recordings the decoding R^2 of one model moves by 0.1-0.2 between neighbouring epochs, so rules
that differ by a few hundredths cannot be told apart from separate runs. This trains once per (UCI recording,
training seed) at the auto preset's chosen time scales, keeps every epoch's posterior-mean rates (and the
trainer's exported weights), and scores each rule on the same run; the knee angle is used for scoring only:
- best epoch: the weights of the epoch the SE stop kept (`average_weights` off);
- weight average: the weights the trainer exports with `average_weights` (the auto preset's default);
- rate average: the mean of the rates of the same epochs (an ensemble; not a model the product exports);
- every epoch after the ramps: mean and SD of their single-epoch scores (the spread a single run draws from);
- LowPassOracle: the low-pass whose cutoff was picked with the knee angle (an upper reference).

    python benchmarks/bench_estimate_rules.py                                  # 3A* and 5N*, seeds 0 and 1
    python benchmarks/bench_estimate_rules.py --real 3Apie --seeds 0 --max-epochs 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT.parent / "shared" / "data" / "uci-lower-limb"
RULES = ("best epoch", "weight average", "rate average", "epochs after ramps", "LowPassOracle")


def _oracle(npz: dict, bin_samples: int, n_bins: int, knee: np.ndarray, rate: float, preprocess: object) -> float:
    """Best knee-angle decoding over the low-pass cutoffs the product searches (picked with the behaviour)."""
    from nwb_lfads_emg.baselines.lowpass import lowpass_envelope
    from nwb_lfads_emg.baselines.tuning import CV_CUTOFFS
    from nwb_lfads_emg.metrics import decode_r2
    from nwb_lfads_emg.preprocess import rectify_highpass

    fs = float(npz["fs"])
    rectified = rectify_highpass(np.asarray(npz["emg"], np.float64), fs, preprocess)
    scores = []
    for cutoff in CV_CUTOFFS:
        if cutoff < rate / 2:
            env = lowpass_envelope(rectified, fs, cutoff)[: n_bins * bin_samples]
            scores.append(float(decode_r2(env.reshape(n_bins, bin_samples, -1).mean(axis=1), knee, rate).mean()))
    return max(scores)


def score_run(name: str, seed: int, work: Path, max_epochs: int | None) -> dict[str, object]:
    """Train once on recording `name` with training seed `seed`; every rule's knee-angle decoding R^2."""
    import torch
    from real_nwb import uci_to_nwb

    from nwb_lfads_emg.lfads.model import LFADS
    from nwb_lfads_emg.metrics import decode_r2
    from nwb_lfads_emg.pipeline import JobConfig, choose_job_time_scales, lfads_config, read
    from nwb_lfads_emg.training.inference import infer
    from nwb_lfads_emg.training.trainer import Trainer

    torch.set_num_threads(1)
    src = work / f"{name}.nwb"
    if not src.exists():
        uci_to_nwb(DATA / f"{name}.npz", src)
    job = JobConfig(seed=seed, progress=False, max_epochs=max_epochs)
    choose_job_time_scales(src, None, None, job)
    bin_ms = float(job.preprocess.bin_ms)
    emg, _ = read(src, None, None, job.preprocess)
    data = np.asarray(emg.binned.data, np.float32)
    config = lfads_config(job, *data.shape, bin_ms=bin_ms)
    config.average_weights = True  # the export under test; the best epoch's weights are kept below
    npz = dict(np.load(DATA / f"{name}.npz"))
    fs, rate = float(npz["fs"]), 1000.0 / bin_ms
    k = int(round(bin_ms * fs / 1000))
    n_bins = min(data.shape[0], len(npz["knee_deg"]) // k)
    knee = npz["knee_deg"][: n_bins * k].reshape(n_bins, k).mean(axis=1)

    def r2(rates: np.ndarray) -> float:
        return float(decode_r2(np.asarray(rates[:n_bins]), knee, rate).mean())

    def rates_of(state: dict) -> np.ndarray:
        model = LFADS(config, data.shape[1])
        model.load_state_dict(state)
        model.eval()
        return np.asarray(infer(model, data, config, n_samples=1, device="cpu", seed=0).rates, np.float32)

    trainer = Trainer(data, config, device="cpu", seed=seed, breaks=[a for a, _ in emg.binned.segment_ranges[1:]])
    per_epoch: list[np.ndarray] = []
    averaged: list[int] = []  # the epochs in the exported average
    best_weights: dict | None = None
    while trainer.epoch < config.max_epochs and not trainer.should_stop:
        count = trainer.best_count
        metrics = trainer.train_epoch()
        per_epoch.append(rates_of(trainer.model.state_dict()))
        if trainer.best_epoch == trainer.epoch:
            averaged, best_weights = [trainer.epoch], {n: v.clone() for n, v in trainer.best_state.items()}
        elif trainer.best_count > count:
            averaged.append(trainer.epoch)
        print(f"  {name} seed {seed} epoch {trainer.epoch}: held-out {metrics['val_loss_smoothed']:.4f} "
              f"(SE {metrics.get('val_se', float('nan')):.4f}), best {trainer.best_epoch}, averaged {len(averaged)}",
              flush=True)
    after = [r2(r) for r in per_epoch[trainer.ramp_end - 1:]] or [float("nan")]
    return {
        "best epoch": r2(rates_of(best_weights)) if best_weights is not None else float("nan"),
        "weight average": r2(rates_of(trainer.best_state)),
        "rate average": r2(np.mean([per_epoch[e - 1] for e in averaged], axis=0)),
        "epochs after ramps": (float(np.mean(after)), float(np.std(after))),
        "LowPassOracle": _oracle(npz, k, n_bins, knee, rate, job.preprocess),
        "extra": f"{bin_ms:g} ms bins, {trainer.epoch} epochs, best {trainer.best_epoch}, {len(averaged)} averaged",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", nargs="*", default=["3Amar", "3Apie", "3Asen", "5Nmar", "5Npie", "5Nsen"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--max-epochs", type=int, default=None, help="cap the auto preset's epochs (default: none)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    lines = ["| run | " + " | ".join(RULES) + " | run |", "|" + "---|" * (len(RULES) + 2)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.real:
            for seed in args.seeds:
                t0 = time.perf_counter()
                s = score_run(name, seed, work, args.max_epochs)
                mean, sd = s["epochs after ramps"]  # type: ignore[misc]
                cells = [f"{s[r]:.3f}" for r in RULES[:3]] + [f"{mean:.3f} +- {sd:.3f}", f"{s['LowPassOracle']:.3f}"]
                lines.append(f"| {name} seed {seed} | " + " | ".join(cells) +
                             f" | {s['extra']}, {time.perf_counter() - t0:.0f} s |")
                print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
