"""Benchmark: how much room the simulator leaves above the oracle low-pass, for any estimator.

Issue 13 asks AutoLFADS to beat the oracle low-pass (cutoff picked WITH the truth) by 0.02 R^2 on the
motor-unit simulator's default settings. This script measures, per task and simulator seed, on the same
bins and metric as `bench_accuracy.py` (R^2 after the best affine map per muscle, mean over muscles):

- oracle low-pass: the best of a grid of cutoffs, picked with the truth;
- truth-fitted decoders: ridge regression and a small MLP mapping every muscle's low-pass envelopes (five
  cutoffs, lags +-0.2 s) to every muscle's true activation, FITTED ON THE TRUTH of one half of the session and
  scored on the other half (2-fold). They see the truth; an EMG-only method such as LFADS does not;
- the truth's own low-pass at the oracle's cutoff: the part of the truth that cutoff removes (its bias alone).

    python benchmarks/bench_headroom.py [--seeds 0 1 2] [--tasks locomotion isometric] [--emg-model motor_units]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CUTOFFS_HZ = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)
FEATURE_CUTOFFS_HZ = (1, 3, 8, 20, 30)
BIN_RATE = 125.0  # 8 ms bins: what the auto preset chose on these sessions (bench_accuracy.py)


def _halves(n: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    h = n // 2
    return (np.arange(0, h), np.arange(h, n)), (np.arange(h, n), np.arange(0, h))


def _ridge(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, alpha: float = 30.0) -> np.ndarray:
    a = np.c_[x[train], np.ones(len(train))]
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ y[train])
    return np.c_[x[test], np.ones(len(test))] @ w


def _mlp(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two hidden layers of 128, AdamW, early stopping on the last fifth of the training half."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.GELU(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.Linear(128, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    n_fit = int(len(train) * 0.8)
    fit, val = torch.tensor(train[:n_fit]), torch.tensor(train[n_fit:])
    best, state, waited = np.inf, None, 0
    for _ in range(400):
        net.train()
        order = fit[torch.randperm(len(fit))]
        for k in range(0, len(order), 256):
            idx = order[k:k + 256]
            loss = ((net(xt[idx]) - yt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(((net(xt[val]) - yt[val]) ** 2).mean())
        if val_loss < best:
            best, state, waited = val_loss, {k: v.clone() for k, v in net.state_dict().items()}, 0
        elif (waited := waited + 1) > 30:
            break
    assert state is not None
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        return net(xt[torch.tensor(test)]).numpy()


def headroom(task: str, seed: int, emg_model: str) -> dict[str, float]:
    """The oracle low-pass, the truth-fitted decoders and the oracle cutoff's bias on one simulated session."""
    from nwb_lfads_emg.baselines.lowpass import lowpass_envelope
    from nwb_lfads_emg.metrics import r2_affine
    from nwb_lfads_emg.preprocess import bin_like, rectify_highpass
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, true_activation_binned

    session = simulate_session(SimulationConfig(task=task, seed=seed, emg_model=emg_model))
    rect = np.abs(rectify_highpass(session.emg, session.emg_rate))
    truth = true_activation_binned(session, BIN_RATE)
    n = min(truth.shape[0], rect.shape[0] // int(round(session.emg_rate / BIN_RATE)))
    truth = truth[:n]
    envelopes = {c: bin_like(lowpass_envelope(rect, session.emg_rate, c), session.emg_rate, BIN_RATE, n)
                 for c in CUTOFFS_HZ}
    scores = {c: float(r2_affine(env, truth).mean()) for c, env in envelopes.items()}
    oracle = max(scores, key=scores.__getitem__)
    feats = np.concatenate([envelopes[c] for c in FEATURE_CUTOFFS_HZ], axis=1)
    feats = (feats - feats.mean(0)) / feats.std(0)
    lags = np.concatenate([np.roll(feats, 2 * k, axis=0) for k in range(-12, 13)], axis=1)  # +-0.2 s
    y = (truth - truth.mean(0)) / truth.std(0)
    ridge, mlp = np.zeros_like(y), np.zeros_like(y)
    for train, test in _halves(n):
        ridge[test] = _ridge(lags, y, train, test)
        mlp[test] = _mlp(lags, y, train, test)
    return {"oracle_hz": float(oracle), "oracle": scores[oracle],
            "ridge": float(r2_affine(ridge, truth).mean()), "mlp": float(r2_affine(mlp, truth).mean()),
            "truth_lowpassed": float(r2_affine(lowpass_envelope(truth, BIN_RATE, oracle), truth).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["locomotion", "isometric"])
    parser.add_argument("--emg-model", default="motor_units")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print("| session | oracle low-pass | truth-fitted ridge | truth-fitted MLP | best truth-fitted - oracle "
          "| truth low-passed at the oracle's cutoff | s |\n|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for seed in args.seeds:
            t = time.perf_counter()
            r = headroom(task, seed, args.emg_model)
            gain = max(r["ridge"], r["mlp"]) - r["oracle"]
            print(f"| {args.emg_model} {task} seed {seed} | {r['oracle']:.4f} ({r['oracle_hz']:g} Hz) | {r['ridge']:.4f} "
                  f"| {r['mlp']:.4f} | {gain:+.4f} | {r['truth_lowpassed']:.4f} | {time.perf_counter() - t:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
