"""LFADS configuration: sizes, regularisation, optimisation and segmenting, with named presets.

Loss conventions are lfads-torch's (commit 007a555), so its published KL/L2 search ranges mean the
same here (tests/test_loss_conventions.py recomputes its terms from its formulas): the
reconstruction term is the NLL averaged over ALL entries (held-in entries weighted 1 / (1 - sv_rate),
gradients only from the coordinated-dropout entries); the KL terms are sums over a segment's time
steps and dimensions averaged over the batch; the L2 term is sum_i scale_i * 0.5 * ||W_i||^2 over the
penalised recurrent matrices divided once by their total number of weights; the AR(1) prior's
`co_prior_var` is the innovation (process) variance.

Preset scales were converted from the earlier convention (recon averaged over the dropped entries
only, L2 divided per matrix) so that the presets train as before: KL scales times cd_rate, L2 scales
times cd_rate * (n_gen + n_con) / n_own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LIKELIHOODS = ("gamma", "zig", "poisson", "gaussian")

# Hyper-parameters that may change during a run (population-based training); names = fields.
MUTABLE_HYPERPARAMETERS = (
    "lr",
    "dropout",
    "cd_rate",
    "kl_ic_scale",
    "kl_co_scale",
    "l2_gen_scale",
    "l2_con_scale",
    "temporal_shift_ms",
)


@dataclass
class LFADSConfig:
    """Every setting of one LFADS run (model, augmentations, optimisation, segments)."""

    # --- sizes
    ic_enc_dim: int = 64
    ci_enc_dim: int = 64
    ci_lag: int = 1
    con_dim: int = 64
    co_dim: int = 4
    ic_dim: int = 64
    gen_dim: int = 128
    fac_dim: int = 16
    # --- posterior / priors
    ic_post_var_min: float = 1e-4
    ic_prior_var: float = 0.1
    co_prior_tau: float = 10.0
    co_prior_var: float = 0.1  # innovation variance of the AR(1) prior (lfads-torch's nvar)
    cell_clip: float = 5.0
    # --- likelihood and input transform
    likelihood: str = "gamma"
    log_input: bool = True
    # initial Gamma shape (alpha) of the read-out: "noise" estimates it per channel from the training data's
    # bin-to-bin variability (`lfads.model.noise_shape`); "one" starts from alpha = 1 (an exponential)
    shape_init: str = "noise"
    # --- regularisation and augmentation
    dropout: float = 0.3
    cd_rate: float = 0.3
    # temporal-shift augmentation (Wimalasena et al. 2022): SD in ms of the rounded-Gaussian shifts drawn
    # independently per channel for the encoder input and for the target; 0 turns it off
    temporal_shift_ms: float = 5.0
    sv_rate: float = 0.1
    kl_ic_scale: float = 3e-5
    kl_co_scale: float = 3e-5
    l2_gen_scale: float = 3.75e-3
    l2_con_scale: float = 1.5e-2
    kl_start_epoch: int = 0
    kl_increase_epoch: int = 80
    l2_start_epoch: int = 0
    l2_increase_epoch: int = 80
    # --- optimisation
    lr: float = 4e-3
    lr_schedule: str = "constant"  # "constant", or "cosine": lr * factor falling to lr_min_ratio at max_epochs
    lr_min_ratio: float = 0.1
    weight_decay: float = 0.0
    # stitched models (several sessions): strength of the pull of each session's read-out weights of a muscle
    # toward the mean over the sessions that record it (`MultiSessionLFADS.readout_tie_penalty`; the biases,
    # which carry each electrode's gain, stay free); 0: the read-outs are tied only through their start.
    # 10 measured on the simulator, seeds 0-2 (README, stitching): R^2 (mean of 12 sessions) 0.925 at 0 and
    # 1, 0.927 at 10 and 100 (adaptation 0.937, 0.938, 0.940, 0.934); a single-session model ignores it
    readout_tie: float = 10.0
    adam_eps: float = 1e-8
    grad_clip: float = 200.0
    loss_scale: float = 1e4
    batch_size: int = 64
    max_epochs: int = 500
    patience: int = 50
    val_smoothing: float = 0.9
    # an epoch counts as an improvement of the held-out blocks' loss only when its smoothed value is below the
    # best by this many standard errors of that loss (from its spread over the held-out bins); 0: any decrease.
    # On a short recording small decreases are within the held-out set's own noise: training on them fits the
    # EMG's bin-to-bin detail (see docs/design.md, "Training length").
    stop_min_se: float = 0.0
    # the exported weights: the best epoch's (False), or the running mean of the best epoch's weights and those of
    # every later epoch whose smoothed held-out loss is within `stop_min_se` standard errors of the best (True):
    # checkpoints the held-out data cannot tell apart, averaged (weight averaging, Izmailov et al. 2018), so the
    # estimate does not hang on which of them happened to be lowest (see docs/design.md, "Training length").
    average_weights: bool = False
    # --- data segments (bin_ms: the data's bin width, set by the pipeline; converts the ms settings to bins)
    bin_ms: float = 5.0
    seg_len: int = 100
    seg_overlap: int = 50
    val_fraction: float = 0.2
    val_blocks: int = 5
    epoch_segments: int | None = 4096
    """Training segments per epoch, drawn at random from all of the recording's (None: all of them), so an
    epoch's cost does not grow with the recording; at most as many validation segments are scored, evenly
    spread over the validation blocks. A recording with fewer segments (below ~10 min at 5 ms bins and the
    demo's 60-bin segments) trains and validates on all of them every epoch."""
    # --- compute
    precision: str = "auto"  # "auto" (fp32 everywhere: see training.trainer.autocast_dtype), "fp32", "bf16", "fp16"
    compile: bool = False
    # the decoder's time loop as one autograd Function with a hand-written backward (same outputs,
    # gradients and RNG use as the eager step loop, faster on CPU)
    fast_decoder: bool = True
    num_threads: int | None = None
    preset_name: str = field(default="custom")

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LFADSConfig:
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {self.likelihood!r}")
        if self.epoch_segments is not None and int(self.epoch_segments) < 1:
            raise ValueError(f"epoch_segments ({self.epoch_segments}) must be at least 1 (or None: all segments)")
        if not 0 <= self.seg_overlap < self.seg_len:
            raise ValueError(f"seg_overlap ({self.seg_overlap}) must be in [0, seg_len={self.seg_len})")
        if not 0.0 <= self.cd_rate < 1.0 or not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.sv_rate < 1.0:
            raise ValueError("cd_rate, dropout and sv_rate must lie in [0, 1)")
        if self.cd_rate + self.sv_rate >= 0.95:
            raise ValueError("cd_rate + sv_rate leaves too little input for the encoders")
        if not self.stop_min_se >= 0.0:
            raise ValueError(f"stop_min_se ({self.stop_min_se}) must be at least 0")
        if self.shape_init not in ("noise", "one"):
            raise ValueError(f"shape_init must be noise or one, not {self.shape_init!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        for name in ("ic_enc_dim", "ci_enc_dim", "con_dim", "ic_dim", "gen_dim", "fac_dim", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.co_dim < 0 or self.temporal_shift_ms < 0:
            raise ValueError("co_dim and temporal_shift_ms must be >= 0")
        if not self.readout_tie >= 0.0:
            raise ValueError(f"readout_tie ({self.readout_tie}) must be at least 0")
        if self.bin_ms <= 0:
            raise ValueError(f"bin_ms must be > 0, not {self.bin_ms}")


def preset(name: str) -> LFADSConfig:
    """Named configurations: "demo" (about 2 minutes on one CPU thread for 60 s of EMG), "default", "paper" (the seed's sizes)."""
    if name == "demo":
        # On one CPU thread a step costs about the same at these widths (the per-time-step loop's
        # overheads dominate), and the wider IC path and generator learn much faster per step.
        cfg = LFADSConfig(
            ic_enc_dim=64,
            ci_enc_dim=32,
            con_dim=32,
            co_dim=4,
            ic_dim=32,
            gen_dim=64,
            fac_dim=8,
            dropout=0.05,
            cd_rate=0.3,
            sv_rate=0.05,
            kl_ic_scale=3e-5,
            kl_co_scale=3e-5,
            l2_gen_scale=3.75e-4,
            l2_con_scale=1.5e-3,
            kl_increase_epoch=10,
            l2_increase_epoch=10,
            lr=1e-2,
            # a half-cosine decay of the learning rate over the run: most of the gain over a constant
            # rate comes in the last epochs (measured: R^2 0.83 -> 0.86 on the simulator)
            lr_schedule="cosine",
            lr_min_ratio=0.1,
            batch_size=32,
            max_epochs=70,
            patience=20,
            seg_len=60,
            seg_overlap=30,
            # no held-out blocks: every bin trains; early stopping watches the sample-validation entries
            val_fraction=0.0,
            # temporal shift OFF here: on the accuracy session (carrier 15-50 Hz, 5 ms bins, sharp onsets)
            # it cost R^2: 0.836 without, 0.789 at SD 2 ms, 0.784 at SD 5 ms (demo, seed 0)
            temporal_shift_ms=0.0,
            # the demo's accuracy was measured with alpha = 1 at the start (the auto preset uses "noise")
            shape_init="one",
            # one thread: a model this small is as fast on one as on two, and far faster when the
            # other core is busy (another trial, the data pipeline, a loaded CI machine)
            num_threads=1,
        )
    elif name == "default":
        cfg = LFADSConfig()
    elif name == "paper":
        # Sizes of the seed paper's AutoLFADS EMG models (LFADS defaults of that code base).
        cfg = LFADSConfig(
            ic_enc_dim=128,
            ci_enc_dim=128,
            con_dim=128,
            co_dim=4,
            ic_dim=100,
            gen_dim=100,
            fac_dim=20,
            kl_ic_scale=3e-5,
            kl_co_scale=3e-5,
            l2_gen_scale=7.9e-3,
            l2_con_scale=4.8e-3,
            batch_size=256,
            max_epochs=1000,
            seg_len=200,
            seg_overlap=50,
        )
    else:
        raise ValueError(f"unknown preset {name!r}; choose demo, default or paper")
    cfg.preset_name = name
    cfg.validate()
    return cfg
