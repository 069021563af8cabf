"""The paper's claim on a simulated session: LFADS (demo preset, CPU) vs low-pass envelope vs Bayesian filter.

R^2 against the true activation per muscle after the best affine map, averaged over muscles, on 5 ms
bins. The low-pass cutoff is the best one chosen WITH the truth (an upper bound for that baseline).
Measured (seed 0, 60 s, 8 muscles, carrier band 20-80 Hz, 40 epochs, one thread):
LFADS 0.803, best low-pass 0.859 (10 Hz), Bayes filter 0.748. LFADS beats the Bayesian filter but
not yet the truth-tuned low-pass at this training budget; that claim is kept as a known failure (xfail).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

CUTOFFS = (2, 3, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40)


def _binmean(x: np.ndarray, factor: int, n: int) -> np.ndarray:
    m = x.shape[0] // factor
    return x[: m * factor].reshape(m, factor, -1).mean(1)[:n]


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> dict[str, float]:
    from nwb_lfads_emg.baselines.bayes import bayes_filter
    from nwb_lfads_emg.baselines.lowpass import lowpass_envelope
    from nwb_lfads_emg.evaluate import r2_affine
    from nwb_lfads_emg.lfads import preset
    from nwb_lfads_emg.preprocess import PreprocessConfig, preprocess, rectify_highpass
    from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, true_activation_binned
    from nwb_lfads_emg.training import fit, infer

    session = simulate_session(SimulationConfig(n_muscles=8, duration_s=60.0, seed=0, carrier_band_hz=(20.0, 80.0)))
    pcfg = PreprocessConfig(bin_ms=5.0)
    binned = preprocess(session.emg, session.emg_rate, pcfg)
    n = binned.data.shape[0]
    truth = true_activation_binned(session, binned.bin_rate)[:n]
    factor = int(round(session.emg_rate / binned.bin_rate))
    rect = rectify_highpass(session.emg, session.emg_rate, pcfg)
    lowpass = max(
        float(r2_affine(_binmean(lowpass_envelope(rect, session.emg_rate, c), factor, n), truth).mean())
        for c in CUTOFFS
    )
    bayes = float(r2_affine(_binmean(bayes_filter(rect, session.emg_rate), factor, n), truth).mean())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = preset("demo")
        res = fit(binned.data, cfg, tmp_path_factory.mktemp("acc"), device="cpu", seed=0, progress=False)
        inf = infer(res.model, binned.data, cfg, n_samples=20, device="cpu")
    finally:
        torch.set_num_threads(threads)
    lfads = float(r2_affine(inf.rates, truth).mean())
    print(f"R2 vs truth: LFADS {lfads:.4f}, best low-pass {lowpass:.4f}, Bayes {bayes:.4f}")
    return {"lfads": lfads, "lowpass": lowpass, "bayes": bayes}


def test_lfads_beats_bayes_filter(scores):
    assert scores["lfads"] > 0.7
    assert scores["lfads"] > scores["bayes"] + 0.03, scores


@pytest.mark.xfail(reason="demo-preset LFADS trained ~1 min does not yet beat the truth-tuned low-pass", strict=False)
def test_lfads_beats_best_lowpass(scores):
    assert scores["lfads"] > scores["lowpass"] + 0.01, scores
