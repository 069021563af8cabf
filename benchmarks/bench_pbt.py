"""AutoLFADS (PBT) vs one model, at equal epochs and at equal wall-clock budget, on a simulated session.

All runs train the same preset on the same preprocessed session (simulator defaults unless told
otherwise, 5 ms bins) with the same seed:

- `single`: one model, `--epochs` epochs (the preset's early stopping applies).
- `pbt_equal_epochs`: a population, every member `--epochs` epochs (generations of `--interval`).
  Member 0 trains the preset itself, so its best held-out loss is the single model's (printed as a check).
- `single_equal_wall`: one model given the wall time `pbt_equal_epochs` took (epochs scaled by the
  measured time per epoch).
- `pbt_equal_wall`: a population given the wall time `single` took (epochs per member scaled down).

Reported per run: wall time, epochs per model, the best smoothed held-out loss (what PBT selects on),
and R^2 of the posterior mean against the true activation (best affine map per muscle, mean over
muscles) on the whole session. Printed as one JSON object (and written to --out).

    nice -n 15 python benchmarks/bench_pbt.py --tiny            # a few minutes on 2 CPU cores
    python benchmarks/bench_pbt.py --population 8 --epochs 70 --ray-address 10.0.0.1:6379
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    """Run the four fits and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=None, help="default: sized for the device (4-6 on CPU)")
    ap.add_argument("--interval", type=int, default=5, help="epochs per PBT generation")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the preset's)")
    ap.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--tiny", action="store_true", help="30 s session, 20 epochs, small model widths (a quick check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--runs", default="single,pbt_equal_epochs,single_equal_wall,pbt_equal_wall",
                    help="which runs, comma-separated (split a long comparison over several calls)")
    ap.add_argument("--single-wall-s", type=float, default=None,
                    help="wall time of `single` measured earlier (for the equal-wall runs without `single`)")
    ap.add_argument("--pbt-wall-s", type=float, default=None,
                    help="wall time of `pbt_equal_epochs` measured earlier (for `single_equal_wall` without it)")
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
    duration = 30.0 if args.tiny and args.duration == 60.0 else args.duration
    session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=duration, seed=args.seed))
    binned = preprocess(session.emg, session.emg_rate, PreprocessConfig(bin_ms=5.0))
    data = binned.data
    truth = true_activation_binned(session, binned.bin_rate)[: data.shape[0]]
    cfg = preset(args.preset)
    if args.tiny:
        cfg = dataclasses.replace(cfg, gen_dim=32, con_dim=16, ic_enc_dim=16, ci_enc_dim=16, ic_dim=16,
                                  kl_increase_epoch=5, l2_increase_epoch=5)
    epochs = args.epochs or (20 if args.tiny else cfg.max_epochs)
    cfg = dataclasses.replace(cfg, max_epochs=epochs, num_threads=1, bin_ms=5.0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pbt_"))
    space = autolfads_search_space()
    out: dict = {"session": {"muscles": data.shape[1], "bins": data.shape[0], "bin_rate": binned.bin_rate,
                             "duration_s": duration, "simulator": f"defaults (seed {args.seed})"},
                 "preset": args.preset + (" (tiny widths)" if args.tiny else ""), "epochs": epochs,
                 "interval": args.interval, "cpu_count": os.cpu_count(), "load_before": os.getloadavg()[0]}

    def score(model, config) -> float:
        inf = infer(model, data, config, n_samples=10, device="cpu", seed=0)
        return round(float(np.mean(r2_affine(inf.rates, truth))), 4)

    def single(name: str, n_epochs: int) -> dict:
        c = dataclasses.replace(cfg, max_epochs=n_epochs)
        t0 = time.perf_counter()
        res = fit(data, c, work / name, device="cpu", seed=args.seed, progress=False)
        wall = time.perf_counter() - t0
        row = {"wall_s": round(wall, 1), "epochs": len(res.metrics), "best_val_loss": round(res.best_val_loss, 6),
               "best_epoch": res.best_epoch, "r2": score(res.model, res.config)}
        print(json.dumps({name: row}), flush=True)
        return row

    def pbt(name: str, n_epochs: int) -> dict:
        interval = max(1, min(args.interval, n_epochs // 2))
        generations = max(1, n_epochs // interval)
        c = dataclasses.replace(cfg, max_epochs=generations * interval)
        t0 = time.perf_counter()
        res = fit_pbt(data, c, work / name, population=args.population, ray_address=args.ray_address,
                      cpus_per_trial=args.cpus_per_trial, max_generations=generations, perturbation_interval=interval,
                      seed=args.seed, progress=False, search_space=space, patience_generations=10**6)
        wall = time.perf_counter() - t0
        hist = res.pbt_history
        ramp_end = max(c.kl_start_epoch + c.kl_increase_epoch, c.l2_start_epoch + c.l2_increase_epoch)
        anchor = hist["trials"]["member_00"]
        anchor_best = min((v for it, v in zip(anchor["iterations"], anchor["val_loss_smoothed"], strict=True)
                           if it >= ramp_end and v is not None), default=math.nan)
        row = {"wall_s": round(wall, 1), "population": hist["population"], "population_rule": hist["population_rule"],
               "epochs_per_member": generations * interval, "generations": hist["generations"],
               "exploits": len(hist["exploits"]), "best_val_loss": round(res.best_val_loss, 6),
               "preset_member_best_val_loss": round(anchor_best, 6), "winner": hist["winner"]["trial"],
               "winner_epoch": hist["winner"]["iteration"], "winner_hp": hist["winner"]["hp"],
               "r2": score(res.model, res.config)}
        print(json.dumps({name: row}), flush=True)
        return row

    runs = set(args.runs.split(","))
    if "single" in runs:
        out["single"] = single("single", epochs)
    if "pbt_equal_epochs" in runs:
        out["pbt_equal_epochs"] = pbt("pbt_equal_epochs", epochs)
    single_wall = out["single"]["wall_s"] if "single" in out else args.single_wall_s
    pbt_wall = out["pbt_equal_epochs"]["wall_s"] if "pbt_equal_epochs" in out else args.pbt_wall_s
    if "single_equal_wall" in runs:  # one model given the population's wall time
        if not single_wall or not pbt_wall:
            raise SystemExit("single_equal_wall needs the wall times of single and pbt_equal_epochs")
        wall_epochs = int(min(10 * epochs, max(epochs, round(epochs * pbt_wall / single_wall))))
        out["single_equal_wall"] = single("single_equal_wall", wall_epochs)
    if "pbt_equal_wall" in runs:  # a population given one model's wall time
        if not single_wall or not pbt_wall:
            raise SystemExit("pbt_equal_wall needs the wall times of single and pbt_equal_epochs")
        out["pbt_equal_wall"] = pbt("pbt_equal_wall", max(2, int(epochs * single_wall / pbt_wall)))
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
