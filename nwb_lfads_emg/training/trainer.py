"""Training: a step-wise `Trainer` (used by `fit` and by PBT) and `fit`, with checkpoints (inference: `inference`)."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TrainingError
from ..lfads.augment import coordinated_dropout, sample_validation_mask, shift_pair, shift_std_bins
from ..lfads.config import MUTABLE_HYPERPARAMETERS, LFADSConfig
from ..lfads.likelihoods import make_likelihood
from ..lfads.model import LFADS, lr_factor, ramp
from . import checkpoint as ckpt
from .segments import block_starts, cut_at_breaks, split_blocks, spread

# Config fields that may differ between a checkpoint and the config given on resume.
_RESUME_FREE = set(MUTABLE_HYPERPARAMETERS) | {"max_epochs", "patience", "stop_min_se", "compile", "num_threads",
                                               "precision", "preset_name"}


# ---------------------------------------------------------------------------- helpers
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TrainingError(f"device {device!r}: not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r}: CUDA is not available on this machine")
    return dev


def set_torch_threads(num_threads: int | None) -> None:
    """Set torch's process-wide intra-op thread count (None or 0: leave torch's own choice).

    The one place that sets it: a trainer (the config's `num_threads`), a PBT trial (its CPUs) and
    inference go through here.
    """
    if num_threads:
        torch.set_num_threads(max(1, int(num_threads)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None = full fp32).

    "auto" is fp32 on every device: LFADS's matrices (a batch of tens to hundreds of rows, widths of
    64-256) are latency-bound on a GPU, so bf16 gains nothing there, and autocast would also turn off the
    decoder's fused time loop (measured on an H200 in benchmarks/bench_cuda.py)."""
    if precision in ("fp32", "auto"):
        return None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_data(data: Any, likelihood: str, what: str = "training data") -> np.ndarray:
    """Validate a (bins, channels) array for a likelihood; returns it as float32 or raises TrainingError."""
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise TrainingError(f"{what}: cannot be read as a numeric array") from None
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise TrainingError(f"{what}: expected a 2-D array (bins, channels), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise TrainingError(f"{what}: contains {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    problem = make_likelihood(likelihood).check_data(torch.from_numpy(arr))
    if problem:
        raise TrainingError(f"{what}: {problem} ({int((arr <= 0).sum())} entries <= 0)")
    return arr


def _data_digest(arr: np.ndarray) -> str:
    """sha256 of the data's bytes and shape, hashed in place (no copy of a long recording's bins)."""
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B"))
    digest.update(str(arr.shape).encode())
    return digest.hexdigest()


def _architecture(config: LFADSConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUME_FREE}


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """Owns the model, optimiser, data segments and RNG of one run; advance it with `train_epoch()`."""

    def __init__(self, data: np.ndarray, config: LFADSConfig, device: str | torch.device = "auto",
                 seed: int = 0, breaks: list[int] | None = None, sv_mask: np.ndarray | None = None) -> None:
        try:
            config.validate()
        except ValueError as exc:
            raise TrainingError(f"configuration: {exc}") from None
        self.config = copy.deepcopy(config)
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.data = check_data(data, config.likelihood)
        self.n_bins, self.n_channels = self.data.shape
        self.data_digest = _data_digest(self.data)
        self.breaks = sorted(int(b) for b in (breaks or []))  # bins where the recording has a gap (trials)
        # held-out entries given by the caller (time-scale selection hides the same stretches at every bin width)
        self._sv_given = None if sv_mask is None else np.asarray(sv_mask, dtype=bool)
        if self._sv_given is not None and self._sv_given.shape != self.data.shape:
            raise TrainingError(f"sample-validation mask: shape {self._sv_given.shape}, data {self.data.shape}")
        set_torch_threads(config.num_threads)
        c = self.config
        # the trainer owns its RNG streams (global torch RNG forked around every use), so that several
        # trainers in one process (PBT) and a resumed run draw exactly the same numbers
        self._cuda_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._cuda_devices):
            torch.manual_seed(self.seed)
            self._build(c)
            self._rng_state = torch.get_rng_state()
            self._cuda_rng_state = torch.cuda.get_rng_state(self._cuda_devices[0]) if self._cuda_devices else None

    def _build(self, c: LFADSConfig) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)  # batch order, masks, shifts
        # contiguous train/validation blocks; held-out sample-validation entries on the continuous series
        train, val = split_blocks(self.n_bins, c.val_fraction, c.val_blocks, c.seg_len)
        self.train_blocks = cut_at_breaks(train, self.breaks, c.seg_len)  # no window spans a gap
        self.val_blocks = cut_at_breaks(val, self.breaks, c.seg_len)
        if not self.train_blocks:
            raise TrainingError(f"segments: no stretch between gaps in the recording is as long as one training "
                                f"segment ({c.seg_len} bins); choose shorter segments (--segment-ms)")
        sv = (sample_validation_mask(self.data.shape, c.sv_rate, torch.Generator().manual_seed(self.seed + 7919))
              if self._sv_given is None else torch.from_numpy(self._sv_given))
        self.train_starts = block_starts(self.train_blocks, c.seg_len, c.seg_overlap)
        self.val_starts = block_starts(self.val_blocks, c.seg_len, c.seg_overlap)
        if c.epoch_segments and len(self.val_starts) > c.epoch_segments:  # a long recording: an even spread of them
            keep = spread(len(self.val_starts), c.epoch_segments)
            self.val_starts = self.val_starts[keep]
        dev = self.device
        # the series once (not its overlapping segments, which would double it): segments are cut per batch
        series, sv_series = torch.from_numpy(self.data).to(dev), sv.to(dev)
        self.x_train = Windows(series, self.train_starts, c.seg_len)
        self.sv_train = Windows(sv_series, self.train_starts, c.seg_len)
        self.x_val = Windows(series, self.val_starts, c.seg_len)
        self.sv_val = Windows(sv_series, self.val_starts, c.seg_len)
        # distinct bins the validation windows cover (they overlap): the sample size of the held-out loss
        self.val_bins = int(np.unique(self.val_starts[:, None] + np.arange(c.seg_len)[None, :]).size) \
            if len(self.val_starts) else 0
        self.val_se = 0.0
        train_rows = np.concatenate([self.data[a:b] for a, b in self.train_blocks])
        self.model = LFADS(c, self.n_channels)
        self.model.config = c  # hyper-parameter changes reach the loss
        self.model.set_input_stats(torch.from_numpy(train_rows))
        self.model.to(dev)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, eps=c.adam_eps,
                                           weight_decay=c.weight_decay)
        self.amp_dtype = autocast_dtype(c.precision, dev)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)
        self.epoch = 0
        self.val_smoothed: float | None = None
        self.best_val = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_count = 0  # epochs averaged into best_state (`average_weights`)
        self.bad_epochs = 0
        self.metrics: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ properties
    @property
    def n_train_segments(self) -> int:
        """Number of training segments."""
        return int(self.x_train.shape[0])

    @property
    def ramp_end(self) -> int:
        """First epoch at which both KL and L2 ramps are complete."""
        c = self.config
        return max(c.kl_start_epoch + c.kl_increase_epoch, c.l2_start_epoch + c.l2_increase_epoch)

    @property
    def should_stop(self) -> bool:
        """True once the smoothed validation loss has not improved for `patience` epochs (after the ramps)."""
        return self.bad_epochs >= self.config.patience

    # ------------------------------------------------------------------ hyper-parameters (PBT)
    def set_hyperparameters(self, values: dict[str, Any]) -> None:
        """Change mutable hyper-parameters (LFADSConfig field names) in place, mid-run."""
        for name, value in values.items():
            if name not in MUTABLE_HYPERPARAMETERS:
                raise TrainingError(f"hyper-parameter {name!r} cannot be changed during training")
            setattr(self.config, name, type(getattr(self.config, name))(value))
        try:
            self.config.validate()
        except ValueError as exc:
            raise TrainingError(f"hyper-parameters {values}: {exc}") from None
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
        for module in self.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = self.config.dropout

    def hyperparameters(self) -> dict[str, Any]:
        """Current values of the mutable hyper-parameters."""
        return {name: getattr(self.config, name) for name in MUTABLE_HYPERPARAMETERS}

    # ------------------------------------------------------------------ one epoch
    def _batch_masks(self, x: torch.Tensor, sv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(encoder input, target, keep mask, gradient mask, held-in mask) for one batch, augmentations applied."""
        c = self.config
        x_in, x_tgt, sv_in, sv_tgt = shift_pair(x, shift_std_bins(c.temporal_shift_ms, c.bin_ms), self.generator, sv)
        cd = coordinated_dropout(tuple(x.shape), c.cd_rate, self.generator, device=x.device)
        keep = ~cd & ~sv_in
        grad_mask = cd if c.cd_rate > 0 else None
        return x_in, x_tgt, keep, grad_mask, ~sv_tgt

    def _close_epoch(self, val_loss: float, train_recon: float, margin: float = 0.0) -> tuple[float, bool]:
        """End an epoch: smooth the validation loss (the training reconstruction when it is not finite),
        count the epoch and keep the best weights after the ramps, when the smoothed loss is below the best
        by more than `margin`; with `average_weights`, a later epoch within `margin` of the best is averaged
        into them; returns (validation loss, improved)."""
        if not math.isfinite(val_loss):
            val_loss = train_recon
        s = self.config.val_smoothing
        self.val_smoothed = val_loss if self.val_smoothed is None else s * self.val_smoothed + (1 - s) * val_loss
        self.epoch += 1
        improved = False
        if self.epoch >= self.ramp_end or self.best_state is None:
            if self.val_smoothed < self.best_val - margin or self.best_state is None or self.epoch == self.ramp_end:
                improved = True
                self.best_val, self.best_epoch = self.val_smoothed, self.epoch
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                self.best_count = 1
                self.bad_epochs = 0
            elif self.epoch > self.ramp_end:
                self.bad_epochs += 1
                if self.config.average_weights and self.val_smoothed <= self.best_val + margin:
                    self._average_into_best()
        return val_loss, improved

    @torch.no_grad()
    def _average_into_best(self) -> None:
        """Fold the current weights into `best_state`'s running mean (integer buffers: the latest)."""
        self.best_count += 1
        for k, v in self.model.state_dict().items():
            v = v.detach().cpu()
            if v.is_floating_point():
                self.best_state[k] += (v - self.best_state[k]) / self.best_count
            else:
                self.best_state[k] = v.clone()

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate held-out data, update smoothing and early stopping; returns the metrics."""
        with torch.random.fork_rng(devices=self._cuda_devices):
            torch.set_rng_state(self._rng_state)
            if self._cuda_rng_state is not None:
                torch.cuda.set_rng_state(self._cuda_rng_state, self._cuda_devices[0])
            metrics = self._train_epoch()
            self._rng_state = torch.get_rng_state()
            if self._cuda_rng_state is not None:
                self._cuda_rng_state = torch.cuda.get_rng_state(self._cuda_devices[0])
        return metrics

    def _train_epoch(self) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        self.model.train()
        kl_ramp = ramp(self.epoch, c.kl_start_epoch, c.kl_increase_epoch)
        l2_ramp = ramp(self.epoch, c.l2_start_epoch, c.l2_increase_epoch)
        lr_now = c.lr * lr_factor(self.epoch, c.max_epochs, c.lr_schedule, c.lr_min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now
        order = torch.randperm(self.n_train_segments, generator=self.generator)
        if c.epoch_segments:  # a fixed number drawn from the whole recording (all of a short one)
            order = order[: int(c.epoch_segments)]
        sums = {k: torch.zeros((), device=self.device) for k in ("loss", "recon", "kl_ic", "kl_co", "l2")}
        sv_sum = torch.zeros((), device=self.device)
        sv_count = torch.zeros((), device=self.device)
        n_batches = 0
        for i in range(0, len(order), c.batch_size):
            idx = order[i : i + c.batch_size].to(self.device)
            x, sv = self.x_train[idx], self.sv_train[idx]
            x_in, x_tgt, keep, grad_mask, heldin = self._batch_masks(x, sv)
            with _autocast(self.device, self.amp_dtype):
                out = self.model(x_in, keep=keep)
            losses = self.model.loss(out, x_tgt, grad_mask, heldin, kl_ramp=kl_ramp, l2_ramp=l2_ramp)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with torch.no_grad():
                for k in sums:
                    sums[k] += losses[k].detach().float()
                sv_t = sv if c.temporal_shift_ms == 0 else sv & ~keep  # held-out entries not seen by the encoders
                sv_sum += (self.model.recon_nll(out, x) * sv_t).sum()
                sv_count += sv_t.sum()
            n_batches += 1
        stats = {k: float(v) / max(n_batches, 1) for k, v in sums.items()}
        if not all(math.isfinite(v) for v in stats.values()):
            raise TrainingError(
                f"training: the loss became NaN or infinite at epoch {self.epoch} (lower the learning rate "
                "or check the data scale)"
            )
        sv_loss = float(sv_sum / sv_count) if float(sv_count) > 0 else math.nan
        val_loss = self.evaluate() if self.x_val.shape[0] > 0 else sv_loss
        margin = c.stop_min_se * self.val_se if self.x_val.shape[0] > 0 else 0.0
        val_loss, improved = self._close_epoch(val_loss, stats["recon"], margin)
        metrics = {
            "epoch": self.epoch,
            "train_loss": stats["loss"] / c.loss_scale,
            "train_recon": stats["recon"],
            "kl_ic": stats["kl_ic"],
            "kl_co": stats["kl_co"],
            "l2": stats["l2"],
            "kl_ramp": kl_ramp,
            "l2_ramp": l2_ramp,
            "sv_loss": sv_loss,
            "val_loss": val_loss,
            "val_loss_smoothed": self.val_smoothed,
            "val_se": self.val_se,
            "best": improved,
            "averaged": self.best_count,
            "lr": c.lr,
            "lr_effective": lr_now,
            "seconds": time.perf_counter() - t0,
        }
        self.metrics.append(metrics)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean reconstruction NLL on the validation blocks (posterior means, no dropout); sets `val_se`, its
        standard error from the spread of the per-bin NLL (mean over channels) over the distinct held-out bins."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        total_sq = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        rows = 0
        bs = max(self.config.batch_size, 256)
        for i in range(0, self.x_val.shape[0], bs):
            x, sv = self.x_val[i : i + bs], self.sv_val[i : i + bs]
            with _autocast(self.device, self.amp_dtype):
                out = self.model(x, keep=~sv, sample=False)
            nll = self.model.recon_nll(out, x).double()
            total += nll.sum()
            total_sq += nll.mean(-1).pow(2).sum()
            count += x.numel()
            rows += x.shape[0] * x.shape[1]
        self.model.train()
        mean = float(total / max(count, 1))
        per_bin_var = max(float(total_sq / max(rows, 1)) - mean * mean, 0.0)  # rows: (window, bin) pairs
        self.val_se = math.sqrt(per_bin_var / max(self.val_bins, 1))
        return mean

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimiser, scaler, epoch, RNGs, smoothing, best."""
        return {
            "format": "nwb-lfads-emg-trainer/1",
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "data_digest": self.data_digest,
            "n_channels": self.n_channels,
            **progress_state(self),
        }

    def load_state_dict(self, state: dict[str, Any], check_data: bool = True) -> None:
        """Restore a `state_dict()`; its hyper-parameters replace the current ones."""
        if state.get("format") != "nwb-lfads-emg-trainer/1":
            raise TrainingError("checkpoint: not an nwb-lfads-emg trainer state")
        saved = LFADSConfig.from_dict(state["config"])
        if _architecture(saved) != _architecture(self.config):
            diff = sorted(k for k, v in _architecture(saved).items() if _architecture(self.config).get(k) != v)
            raise TrainingError(f"checkpoint: made with a different configuration (differs in {', '.join(diff)})")
        if check_data and state["data_digest"] != self.data_digest:
            raise TrainingError("checkpoint: made from different data than given now")
        restore_progress(self, state, saved)

    def best_model_state(self) -> dict[str, torch.Tensor]:
        """Weights with the best smoothed validation loss, or their average with the epochs within the margin
        (`average_weights`); the current weights if none recorded."""
        if self.best_state is not None:
            return self.best_state
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


def progress_state(trainer: Any) -> dict[str, Any]:
    """Where a run stands (weights, optimiser, RNGs, smoothing, best so far): the part of `state_dict`
    that the single-session and the stitched trainer share."""
    cuda = getattr(trainer, "_cuda_rng_state", None)
    return {
        "epoch": trainer.epoch,
        "model": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scaler": trainer.scaler.state_dict(),
        "torch_rng": trainer._rng_state.clone(),
        "cuda_rng": cuda.clone() if cuda is not None else None,
        "generator": trainer.generator.get_state(),
        "val_smoothed": trainer.val_smoothed,
        "best_val": trainer.best_val,
        "best_epoch": trainer.best_epoch,
        "best_state": trainer.best_state,
        "best_count": trainer.best_count,
        "bad_epochs": trainer.bad_epochs,
        "metrics": copy.deepcopy(trainer.metrics),
    }


def restore_progress(trainer: Any, state: dict[str, Any], saved: LFADSConfig) -> None:
    """Put a `progress_state` back (after the caller's compatibility checks); the saved hyper-parameters win."""
    trainer.set_hyperparameters({k: getattr(saved, k) for k in MUTABLE_HYPERPARAMETERS})
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    for group in trainer.optimizer.param_groups:
        group["lr"] = trainer.config.lr
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer._rng_state = state["torch_rng"].clone()
    if state.get("cuda_rng") is not None and getattr(trainer, "_cuda_rng_state", None) is not None:
        trainer._cuda_rng_state = state["cuda_rng"].clone()
    trainer.generator.set_state(state["generator"])
    trainer.val_smoothed = state["val_smoothed"]
    trainer.best_val = state["best_val"]
    trainer.best_epoch = state["best_epoch"]
    trainer.best_state = state["best_state"]
    trainer.best_count = int(state.get("best_count", 1 if state["best_state"] is not None else 0))
    trainer.bad_epochs = state["bad_epochs"]
    trainer.metrics = copy.deepcopy(state["metrics"])


# ---------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    """The outcome of `fit`: the best model (on CPU, eval mode) and what the run recorded."""

    model: LFADS
    config: LFADSConfig
    metrics: list[dict[str, Any]]
    run_dir: Path
    best_val_loss: float
    weights_sha256: str
    device: str
    seed: int = 0
    best_epoch: int = -1


def _write_metrics_csv(path: Path, metrics: list[dict[str, Any]]) -> None:
    if not metrics:
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(metrics[0].keys()), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(metrics)
    ckpt.write_atomic(path, text.getvalue().encode())


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - TensorBoard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


class Windows:
    """The (segments, seg_len, ...) windows of a (bins, ...) series at `starts`, cut when indexed (by an index
    tensor or a slice): the values `chop_blocks` would hold, without holding the overlapping copies."""

    def __init__(self, series: torch.Tensor, starts: np.ndarray, seg_len: int) -> None:
        self.series = series
        self.starts = torch.as_tensor(np.asarray(starts, dtype=np.int64), device=series.device)
        self.offsets = torch.arange(seg_len, device=series.device)
        self.shape = (int(self.starts.shape[0]), seg_len, *series.shape[1:])

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        return self.series[self.starts[idx][:, None] + self.offsets[None, :]]

    def __len__(self) -> int:
        return self.shape[0]


def fit(data: np.ndarray, config: LFADSConfig, run_dir: str | Path, device: str = "auto", seed: int = 0,
        progress: bool = True, max_epochs: int | None = None, checkpoint_every: int = 1,
        breaks: list[int] | None = None) -> FitResult:
    """Train LFADS on (bins, channels) data; resumes from run_dir's checkpoints; exports run_dir/model.pt.

    `breaks`: bins where the recording is discontinuous (gaps between trials); no training window spans one."""
    from tqdm.auto import tqdm

    trainer = Trainer(data, config, device=device, seed=seed, breaks=breaks)
    run_dir = ckpt.resume(run_dir, trainer)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(trainer.config), indent=1))
    limit = int(max_epochs if max_epochs is not None else trainer.config.max_epochs)
    writer = _tensorboard_writer(run_dir)
    csv_path = run_dir / "metrics.csv"
    bar = tqdm(total=limit, initial=min(trainer.epoch, limit), disable=not progress, desc="LFADS", unit="epoch")
    try:
        while trainer.epoch < limit and not trainer.should_stop:
            m = trainer.train_epoch()
            bar.update(1)
            bar.set_postfix(val=f"{m['val_loss_smoothed']:.4f}", recon=f"{m['train_recon']:.4f}")
            if writer is not None:
                for k, v in m.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, float(v), m["epoch"])
            if trainer.epoch % checkpoint_every == 0 or trainer.epoch >= limit or trainer.should_stop:
                ckpt.save_checkpoint(run_dir, trainer.epoch, trainer.state_dict())
                _write_metrics_csv(csv_path, trainer.metrics)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    _write_metrics_csv(csv_path, trainer.metrics)
    best = trainer.best_model_state()
    _, sha = ckpt.export_weights(run_dir, best, dataclasses.asdict(trainer.config), trainer.n_channels)
    model = LFADS(copy.deepcopy(trainer.config), trainer.n_channels)
    model.load_state_dict(best)
    model.eval()
    return FitResult(model=model, config=trainer.config, metrics=list(trainer.metrics), run_dir=run_dir,
                     best_val_loss=float(trainer.best_val), weights_sha256=sha, device=str(trainer.device),
                     seed=trainer.seed, best_epoch=trainer.best_epoch)
