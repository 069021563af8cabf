"""Training one LFADS across several sessions (stitching), and adapting it to a new session.

`MultiSessionTrainer` trains a `MultiSessionLFADS` on the segments of every session: each batch
comes from one session (its own channels), batches of all sessions are shuffled together, and the
validation loss is pooled over the sessions' held-out entries (one number: early stopping and PBT
select on it). `adapt` fits a new session's read-in/read-out and its own copy of the encoders and
controller, with the shared generator (the dynamics: initial-state map, GRU, factor map) and the
priors frozen. The augmentations and masks are the single-session trainer's.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TrainingError
from ..lfads.augment import sample_validation_mask
from ..lfads.config import MUTABLE_HYPERPARAMETERS, LFADSConfig
from ..lfads.model import lr_factor, ramp
from ..lfads.readin import MultiSessionLFADS, stitched_factors
from . import checkpoint as ckpt
from .segments import chop, chop_blocks, split_blocks, spread
from .trainer import (
    Trainer,
    _architecture,
    _autocast,
    _data_digest,
    _write_metrics_csv,
    autocast_dtype,
    check_data,
    progress_state,
    resolve_device,
    restore_progress,
)

WEIGHTS_KIND = "multisession"
#: What `adapt` leaves as trained and what it fits for a new session (recorded in the provenance).
ADAPT_FREEZES = ["generator (initial-state map, GRU, factor map)", "priors", "the training sessions' read-ins, "
                 "read-outs and the shared encoders and controller"]
ADAPT_FITS = ["read-in", "read-out", "own copy of the encoders and controller (started from the shared ones)"]
STATE_FORMAT = "nwb-lfads-emg-multisession-trainer/1"
ADAPT_WEIGHT_EMA = 0.9
"""`adapt` ends with this exponential moving average of its epoch-end weights (as of its best epoch), not the
weights of one epoch: its truth R^2 settles within a few epochs, then moves +-0.005 from epoch to epoch.
Measured (README, stitching; seeds 0-2 x 3 training seeds): up in 8 of 9 runs, mean +0.002."""


def session_lr_scale(step: int, share: int) -> float:
    """Learning-rate factor of a session's own weights (read-in, read-out) when it has `share` of a step's `step`
    segments: sqrt(step / share), 1 for a session alone. Its gradient comes from its share of the batch only, a
    noisier estimate that shrinks Adam's normalised step; measured on the simulator (4 sessions, factor 2;
    README, stitching): factor 1 R^2 0.911 (seed 0, mean of 4 sessions), 2 0.919, 4 0.913, 0.5 0.895."""
    return math.sqrt(step / max(share, 1))


class MultiSessionTrainer:
    """Owns a `MultiSessionLFADS`, its optimiser and the segments of several sessions; `train_epoch()` advances it.

    `model` and `session_ids` continue an existing model: data[i] belongs to its session session_ids[i],
    and only `trainable` parameters (default: all) are optimised. With `weight_ema` > 0 the trainable
    parameters' exponential moving average over epoch ends (that decay) replaces them in `best_model_state`
    (`adapt`; not part of `state_dict`, so not resumed).
    """

    def __init__(self, data: Sequence[np.ndarray], muscles: Sequence[Sequence[str]], config: LFADSConfig,
                 device: str | torch.device = "auto", seed: int = 0, readin_dim: int | None = None,
                 model: MultiSessionLFADS | None = None, session_ids: Sequence[int] | None = None,
                 trainable: Sequence[nn.Parameter] | None = None, weight_ema: float = 0.0) -> None:
        if not 0.0 <= weight_ema < 1.0:
            raise TrainingError(f"weight_ema ({weight_ema}) must be in [0, 1)")
        self.weight_ema = float(weight_ema)
        self._ema: dict[str, torch.Tensor] | None = None
        self._ema_best: dict[str, torch.Tensor] | None = None
        try:
            config.validate()
        except ValueError as exc:
            raise TrainingError(f"configuration: {exc}") from None
        if len(data) != len(muscles) or not data:
            raise TrainingError(f"multi-session training: {len(data)} data arrays for {len(muscles)} muscle lists")
        self.config = copy.deepcopy(config)
        if model is None:
            self.config.fac_dim = stitched_factors(config, muscles)
        else:
            self.config.fac_dim = model.config.fac_dim
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.data = []
        for k, (x, names) in enumerate(zip(data, muscles, strict=True)):
            arr = check_data(x, config.likelihood, what=f"training data of session {k}")
            if arr.shape[1] != len(names):
                raise TrainingError(f"session {k}: {arr.shape[1]} channels but {len(names)} muscle names")
            self.data.append(arr)
        self.data_digest = hashlib.sha256("".join(_data_digest(a) for a in self.data).encode()).hexdigest()
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self._cuda_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._cuda_devices):
            torch.manual_seed(self.seed)
            self._build(muscles, readin_dim, model, session_ids, trainable)
            self._rng_state = torch.get_rng_state()
            self._cuda_rng_state = torch.cuda.get_rng_state(self._cuda_devices[0]) if self._cuda_devices else None

    def _build(self, muscles: Sequence[Sequence[str]], readin_dim: int | None, model: MultiSessionLFADS | None,
               session_ids: Sequence[int] | None, trainable: Sequence[nn.Parameter] | None) -> None:
        c, dev = self.config, self.device
        self.generator = torch.Generator().manual_seed(self.seed)
        self.x_train, self.sv_train, self.x_val, self.sv_val, train_rows = [], [], [], [], []
        for k, arr in enumerate(self.data):
            train_blocks, val_blocks = split_blocks(arr.shape[0], c.val_fraction, c.val_blocks, c.seg_len)
            sv_np = sample_validation_mask(arr.shape, c.sv_rate, torch.Generator().manual_seed(self.seed + 7919 + k)).numpy()
            for blocks, xs, svs in ((train_blocks, self.x_train, self.sv_train), (val_blocks, self.x_val, self.sv_val)):
                xs.append(torch.from_numpy(chop_blocks(arr, blocks, c.seg_len, c.seg_overlap)[0]).to(dev))
                svs.append(torch.from_numpy(chop_blocks(sv_np, blocks, c.seg_len, c.seg_overlap)[0]).to(dev))
            train_rows.append(torch.from_numpy(np.concatenate([arr[a:b] for a, b in train_blocks])))
        self._cap_validation()
        if model is None:
            try:
                self.model = MultiSessionLFADS(c, muscles, readin_dim, factors=c.fac_dim)
            except ValueError as exc:
                raise TrainingError(f"multi-session model: {exc}") from None
            self.model.initialise(train_rows)
            self.session_ids = list(range(len(self.data)))
        else:
            self.model = model
            self.session_ids = list(session_ids if session_ids is not None else range(len(self.data)))
        self.model.config = self.model.core.config = c  # hyper-parameter changes reach the loss
        for io in self.model.sessions:
            io.config = c
            if io.encoders is not None:
                io.encoders.config = c
        self.model.to(dev)
        params = list(trainable) if trainable is not None else list(self.model.parameters())
        self.params = params
        self.optimizer = torch.optim.AdamW(self._param_groups(params), lr=c.lr, eps=c.adam_eps,
                                           weight_decay=c.weight_decay)
        self.amp_dtype = autocast_dtype(c.precision, dev)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)
        self.epoch, self.val_smoothed, self.best_val, self.best_epoch = 0, None, math.inf, -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_count = 0
        self.bad_epochs = 0
        self.metrics: list[dict[str, Any]] = []

    def _shares(self) -> list[int]:
        """Each session's segments in a step's batch: `batch_size` in all, shared in proportion to the sessions'
        training segments (at least one each, at most all of a session's)."""
        counts = [int(x.shape[0]) for x in self.x_train]
        total = max(sum(counts), 1)
        return [min(n, max(1, round(self.config.batch_size * n / total))) for n in counts]

    def _param_groups(self, params: Sequence[nn.Parameter]) -> list[dict[str, Any]]:
        """Optimiser groups with their `lr_scale`: a session's own read-in, read-out (and adapted encoders) learn
        at the base rate times `session_lr_scale` (one session alone: 1, as in a
        single-session model); the shared encoders, controller and generator at the base rate."""
        shares = self._shares()
        step = max(sum(shares), 1)
        scale: dict[int, float] = {}
        for k, session in enumerate(self.session_ids):
            for p in self.model.session_parameters(session):
                scale[id(p)] = session_lr_scale(step, shares[k])
        groups: dict[float, list[nn.Parameter]] = {}
        for p in params:
            groups.setdefault(scale.get(id(p), 1.0), []).append(p)
        return [{"params": ps, "lr_scale": s} for s, ps in groups.items()]

    def _cap_validation(self) -> None:
        """Score at most `epoch_segments` validation segments over all sessions (each session's share evenly
        spread over its blocks), so that a long set's validation cost does not grow either."""
        cap, sizes = self.config.epoch_segments, [int(x.shape[0]) for x in self.x_val]
        if not cap or sum(sizes) <= int(cap):
            return
        for k, n in enumerate(sizes):
            share = max(1, int(round(int(cap) * n / sum(sizes)))) if n else 0
            keep = torch.from_numpy(spread(n, share)) if n else None
            if keep is not None and share < n:
                self.x_val[k], self.sv_val[k] = self.x_val[k][keep.to(self.device)], self.sv_val[k][keep.to(self.device)]

    # the single-session trainer's early-stopping rule, augmentations and hyper-parameter handling
    ramp_end = Trainer.ramp_end
    should_stop = Trainer.should_stop
    _batch_masks = Trainer._batch_masks
    _close_epoch = Trainer._close_epoch
    _average_into_best = Trainer._average_into_best
    hyperparameters = Trainer.hyperparameters

    def set_hyperparameters(self, values: dict[str, Any]) -> None:
        """Change mutable hyper-parameters (LFADSConfig field names) in place, mid-run."""
        Trainer.set_hyperparameters(self, values)

    @property
    def n_train_segments(self) -> int:
        """Training segments over all sessions."""
        return sum(int(x.shape[0]) for x in self.x_train)

    def train_epoch(self) -> dict[str, Any]:
        """One epoch: one pass over the segments of all sessions, every step a batch of `batch_size` segments
        drawn from every session in proportion to its segments (`_epoch_batches`), at most `epoch_segments`."""
        with torch.random.fork_rng(devices=self._cuda_devices):
            torch.set_rng_state(self._rng_state)
            if self._cuda_rng_state is not None:  # else every epoch on CUDA would redraw the same noise
                torch.cuda.set_rng_state(self._cuda_rng_state, self._cuda_devices[0])
            metrics = self._train_epoch()
            self._rng_state = torch.get_rng_state()
            if self._cuda_rng_state is not None:
                self._cuda_rng_state = torch.cuda.get_rng_state(self._cuda_devices[0])
        return metrics

    def _epoch_batches(self) -> list[list[torch.Tensor]]:
        """This epoch's steps: per step, the segment indices of each session's share of the batch (shuffled every
        epoch). A step holds `batch_size` segments in all, each session's share in proportion to its segments
        (at least one), so that an epoch, one pass over every session's segments, has as many steps as the
        sessions have batches together, as a per-session model's epoch has of its own: the stitched model
        takes a step per batch of data as a per-session one does (lfads-torch's combined loader instead takes
        a whole batch of every session per step, which measured worse: README, stitching). A shorter session
        cycles through its segments again; `epoch_segments` caps the segments of an epoch."""
        c = self.config
        orders = [torch.randperm(int(x.shape[0]), generator=self.generator) for x in self.x_train]
        sizes = self._shares()
        n_steps = max(math.ceil(len(o) / b) for o, b in zip(orders, sizes, strict=True))
        if c.epoch_segments:
            n_steps = min(n_steps, max(1, math.ceil(int(c.epoch_segments) / sum(sizes))))
        return [[o[torch.arange(i * b, (i + 1) * b) % len(o)] for o, b in zip(orders, sizes, strict=True)]
                for i in range(n_steps)]

    def _train_epoch(self) -> dict[str, Any]:
        c, t0 = self.config, time.perf_counter()
        self.model.train()
        kl_ramp = ramp(self.epoch, c.kl_start_epoch, c.kl_increase_epoch)
        l2_ramp = ramp(self.epoch, c.l2_start_epoch, c.l2_increase_epoch)
        lr_now = c.lr * lr_factor(self.epoch, c.max_epochs, c.lr_schedule, c.lr_min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now * group.get("lr_scale", 1.0)
        batches = self._epoch_batches()
        sums = {key: 0.0 for key in ("loss", "recon", "kl_ic", "kl_co", "l2")}
        sv_sum = np.zeros(len(self.x_train))
        sv_count = np.zeros(len(self.x_train))
        tie_sum = 0.0
        for step in batches:
            xs, svs, masks = [], [], []
            for k, idx in enumerate(step):
                x, sv = self.x_train[k][idx.to(self.device)], self.sv_train[k][idx.to(self.device)]
                xs.append(x)
                svs.append(sv)
                masks.append(self._batch_masks(x, sv))  # (input, target, keep, gradient mask, held-in)
            with _autocast(self.device, self.amp_dtype):
                outs = self.model.forward_sessions([m[0] for m in masks], self.session_ids, [m[2] for m in masks])
            losses = self.model.loss_sessions(outs, [m[1] for m in masks], [m[3] for m in masks],
                                              [m[4] for m in masks], kl_ramp=kl_ramp, l2_ramp=l2_ramp,
                                              sessions=self.session_ids)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with torch.no_grad():
                for key in sums:
                    sums[key] += float(losses[key])
                tie_sum += float(losses.get("tie", 0.0))
                for k, (out, x, sv, m) in enumerate(zip(outs, xs, svs, masks, strict=True)):
                    sv_t = sv if c.temporal_shift_ms == 0 else sv & ~m[2]
                    sv_sum[k] += float((self.model.recon_nll(out, x) * sv_t).sum())
                    sv_count[k] += float(sv_t.sum())
        stats = {key: v / max(len(batches), 1) for key, v in sums.items()}
        if not all(math.isfinite(v) for v in stats.values()):
            raise TrainingError(f"training: the loss became NaN or infinite at epoch {self.epoch} "
                                "(lower the learning rate or check the data scale)")
        per_session = self.evaluate_sessions() if any(x.shape[0] for x in self.x_val) else [
            s / n if n else math.nan for s, n in zip(sv_sum, sv_count, strict=True)]
        pooled_n = np.array([x.numel() for x in self.x_val]) if any(x.shape[0] for x in self.x_val) else sv_count
        val_loss = float(np.nansum(np.array(per_session) * pooled_n) / max(pooled_n.sum(), 1))
        val_loss, improved = self._close_epoch(val_loss, stats["recon"])
        self._update_ema(improved)
        metrics = {"epoch": self.epoch, "train_loss": stats["loss"] / c.loss_scale, "train_recon": stats["recon"],
                   "kl_ic": stats["kl_ic"], "kl_co": stats["kl_co"], "l2": stats["l2"],
                   "readout_tie_penalty": tie_sum / max(len(batches), 1), "kl_ramp": kl_ramp,
                   "l2_ramp": l2_ramp, "val_loss": val_loss, "val_loss_smoothed": self.val_smoothed,
                   "val_loss_per_session": [float(v) for v in per_session], "best": improved, "lr": c.lr,
                   "lr_effective": lr_now, "seconds": time.perf_counter() - t0}
        self.metrics.append(metrics)
        return metrics

    @torch.no_grad()
    def _update_ema(self, improved: bool) -> None:
        """Fold this epoch's trainable weights into their moving average (`weight_ema`); keep it at the best epoch."""
        if not self.weight_ema:
            return
        trainable = {id(p) for p in self.params}
        current = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if id(p) in trainable}
        if self._ema is None:
            self._ema = current
        else:
            for n, v in current.items():
                self._ema[n].mul_(self.weight_ema).add_(v, alpha=1.0 - self.weight_ema)
        if improved:
            self._ema_best = {n: v.clone() for n, v in self._ema.items()}

    @torch.no_grad()
    def evaluate_sessions(self) -> list[float]:
        """Mean reconstruction NLL on each session's validation blocks (posterior means, no dropout)."""
        self.model.eval()
        out_losses = []
        for k, (xv, svv) in enumerate(zip(self.x_val, self.sv_val, strict=True)):
            total, count = 0.0, 0
            for i in range(0, xv.shape[0], 256):
                x, sv = xv[i : i + 256], svv[i : i + 256]
                with _autocast(self.device, self.amp_dtype):
                    out = self.model(x, self.session_ids[k], keep=~sv, sample=False)
                total += float(self.model.recon_nll(out, x).sum())
                count += x.numel()
            out_losses.append(total / count if count else math.nan)
        self.model.train()
        return out_losses

    # ------------------------------------------------------------------ state (resume, PBT)
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimiser, scaler, epoch, RNGs, smoothing, best."""
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "data_digest": self.data_digest,
            "muscles": self.model.session_muscles,
            "readin_dim": int(self.model.readin_dim),
            "session_ids": list(self.session_ids),
            **progress_state(self),
        }

    def load_state_dict(self, state: dict[str, Any], check_data: bool = True) -> None:
        """Restore a `state_dict()` of a trainer on the same sessions; its hyper-parameters replace the current ones."""
        if state.get("format") != STATE_FORMAT:
            raise TrainingError("checkpoint: not the state of a multi-session (stitched) trainer")
        saved = LFADSConfig.from_dict(state["config"])
        if _architecture(saved) != _architecture(self.config):
            diff = sorted(k for k, v in _architecture(saved).items() if _architecture(self.config).get(k) != v)
            raise TrainingError(f"checkpoint: made with a different configuration (differs in {', '.join(diff)})")
        if [list(m) for m in state["muscles"]] != self.model.session_muscles or \
                int(state["readin_dim"]) != int(self.model.readin_dim):
            raise TrainingError("checkpoint: made for other sessions (their muscles or the read-in size differ)")
        if check_data and state["data_digest"] != self.data_digest:
            raise TrainingError("checkpoint: made from different data than given now")
        restore_progress(self, state, saved)

    def best_model_state(self) -> dict[str, torch.Tensor]:
        """Weights with the best smoothed pooled validation loss (current weights if none recorded); with
        `weight_ema`, the trainable ones replaced by their moving average as of that epoch."""
        state = self.best_state
        if state is None:
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if self._ema_best is not None:
            state = {**state, **self._ema_best}
        return state


@dataclass
class MultiSessionFitResult:
    """The outcome of `fit_sessions` / `adapt`: the best model (CPU, eval mode) and what the run recorded."""

    model: MultiSessionLFADS
    config: LFADSConfig
    metrics: list[dict[str, Any]]
    run_dir: Path | None
    best_val_loss: float
    weights_sha256: str
    device: str
    seed: int = 0
    best_epoch: int = -1
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _train(trainer: MultiSessionTrainer, limit: int, progress: bool, desc: str,
           run_dir: Path | None = None) -> float:
    """Train to `limit` epochs or early stopping; with `run_dir`, a checkpoint after every epoch (resume)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    with tqdm(total=limit, initial=min(trainer.epoch, limit), disable=not progress, desc=desc, unit="epoch") as bar:
        while trainer.epoch < limit and not trainer.should_stop:
            m = trainer.train_epoch()
            bar.update(1)
            bar.set_postfix(val=f"{m['val_loss_smoothed']:.4f}")
            if run_dir is not None:
                ckpt.save_checkpoint(run_dir, trainer.epoch, trainer.state_dict())
                _write_metrics_csv(run_dir / "metrics.csv", _csv_rows(trainer.metrics))
    return time.perf_counter() - t0


def _csv_rows(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "val_loss_per_session"} for m in metrics]


def fit_sessions(data: Sequence[np.ndarray], muscles: Sequence[Sequence[str]], config: LFADSConfig,
                 run_dir: str | Path | None, device: str = "auto", seed: int = 0, progress: bool = True,
                 max_epochs: int | None = None, readin_dim: int | None = None) -> MultiSessionFitResult:
    """Train one stitched LFADS on several sessions' (bins, channels) data; exports run_dir/model.pt.

    With a `run_dir`, a checkpoint is written after every epoch and an interrupted fit resumes from
    the newest readable one (same sessions, configuration and seed), like a single-session `fit`."""
    trainer = MultiSessionTrainer(data, muscles, config, device=device, seed=seed, readin_dim=readin_dim)
    if run_dir is not None:
        run_dir = ckpt.resume(run_dir, trainer)
    limit = int(max_epochs if max_epochs is not None else trainer.config.max_epochs)
    seconds = _train(trainer, limit, progress, f"LFADS x{len(data)} sessions", run_dir)
    model = trainer.model.cpu()
    model.load_state_dict(trainer.best_model_state())
    model.eval()
    sha = ""
    if run_dir is not None:
        _write_metrics_csv(run_dir / "metrics.csv", _csv_rows(trainer.metrics))
        sha = export_multisession(run_dir / ckpt.WEIGHTS_FILE, model)
    return MultiSessionFitResult(model=model, config=trainer.config, metrics=list(trainer.metrics), run_dir=run_dir,
                                 best_val_loss=float(trainer.best_val), weights_sha256=sha, device=str(trainer.device),
                                 seed=trainer.seed, best_epoch=trainer.best_epoch, seconds=seconds)


def adapt(model: MultiSessionLFADS, data: np.ndarray, muscles: Sequence[str], config: LFADSConfig | None = None,
          device: str = "auto", seed: int = 0, progress: bool = True, max_epochs: int | None = None,
          weights_path: str | Path | None = None, regress_readout: bool = True,
          readin_rounds: int = 2, fit_encoders: bool = True,
          weight_ema: float = ADAPT_WEIGHT_EMA) -> tuple[int, MultiSessionFitResult]:
    """Add a session to a trained model and fit what is its own, the shared dynamics frozen.

    Frozen: the generator (its initial-state map, GRU and factor map), the priors and every trained session.
    Fitted: the new session's read-in and read-out and, with `fit_encoders`, its own copy of the encoders and
    controller (`MultiSessionLFADS.own_encoders`, started from the shared ones), which infer the initial
    conditions and inputs that drive the frozen generator for this session's channels.
    The read-in starts from the trained sessions' by muscle name; with `regress_readout` the read-out is
    first fitted to the frozen model's factors on the new data (`MultiSessionLFADS.fit_readout`), then
    `readin_rounds` times the read-in is regressed onto the shared input space (`fit_readin`) and the
    read-out fitted again, before gradient training starts. The result keeps the moving average of the
    fitted weights over epoch ends (`weight_ema`, `ADAPT_WEIGHT_EMA`; 0: the best epoch's weights).
    Returns the new session's index and the result (the model with the session added, in place).
    """
    config = copy.deepcopy(config or model.config)
    # the frozen model was trained to the full objective: no KL/L2 ramp again, early stopping from the start
    config.kl_start_epoch = config.kl_increase_epoch = config.l2_start_epoch = config.l2_increase_epoch = 0
    arr = check_data(data, config.likelihood, what="adaptation data")
    try:
        index = model.add_session(muscles, torch.from_numpy(arr))
    except ValueError as exc:
        raise TrainingError(f"adaptation: {exc}") from None
    if regress_readout:
        segs = chop(arr, config.seg_len, config.seg_overlap)[0]
        if config.epoch_segments and segs.shape[0] > config.epoch_segments:  # a long session: an even spread
            segs = segs[spread(segs.shape[0], config.epoch_segments)]
        segs_t = torch.from_numpy(segs)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model.fit_readout(index, segs_t)
            for _ in range(readin_rounds):  # read-in onto the shared input space, then the read-out again
                model.fit_readin(index, segs_t)
                model.fit_readout(index, segs_t)
    if fit_encoders:
        model.own_encoders(index)
    own = model.train_only(index)
    try:
        trainer = MultiSessionTrainer([arr], [list(muscles)], config, device=device, seed=seed, model=model,
                                      session_ids=[index], trainable=own, weight_ema=weight_ema)
        limit = int(max_epochs if max_epochs is not None else trainer.config.max_epochs)
        seconds = _train(trainer, limit, progress, "adapt read-in/out")
        model.cpu().load_state_dict(trainer.best_model_state())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    sha = export_multisession(weights_path, model) if weights_path is not None else ""
    return index, MultiSessionFitResult(model=model, config=trainer.config, metrics=list(trainer.metrics),
                                        run_dir=None, best_val_loss=float(trainer.best_val), weights_sha256=sha,
                                        device=str(trainer.device), seed=seed, best_epoch=trainer.best_epoch,
                                        seconds=seconds)


def export_multisession(path: str | Path, model: MultiSessionLFADS) -> str:
    """Write a stitched model (config, every session's muscles, weights) atomically; returns its SHA-256."""
    payload = {"format": "nwb-lfads-emg-weights/1", "kind": WEIGHTS_KIND, "config": dataclasses.asdict(model.config),
               "sessions": model.session_muscles, "readin_dim": model.readin_dim, "n_channels": model.readin_dim,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    out = ckpt.save_atomic(payload, path)
    return ckpt.sha256_file(out)


def load_multisession(path: str | Path) -> MultiSessionLFADS:
    """A stitched model written by `export_multisession` (a run directory or the file), CPU, eval mode."""
    payload = ckpt.read_weights(path)
    if payload.get("kind") != WEIGHTS_KIND:
        raise TrainingError(f"{path}: not a multi-session model (trained on one session)")
    config = LFADSConfig.from_dict(payload["config"])
    try:
        model = MultiSessionLFADS(config, payload["sessions"], int(payload["readin_dim"]), factors=config.fac_dim)
        for k in range(len(model.sessions)):  # adapted sessions carry their own encoders and controller
            if any(key.startswith(f"sessions.{k}.encoders.") for key in payload["state_dict"]):
                model.own_encoders(k)
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, ValueError, KeyError, TypeError):
        raise TrainingError(f"{path}: the weights do not match their configuration") from None
    model.eval()
    return model


__all__ = ["MultiSessionTrainer", "MultiSessionFitResult", "fit_sessions", "adapt", "export_multisession",
           "load_multisession", "MUTABLE_HYPERPARAMETERS"]
