"""The CUDA path timed against the CPU, side by side in one run, on a motor-unit session and a long recording.

1. Training throughput: seconds per epoch and segments per second of the auto preset's two sizes (CPU: demo
   widths; CUDA: default widths) on the CPU (all cores, and one thread as the CPU preset runs) and on CUDA.
2. The whole default path on CUDA (`run`'s steps without the write-back: time-scale selection, training to
   its end, inference) on a 60 s motor-unit locomotion session: R^2 against the true activation, wall time.
3. Inference over a long recording (32 channels, 5 ms bins): CPU against CUDA, same model, same bins.

    python benchmarks/bench_cuda.py --out cuda.json            # on a machine with a GPU
    python benchmarks/bench_cuda.py --device cpu --quick        # the script itself, on a CPU (seconds)
Results print as they come and accumulate in --out (JSON), so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nwb_lfads_emg.lfads.auto import auto_config  # noqa: E402
from nwb_lfads_emg.training.trainer import Trainer  # noqa: E402

RESULTS: dict = {}


def _save(out: Path | None, key: str, value: object) -> None:
    RESULTS[key] = value
    print(f"{key}: {json.dumps(value, default=str)}", flush=True)
    if out is not None:
        out.write_text(json.dumps(RESULTS, indent=1, default=str))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _session(seed: int, duration_s: float):
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session

    return simulate_session(SimulationConfig(seed=seed, duration_s=duration_s))  # the simulator's defaults


def _epoch_seconds(data: np.ndarray, cfg, dev: str, threads: int | None, epochs: int) -> tuple[float, int]:
    """Mean seconds of `epochs` training epochs after one warm-up epoch, and the segments an epoch trains."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        trainer = Trainer(data, cfg, dev, seed=0)
        trainer.train_epoch()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(epochs):
            trainer.train_epoch()
        _sync(dev)
        return (time.perf_counter() - t0) / epochs, min(trainer.n_train_segments, cfg.epoch_segments or 1 << 62)
    finally:
        torch.set_num_threads(saved)


def throughput(sessions: dict[str, tuple[np.ndarray, float, float]], device: str, epochs: int,
               out: Path | None) -> None:
    """Seconds per training epoch of the auto preset's sizes on one CPU thread (as the CPU preset runs) and
    on CUDA in fp32 (the default) and bf16 autocast, side by side on the same data."""
    rows = []
    runs = [("cpu", 1, "auto")]
    if device.startswith("cuda"):
        runs += [(device, None, "auto"), (device, None, "bf16")]
    for label, (data, bin_ms, segment_ms) in sessions.items():
        for size in ("cpu", "cuda"):
            cfg = auto_config(data.shape[0], data.shape[1], bin_ms, segment_ms, device=size)
            cfg.num_threads = None
            full_epoch = cfg.epoch_segments
            cfg.epoch_segments = min(full_epoch or 1 << 30, 512)  # timing only: at most 512 segments an epoch
            for dev, threads, precision in runs:
                cfg.precision = precision
                per_epoch, segs = _epoch_seconds(data, cfg, dev, threads, epochs)
                steps = -(-segs // cfg.batch_size)
                n_train = segs if segs < cfg.epoch_segments else -(-data.shape[0] // (cfg.seg_len - cfg.seg_overlap))
                steps_to_end = cfg.max_epochs * -(-min(n_train, full_epoch or n_train) // cfg.batch_size)
                rows.append({"session": label, "sizes": f"auto-{size} (gen {cfg.gen_dim}, batch {cfg.batch_size}, "
                             f"seg {cfg.seg_len})", "device": dev if not threads else f"{dev} x{threads} thread",
                             "precision": precision, "s_per_epoch": round(per_epoch, 3),
                             "ms_per_step": round(1000 * per_epoch / steps, 1),
                             "segments_per_s": round(segs / per_epoch, 1), "epochs_to_end": cfg.max_epochs,
                             "est_training_s": round(per_epoch / steps * steps_to_end, 1)})
                print(rows[-1], flush=True)
    _save(out, "throughput", rows)


def default_path(seed: int, device: str, max_epochs: int | None, out: Path | None, work: Path) -> None:
    """Time-scale selection, training and inference as `run` does them (auto preset), then R^2 vs the truth."""
    from nwb_lfads_emg import pipeline
    from nwb_lfads_emg.metrics import r2_affine
    from nwb_lfads_emg.preprocess import bin_to
    from nwb_lfads_emg.simulate import write_session_nwb

    session = _session(seed, 60.0)
    src = work / f"mu_locomotion_{seed}.nwb"
    write_session_nwb(session, src)
    job = pipeline.JobConfig(device=device, seed=0, max_epochs=max_epochs, progress=False)
    stages = {}
    t0 = time.perf_counter()
    pipeline.choose_job_time_scales(src, None, None, job)
    stages["time_scales_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    emg_input, _ = pipeline.read(src, None, None, job.preprocess, job.chunk_s)
    stages["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = pipeline.fit(emg_input, work / f"run_{device}_{seed}", job)
    _sync(device)
    stages["training_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inference = pipeline.infer(work / f"run_{device}_{seed}", emg_input, device=device)
    _sync(device)
    stages["inference_s"] = time.perf_counter() - t0
    truth = bin_to(session.activation, session.emg_rate, emg_input.binned)
    r2 = float(np.mean(r2_affine(np.asarray(inference.rates), truth)))
    _save(out, f"default_path_seed{seed}_{device}", {
        "r2_vs_truth": round(r2, 4), "bin_ms": job.time_scales.get("bin_ms"),
        "segment_ms": job.time_scales.get("segment_ms"), "epochs": len(result.metrics),
        "best_epoch": result.best_epoch, "gen_dim": result.config.gen_dim, "batch": result.config.batch_size,
        **{k: round(v, 1) for k, v in stages.items()}})


def long_inference(minutes: float, devices: list[str], out: Path | None, sizes: tuple[str, ...] = ("cpu",)) -> None:
    """Posterior means over `minutes` of 32 channels at 5 ms bins with both auto sizes' models, on each device."""
    from nwb_lfads_emg.lfads import LFADS
    from nwb_lfads_emg.training.inference import infer

    n_bins = int(minutes * 60 * 200)
    rng = np.random.default_rng(0)
    data = rng.gamma(4.0, 0.25, size=(n_bins, 32)).astype(np.float32)
    rows = []
    for size in sizes:
        cfg = auto_config(n_bins, 32, 5.0, 500.0, device=size)
        cfg.num_threads = None
        torch.manual_seed(0)
        model = LFADS(cfg, 32)
        model.set_input_stats(torch.from_numpy(data[:20000]))
        for dev in devices:
            if dev == "cpu":
                torch.set_num_threads(1)  # as `run` infers on a CPU (the CPU preset's one thread)
            t0 = time.perf_counter()
            inf = infer(model, data, cfg, device=dev)
            _sync(dev)
            seconds = time.perf_counter() - t0
            rows.append({"sizes": f"auto-{size} (gen {cfg.gen_dim})", "device": dev, "minutes": minutes,
                         "threads": torch.get_num_threads() if dev == "cpu" else None, "samples": inf.n_samples, "seconds": round(seconds, 1),
                         "recording_s_per_s": round(minutes * 60 / seconds, 1)})
            print(rows[-1], flush=True)
            torch.set_num_threads(os.cpu_count() or 1)
    _save(out, f"inference_{minutes:g}min", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--parts", default="throughput,default,inference", help="which parts, comma-separated")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_cuda: --device cuda but torch sees no CUDA device")
    env = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    _save(a.out, "machine", env)
    with tempfile.TemporaryDirectory() as tmp:
        for part in a.parts.split(","):  # in the order given
            if part == "throughput":
                from nwb_lfads_emg.preprocess import PreprocessConfig, preprocess

                session = _session(a.seed, 10.0 if a.quick else 60.0)
                binned = preprocess(session.emg, session.emg_rate, replace(PreprocessConfig(), bin_ms=8.0))
                minutes = 0.5 if a.quick else 10.0  # a long recording: the GPU preset's batch of 128
                long = np.random.default_rng(0).gamma(4.0, 0.25, size=(int(minutes * 60 * 200), 32))
                sessions = {"60 s motor-unit locomotion, 8 ch, 8 ms": (np.asarray(binned.data), 8.0, 1000.0),
                            f"{minutes:g} min, 32 ch, 5 ms": (long.astype(np.float32), 5.0, 500.0)}
                throughput(sessions, a.device, 1 if a.quick else 2, a.out)
            elif part == "inference":
                both = ["cpu"] + ([a.device] if a.device.startswith("cuda") else [])
                long_inference(0.5 if a.quick else 2.0, both, a.out)
                if not a.quick and a.device.startswith("cuda"):
                    long_inference(60.0, [a.device], a.out, ("cpu", "cuda"))  # the run-scale table's 1 h, GPU only
            elif part == "default":
                default_path(a.seed, a.device, 2 if a.quick else None, a.out, Path(tmp))
            else:
                sys.exit(f"bench_cuda: unknown part {part!r} (throughput, inference, default)")

if __name__ == "__main__":
    main()
