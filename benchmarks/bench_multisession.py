"""Stitching: one LFADS trained on several sessions vs a model per session, and adapting to a new one.

Sessions from `simulate_sessions` (one animal's locomotor pattern generator; each session 20 s,
its own 6-8 of 10 muscles, electrode gains and cross-talk; simulator defaults otherwise). For each
of `--seeds` simulator seeds: a model per training session (same preset and epochs), one stitched
model on the first `--train` sessions, then `adapt` (the held-out last session's read-in/read-out
and its own copy of the encoders and controller trained, the shared generator and factor map
frozen) and, for that session, a model trained on it alone. R^2 against the true activation (best affine map per muscle, mean over muscles, 5 ms bins),
beside the best low-pass (cutoff chosen with the truth) and the Bayesian filter; training cost in CPU
seconds (one thread, so comparable under load) and epochs run.

    python benchmarks/bench_multisession.py                        # the test's settings (40 epochs), 3 seeds
    python benchmarks/bench_multisession.py --epochs 70 --compare-adapt --seeds 0 1 2 3 4
    python benchmarks/bench_multisession.py --seeds 0 & python benchmarks/bench_multisession.py --seeds 1 2
    python benchmarks/bench_multisession.py --samples 20 --save runs/bench   # as the product outputs; keep the models
    python benchmarks/bench_multisession.py --load runs/bench --compare-adapt --no-baselines   # adapt again only

A stitched epoch is one pass over all its sessions' segments in batches of the preset's size (each
batch mixed over the sessions), as a per-session epoch is over one session's: four sessions give four
times the steps of a per-session epoch, and about four times its cost (the `cpu_*` columns).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from nwb_lfads_emg.baselines.bayes import bayes_filter
from nwb_lfads_emg.baselines.lowpass import lowpass_envelope
from nwb_lfads_emg.lfads.config import preset
from nwb_lfads_emg.lfads.model import LFADS
from nwb_lfads_emg.metrics import r2_affine
from nwb_lfads_emg.preprocess import PreprocessConfig, preprocess, rectify_highpass
from nwb_lfads_emg.simulate import true_activation_binned
from nwb_lfads_emg.simulate_sessions import SessionSetConfig, simulate_sessions
from nwb_lfads_emg.training.inference import infer
from nwb_lfads_emg.training.multisession import adapt, export_multisession, fit_sessions, load_multisession
from nwb_lfads_emg.training.trainer import Trainer

CUTOFFS = (3, 4, 6, 8, 10, 12, 15, 20, 25)


def _binmean(x: np.ndarray, factor: int, n: int) -> np.ndarray:
    m = x.shape[0] // factor
    return x[: m * factor].reshape(m, factor, -1).mean(1)[:n]


def single(data: np.ndarray, config, seed: int) -> tuple[torch.nn.Module, float, int]:
    """A per-session model trained the way `fit` trains it (early stopping, best weights); CPU seconds, epochs run."""
    t0 = time.process_time()
    trainer = Trainer(data, config, device="cpu", seed=seed)
    while trainer.epoch < config.max_epochs and not trainer.should_stop:
        trainer.train_epoch()
    trainer.model.load_state_dict(trainer.best_model_state())
    return trainer.model.eval(), time.process_time() - t0, trainer.epoch


def single_cached(data: np.ndarray, config, seed: int, path: Path | None, load: bool) -> tuple[torch.nn.Module, float, int]:
    """`single`, or the model a --save run wrote to `path` (--load); with --save, writes it there."""
    if load and path is not None:
        payload = torch.load(path, weights_only=True)
        model = LFADS(config, data.shape[1])
        model.load_state_dict(payload["state_dict"])
        return model.eval(), 0.0, int(payload["epochs"])
    model, seconds, epochs = single(data, config, seed)
    if path is not None:
        torch.save({"state_dict": model.state_dict(), "epochs": epochs}, path)
    return model, seconds, epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=4, help="sessions the stitched model trains on")
    ap.add_argument("--epochs", type=int, default=40, help="per model (the test's 40)")
    ap.add_argument("--single-epochs", type=int, default=None, help="per-session models (default: --epochs)")
    ap.add_argument("--adapt-epochs", type=int, default=None, help="default: --epochs")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--readout-tie", type=float, default=None,
                    help="the stitched model's read-out tie (LFADSConfig.readout_tie; default: the preset's)")
    ap.add_argument("--samples", type=int, default=1,
                    help="posterior samples at inference, every model column alike (1, the test's: no sampling, the "
                         "posterior means of the latents; the product writes the mean of POSTERIOR_SAMPLES = 20)")
    ap.add_argument("--compare-adapt", action="store_true",
                    help="also adapt as the previous release did: only the read-in/read-out fitted (the shared "
                         "encoders and controller used as they are)")
    ap.add_argument("--same-factors", action="store_true",
                    help="also a per-session model with as many factors as the stitched one (column single_same_f)")
    ap.add_argument("--save", type=Path, default=None,
                    help="write each seed's stitched model (before adapting) and per-session models to this folder")
    ap.add_argument("--load", type=Path, default=None,
                    help="take the stitched and per-session models from a --save folder instead of training them "
                         "(to compare ways of adapting; cpu columns then 0)")
    ap.add_argument("--no-baselines", dest="baselines", action="store_false",
                    help="skip the low-pass and Bayesian filter columns")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = preset(args.preset)
    config.max_epochs = args.epochs
    if args.readout_tie is not None:
        config.readout_tie = args.readout_tie
    single_config = copy.deepcopy(config)
    single_config.max_epochs = args.single_epochs or args.epochs
    prep = PreprocessConfig()
    rows = []
    for seed in args.seeds:
        sims = simulate_sessions(SessionSetConfig(n_sessions=args.train + 1, duration_s=args.duration, seed=seed))
        binned = [preprocess(s.emg, s.emg_rate, prep) for s in sims]
        truths = [true_activation_binned(s, b.bin_rate)[: b.data.shape[0]] for s, b in zip(sims, binned, strict=True)]
        data = [b.data for b in binned]

        def score(est: np.ndarray, k: int, truths: list = truths) -> float:
            return float(r2_affine(est, truths[k]).mean())

        t0 = time.process_time()
        if args.load is not None:
            stitched = SimpleNamespace(model=load_multisession(args.load / f"seed{seed}_stitched.pt"), metrics=[])
        else:
            stitched = fit_sessions(data[: args.train], [s.muscle_names for s in sims[: args.train]], config, None,
                                    device="cpu", seed=0, progress=False)
        t_stitch = time.process_time() - t0
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            export_multisession(args.save / f"seed{seed}_stitched.pt", stitched.model)
        held = args.train
        plain = copy.deepcopy(stitched.model)  # adapted with the read-in/read-out only, for comparison
        t0 = time.process_time()
        index, adapted = adapt(stitched.model, data[held], sims[held].muscle_names, device="cpu", seed=0,
                               progress=False, max_epochs=args.adapt_epochs)
        t_adapt = time.process_time() - t0
        if args.compare_adapt:
            adapt(plain, data[held], sims[held].muscle_names, device="cpu", seed=0, progress=False,
                  max_epochs=args.adapt_epochs, fit_encoders=False)
        for k, sim in enumerate(sims):
            folder = args.load if args.load is not None else args.save
            model, t_single, ep_single = single_cached(data[k], single_config, 0,
                                                       folder / f"seed{seed}_single{k}.pt" if folder else None,
                                                       args.load is not None)
            row = {"seed": seed, "session": k, "muscles": len(sim.muscle_names),
                   "single": score(infer(model, data[k], config, n_samples=args.samples, device="cpu").rates, k),
                   "cpu_single": t_single, "ep_single": ep_single}
            view = stitched.model.session_view(index if k == held else k)
            row["stitched" if k < held else "adapt"] = score(
                infer(view, data[k], config, n_samples=args.samples, device="cpu").rates, k)
            row["cpu_stitched" if k < held else "cpu_adapt"] = t_stitch if k < held else t_adapt
            row["ep_stitched" if k < held else "ep_adapt"] = len((stitched if k < held else adapted).metrics)
            if args.same_factors:
                wide = copy.deepcopy(single_config)
                wide.fac_dim = stitched.model.config.fac_dim
                model_f, row["cpu_single_same_f"], _ = single(data[k], wide, seed=0)
                row["single_same_f"] = score(infer(model_f, data[k], config, n_samples=args.samples,
                                                   device="cpu").rates, k)
            if k == held and args.compare_adapt:
                row["adapt_readinout_only"] = score(infer(plain.session_view(index), data[k], config,
                                                         n_samples=args.samples, device="cpu").rates, k)
            if args.baselines:
                rect = rectify_highpass(sim.emg, sim.emg_rate, prep)
                factor, n = int(round(sim.emg_rate / binned[k].bin_rate)), data[k].shape[0]
                row["lowpass"] = max(score(_binmean(lowpass_envelope(rect, sim.emg_rate, c), factor, n), k)
                                     for c in CUTOFFS)
                row["bayes"] = score(_binmean(bayes_filter(rect, sim.emg_rate), factor, n), k)
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    import pandas as pd

    table = pd.DataFrame(rows)
    print(f"\npreset {args.preset}, readout_tie {config.readout_tie:g}, {args.epochs} epochs (per-session: at most {single_config.max_epochs}), {args.duration:.0f} s sessions, stitched on {args.train}:")
    print(table.round(3).to_string(index=False))
    gain = table["stitched"] - table["single"]
    print(f"stitched - single: min {gain.min():.3f}, mean {gain.mean():.3f}")
    gain_a = (table["adapt"] - table["single"]).dropna()
    print(f"adapt - single (held-out session): min {gain_a.min():.3f}, mean {gain_a.mean():.3f}")


if __name__ == "__main__":
    main()
