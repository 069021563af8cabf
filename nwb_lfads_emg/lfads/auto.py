"""The `auto` preset: an LFADS configuration sized from the data (length, channels, time scales) and device."""

from __future__ import annotations

import math

from .config import LFADSConfig, preset


def auto_config(n_bins: int, n_channels: int, bin_ms: float, segment_ms: float, device: str = "cpu",
                steps: int | None = None) -> LFADSConfig:
    """Sizes, segments, epochs and held-out blocks for `n_bins` bins of `n_channels` channels.

    CPU: the demo preset's widths on one thread, about `steps` = 1000 gradient steps (about as long
    as the demo); CUDA: the default preset's widths and 4000 steps (`steps` overrides: a short run). Factors follow the channel count
    (4-16). Recordings under 5 minutes hold out 20 % in 5 blocks for early stopping (a decrease of the
    smoothed held-out loss counts only beyond one standard error of that loss, `stop_min_se`; the exported
    weights average the best epoch's with the later ones within that error, `average_weights`), longer
    ones rely on sample validation.
    """
    gpu = device.startswith("cuda")
    cfg = preset("default" if gpu else "demo")
    cfg.preset_name = "auto"
    cfg.shape_init = "noise"  # Gamma shape from the data's bin-to-bin noise (the demo keeps alpha = 1)
    cfg.temporal_shift_ms = 5.0  # on (the demo widths' preset turns it off; see lfads.config)
    cfg.fac_dim = int(min(max(n_channels, 4), 16))
    cfg.bin_ms = float(bin_ms)
    cfg.seg_len = max(10, int(round(segment_ms / bin_ms)))
    cfg.seg_overlap = cfg.seg_len // 2
    duration_s = n_bins * bin_ms / 1000.0
    cfg.val_fraction, cfg.val_blocks = (0.2, 5) if duration_s < 300.0 else (0.0, 5)
    train_bins = n_bins * (1.0 - cfg.val_fraction)
    n_segments = max(1, int(train_bins / max(cfg.seg_len - cfg.seg_overlap, 1)))
    cfg.batch_size = int(min(cfg.batch_size if not gpu else 128, max(8, n_segments // 4)))
    steps_per_epoch = math.ceil(n_segments / cfg.batch_size)
    if steps is None:
        steps = 4000 if gpu else 1000
        cfg.max_epochs = int(min(max(steps // steps_per_epoch, 40), 400))
    else:
        cfg.max_epochs = max(1, math.ceil(steps / steps_per_epoch))
    cfg.patience = max(20, cfg.max_epochs // 5)
    cfg.stop_min_se = 1.0  # improvements within the held-out loss's own standard error do not count
    cfg.average_weights = True  # ... and the epochs within it of the best are averaged into the exported weights
    cfg.kl_increase_epoch = cfg.l2_increase_epoch = max(5, cfg.max_epochs // 7)
    cfg.validate()
    return cfg
