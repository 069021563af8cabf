"""Speed of the Bayesian filter on 1 h x 16 channels of rectified EMG at 1 kHz, on one thread.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_bayes_filter.py
(the script also sets these before importing numpy). Goal: under 10 s.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from nwb_lfads_emg.baselines.bayes import bayes_filter  # noqa: E402


def synthetic_rectified(duration_s: float, n_ch: int, rate: float, seed: int = 0) -> np.ndarray:
    """Rectified, activation-modulated Laplace noise: |noise| * (0.05 + slow drive in [0, 1])."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * rate)
    t = np.arange(n) / rate
    phase = rng.uniform(0, 2 * np.pi, n_ch)
    drive = 0.5 + 0.5 * np.sin(2 * np.pi * 1.0 * t[:, None] + phase[None, :])
    return (np.abs(rng.laplace(size=(n, n_ch))) * (0.05 + drive)).astype(np.float32)


def main() -> None:
    """Time `bayes_filter` with its defaults and print samples per second."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration-s", type=float, default=3600.0)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--n-levels", type=int, default=50)
    args = p.parse_args()
    x = synthetic_rectified(args.duration_s, args.channels, args.rate)
    t0, c0 = time.perf_counter(), time.process_time()
    y = bayes_filter(x, args.rate, n_levels=args.n_levels)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert y.shape == x.shape and np.all(np.isfinite(y))
    print(
        f"bayes_filter: {args.duration_s:.0f} s x {args.channels} ch at {args.rate:.0f} Hz, "
        f"{args.n_levels} levels: {dt:.2f} s wall, {cpu:.2f} s CPU "
        f"({x.size / cpu / 1e6:.1f} M samples per CPU-second, one thread; wall > CPU when the machine is shared)"
    )


if __name__ == "__main__":
    main()
