"""Training throughput (samples/s) and peak memory: our LFADS trainer vs a plain step-by-step reference.

The reference is the same network (same sizes, Gamma readout, priors, coordinated dropout) written the
plain way: every recurrence, encoders included, stepped in Python with nn.GRUCell, the controller's
input projection recomputed per step. Ours uses nn.GRU (cuDNN / oneDNN) for the encoders, one matmul
for the controller-input projection of all steps, fused GRU gates, and the decoder's time loop as one
autograd Function with a hand-written backward through time (`fast_decoder`; "ours-eager" is the same
model with the plain autograd loop), optionally torch.compile.
Throughput is given both per wall second and per second of process CPU time (the latter is the one to
trust on a shared, loaded machine with --threads 1).

    python benchmarks/bench_training.py                      # CPU, default and paper sizes
    python benchmarks/bench_training.py --device cuda --compile
Each (implementation, size) runs in its own subprocess so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from nwb_lfads_emg.lfads import LFADS, preset
from nwb_lfads_emg.lfads.augment import coordinated_dropout
from nwb_lfads_emg.training.trainer import _autocast, autocast_dtype


class StepwiseLFADS(nn.Module):
    """Reference: the same LFADS, each time step of every GRU done with nn.GRUCell in Python."""

    def __init__(self, cfg, n_channels: int) -> None:
        super().__init__()
        self.cfg, self.c = cfg, n_channels
        self.ic_f, self.ic_b = nn.GRUCell(n_channels, cfg.ic_enc_dim), nn.GRUCell(n_channels, cfg.ic_enc_dim)
        self.ci_f, self.ci_b = nn.GRUCell(n_channels, cfg.ci_enc_dim), nn.GRUCell(n_channels, cfg.ci_enc_dim)
        self.to_ic = nn.Linear(2 * cfg.ic_enc_dim, 2 * cfg.ic_dim)
        self.ic_to_g0 = nn.Linear(cfg.ic_dim, cfg.gen_dim)
        self.con = nn.GRUCell(2 * cfg.ci_enc_dim + cfg.fac_dim, cfg.con_dim)
        self.to_co = nn.Linear(cfg.con_dim, 2 * cfg.co_dim)
        self.gen = nn.GRUCell(cfg.co_dim, cfg.gen_dim)
        self.fac = nn.Linear(cfg.gen_dim, cfg.fac_dim, bias=False)
        self.readout = nn.Linear(cfg.fac_dim, 2 * n_channels)
        self.drop = nn.Dropout(cfg.dropout)

    def _run(self, cell: nn.GRUCell, x: torch.Tensor, reverse: bool) -> list[torch.Tensor]:
        h = x.new_zeros(x.shape[0], cell.hidden_size)
        out = []
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        for t in steps:
            h = cell(x[:, t], h)
            out.append(h)
        return out[::-1] if reverse else out

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        cfg, clip = self.cfg, self.cfg.cell_clip
        z = torch.where(keep, torch.log(x), torch.zeros_like(x))
        z = self.drop(z)
        fwd, bwd = self._run(self.ic_f, z, False), self._run(self.ic_b, z, True)
        ic_mean, ic_lv = self.to_ic(self.drop(torch.cat([fwd[-1], bwd[0]], -1))).chunk(2, -1)
        ic = ic_mean + torch.exp(0.5 * ic_lv) * torch.randn_like(ic_mean)
        cf, cb = self._run(self.ci_f, z, False), self._run(self.ci_b, z, True)
        g = self.ic_to_g0(ic)
        w = self.fac.weight / self.fac.weight.norm(dim=1, keepdim=True)
        f = F.linear(self.drop(g), w)
        c = x.new_zeros(x.shape[0], cfg.con_dim)
        kl_co, facs, n_t = 0.0, [], x.shape[1]
        for t in range(n_t):
            ci = torch.cat([cf[t - 1] if t > 0 else torch.zeros_like(cf[0]),
                            bwd_t if (bwd_t := (cb[t + 1] if t + 1 < n_t else None)) is not None
                            else torch.zeros_like(cb[0])], -1)
            c = self.con(self.drop(torch.cat([ci, f], -1)), c).clamp(-clip, clip)
            m, lv = self.to_co(c).chunk(2, -1)
            u = m + torch.exp(0.5 * lv) * torch.randn_like(m)
            kl_co = kl_co + 0.5 * (lv.exp() + m**2 - 1 - lv).sum(-1)
            g = self.gen(u, g).clamp(-clip, clip)
            f = F.linear(self.drop(g), w)
            facs.append(f)
        params = self.readout(torch.stack(facs, 1))
        log_a, log_b = params.float().clamp(-12, 12).chunk(2, -1)
        a = log_a.exp()
        nll = torch.lgamma(a) - a * log_b - (a - 1) * torch.log(x) + log_b.exp() * x
        m = (~keep).float()
        recon = (nll * m).sum() / m.sum()
        kl_ic = 0.5 * (ic_lv.exp() + ic_mean**2 - 1 - ic_lv).sum(-1).mean()
        return 1e4 * (recon + cfg.kl_ic_scale * kl_ic + cfg.kl_co_scale * kl_co.mean())


def one(impl: str, size: str, device: str, steps: int, batch: int | None, n_channels: int, compile_: bool) -> dict:
    cfg = preset(size)
    cfg.compile = compile_ and impl == "ours"
    cfg.fast_decoder = impl == "ours"
    dev = torch.device(device)
    torch.manual_seed(0)
    b = batch or cfg.batch_size
    x = (torch.rand(b, cfg.seg_len, n_channels) + 0.05).to(dev)
    if impl.startswith("ours"):
        model = LFADS(cfg, n_channels).to(dev)
    else:
        model = StepwiseLFADS(cfg, n_channels).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    amp = autocast_dtype(cfg.precision, dev)

    def step() -> None:
        cd = coordinated_dropout(tuple(x.shape), cfg.cd_rate, device=dev)
        with _autocast(dev, amp):
            if impl.startswith("ours"):
                out = model(x, keep=~cd)
                loss = model.loss(out, x, cd, 1.0, 1.0)["loss"]
            else:
                loss = model(x, ~cd)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    for _ in range(2):  # warm-up (and compilation)
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    cpu_steps = []
    for _ in range(steps):
        c1 = time.process_time()
        step()
        cpu_steps.append(time.process_time() - c1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    res = {"impl": impl, "size": size, "device": device, "batch": b, "seg_len": cfg.seg_len,
           "n_params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
           "samples_per_s": round(b * steps / dt, 1), "step_ms": round(1000 * dt / steps, 1),
           "samples_per_cpu_s": round(b * steps / dc, 1),
           # per median step's CPU time: the most robust figure when other jobs load the machine
           "samples_per_median_cpu_s": round(b / sorted(cpu_steps)[len(cpu_steps) // 2], 1),
           "fast_decoder": cfg.fast_decoder,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "compile": cfg.compile}
    if dev.type == "cuda":
        res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["gpu"] = torch.cuda.get_device_name()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="default,paper")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.device, a.steps, a.batch, a.channels, a.compile)))
        return
    results = []
    for size in a.sizes.split(","):
        row = {}
        for impl in ("ours", "ours-eager", "reference"):
            cmd = [sys.executable, __file__, "--one", impl, size, "--device", a.device, "--steps", str(a.steps),
                   "--channels", str(a.channels)]
            cmd += ["--batch", str(a.batch)] if a.batch else []
            cmd += ["--threads", str(a.threads)] if a.threads else []
            cmd += ["--compile"] if a.compile else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row[impl] = json.loads(out)
            print(json.dumps(row[impl]), flush=True)
        ours, eager, ref = row["ours"], row["ours-eager"], row["reference"]
        ratio = ours["samples_per_s"] / ref["samples_per_s"]
        cpu_ratio = ours["samples_per_median_cpu_s"] / ref["samples_per_median_cpu_s"]
        results.append({"size": size, "speedup": round(ratio, 2), "speedup_cpu_time": round(cpu_ratio, 2),
                        "fast_vs_eager_decoder_cpu_time": round(ours["samples_per_median_cpu_s"]
                                                                / eager["samples_per_median_cpu_s"], 2)})
        print(f"{size}: ours {ours['samples_per_s']} samples/s ({ours['samples_per_median_cpu_s']} per median-step "
              f"CPU s) vs reference {ref['samples_per_s']} ({ref['samples_per_median_cpu_s']}) -> x{ratio:.2f} wall, "
              f"x{cpu_ratio:.2f} CPU time", flush=True)
    print(json.dumps(results))



if __name__ == "__main__":
    main()
