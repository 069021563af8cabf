"""A small AutoLFADS (PBT) run vs one model with default hyper-parameters on a simulated session.

Both train the demo preset on the same preprocessed session (8 muscles, 5 ms bins); each population
member gets the single model's epoch budget (`max_epochs`), selections every `--interval` epochs.
Reported: wall time, the best smoothed held-out (sample-validation) loss, and R^2 of the posterior
mean against the true activation (best affine map per muscle, averaged over muscles).

    python benchmarks/bench_pbt.py                       # population 4, embedded local Ray
    python benchmarks/bench_pbt.py --population 8 --ray-address 10.0.0.1:6379
Results are printed as one JSON object (and written to --out if given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    """Run both fits and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--interval", type=int, default=10, help="epochs between PBT selections")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the preset's)")
    ap.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    ap.add_argument("--carrier", type=float, nargs=2, default=(15.0, 50.0), help="EMG carrier band (Hz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--no-config-member", action="store_true",
                    help="draw every member from the space (no member starting at the preset's values)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from nwb_lfads_emg.lfads.config import preset
    from nwb_lfads_emg.metrics import r2_affine
    from nwb_lfads_emg.preprocess import PreprocessConfig, preprocess
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, true_activation_binned
    from nwb_lfads_emg.training.inference import infer
    from nwb_lfads_emg.training.pbt import fit_pbt
    from nwb_lfads_emg.training.search_space import autolfads_search_space
    from nwb_lfads_emg.training.trainer import fit

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(1)
    session = simulate_session(SimulationConfig(n_muscles=8, duration_s=args.duration, seed=args.seed,
                                                carrier_band_hz=tuple(args.carrier)))
    binned = preprocess(session.emg, session.emg_rate, PreprocessConfig(bin_ms=5.0))
    data = binned.data
    truth = true_activation_binned(session, binned.bin_rate)[: data.shape[0]]
    cfg = preset("demo")
    if args.epochs:
        cfg = dataclasses.replace(cfg, max_epochs=args.epochs)
    cfg = dataclasses.replace(cfg, num_threads=1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pbt_"))
    out: dict = {"session": {"muscles": data.shape[1], "bins": data.shape[0], "bin_rate": binned.bin_rate,
                             "duration_s": args.duration, "carrier_hz": list(args.carrier)},
                 "preset": "demo", "epochs_per_model": cfg.max_epochs, "cpu_count": os.cpu_count()}

    def score(model, config) -> float:
        inf = infer(model, data, config, n_samples=20, device="cpu", seed=0)
        return float(np.mean(r2_affine(inf.rates, truth)))

    if not args.skip_single:
        t0 = time.perf_counter()
        single = fit(data, cfg, work / "single", device="cpu", seed=args.seed, progress=False)
        wall = time.perf_counter() - t0
        out["single"] = {"wall_s": round(wall, 1), "best_val_loss": single.best_val_loss,
                         "epochs": len(single.metrics), "r2": score(single.model, single.config)}
        print(json.dumps({"single": out["single"]}), flush=True)

    # a small run: the AutoLFADS space, with learning rates around the demo's and short shifts
    space = autolfads_search_space({"lr": (1e-3, 2e-2), "temporal_shift_ms": (2.0, 10.0)})
    generations = max(1, cfg.max_epochs // args.interval)
    t0 = time.perf_counter()
    res = fit_pbt(data, cfg, work / "pbt", population=args.population, ray_address=args.ray_address,
                  cpus_per_trial=args.cpus_per_trial, max_generations=generations,
                  perturbation_interval=args.interval, seed=args.seed, progress=True, search_space=space,
                  start_from_config=not args.no_config_member)
    wall = time.perf_counter() - t0
    hist = res.pbt_history
    out["pbt"] = {"wall_s": round(wall, 1), "population": args.population, "interval": args.interval,
                  "member0_from_preset": not args.no_config_member,
                  "generations": hist["generations"], "exploits": len(hist["exploits"]),
                  "stop_reason": hist["stop_reason"], "best_val_loss": res.best_val_loss,
                  "best_trial_epoch": hist["winner"]["iteration"], "best_hp": hist["winner"]["hp"],
                  "r2": score(res.model, res.config), "plot": str(res.plot_path)}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
