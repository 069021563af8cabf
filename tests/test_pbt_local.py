"""AutoLFADS on an embedded local Ray: a population of 4 tiny models, interrupted and resumed.

The first half runs in a child process that gets SIGINT (as Ctrl+C) after the first selection;
the second call resumes the saved population in this process and runs the search to its end. The
exploits are checked against the selection's own log and against what the workers report they
loaded; member 0 must be the preset's own single model, bit for bit, across the interruption.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

INTERVAL = 2
GENERATIONS = 3


def tiny_data(n_bins: int = 900, n_ch: int = 4, seed: int = 0) -> np.ndarray:
    """Gamma-distributed 'EMG envelopes' around smooth activations (strictly positive)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_bins) / 200.0
    act = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (1 + 0.3 * c) * t + c) for c in range(n_ch)], 1)
    return (rng.gamma(4.0, act / 4.0) + 0.01).astype(np.float32)


def tiny_config():
    """The demo preset shrunk to a few thousand parameters (an epoch takes well under a second)."""
    import dataclasses

    from nwb_lfads_emg.lfads.config import preset

    return dataclasses.replace(preset("demo"), ic_enc_dim=8, ci_enc_dim=8, con_dim=8, co_dim=2, ic_dim=8,
                               gen_dim=16, fac_dim=4, seg_len=40, seg_overlap=10, batch_size=16,
                               kl_increase_epoch=4, l2_increase_epoch=4, lr=5e-3, lr_schedule="constant",
                               val_fraction=0.15, val_blocks=2, num_threads=1, max_epochs=INTERVAL * GENERATIONS)


def tiny_space():
    from nwb_lfads_emg.training.search_space import autolfads_search_space

    return autolfads_search_space({"lr": (1e-4, 3e-2), "temporal_shift_ms": (2.0, 10.0)})


CHILD = textwrap.dedent("""
    import signal, sys, time, numpy as np
    # Ctrl+C as a terminal delivers it, whatever disposition or mask this process inherited from its parent
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGINT}})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    from test_pbt_local import tiny_config, tiny_space, INTERVAL, GENERATIONS
    from nwb_lfads_emg.training.pbt import fit_pbt
    data = np.load({data!r})
    def wait_for_interrupt(generation, record):
        # after the first selection is saved, wait (up to 120 s) for the parent's Ctrl+C; a loaded machine can
        # delay its poll by seconds. Short sleeps: the main thread raises KeyboardInterrupt at the next one
        # even when the signal landed on one of Ray's threads.
        for _ in range(1200 if generation == 1 else 0):
            time.sleep(0.1)
    fit_pbt(data, tiny_config(), {run_dir!r}, population=4, max_generations=GENERATIONS,
            perturbation_interval=INTERVAL, seed=0, progress=False, search_space=tiny_space(),
            patience_generations=10, shared_data_path={shared!r},
            on_generation=wait_for_interrupt)
""")


def _record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "pbt" / "population.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def test_local_pbt_interrupted_resumed_exploits_and_exports_best(tmp_path):
    import torch

    from nwb_lfads_emg.training.inference import load_model
    from nwb_lfads_emg.training.pbt import fit_pbt
    from nwb_lfads_emg.training.trainer import Trainer

    data = tiny_data()
    data_file = tmp_path / "data.npy"
    np.save(data_file, data)
    run_dir = tmp_path / "run"
    shared = tmp_path / "shared"
    code = CHILD.format(tests=str(Path(__file__).parent), data=str(data_file), run_dir=str(run_dir),
                        shared=str(shared))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    # -- part 1: run until the first selection is recorded, then interrupt like Ctrl+C
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if _record(run_dir).get("policy_log"):
                break
            time.sleep(0.2)
        assert child.poll() is None, "the search ended before it could be interrupted"
        before = _record(run_dir)
        assert before["completed"] == 1 and before["policy_log"][0]["replaced"], "no exploit after generation 1"
        child.send_signal(signal.SIGINT)
        try:
            out, _ = child.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            child.kill()
            out, _ = child.communicate()
            raise AssertionError(f"the search did not stop within 90 s of Ctrl+C: {out[-2000:]}") from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert "interrupted" in out and "resume" in out, out[-2000:]
    assert (shared / "pbt_data.npy").is_file()  # the members read the data from the shared path

    # -- part 2: the same call resumes the saved population and finishes it
    res = fit_pbt(data, tiny_config(), run_dir, population=4, max_generations=GENERATIONS,
                  perturbation_interval=INTERVAL, seed=0, progress=False, search_space=tiny_space(),
                  patience_generations=10, shared_data_path=shared)
    hist = res.pbt_history
    json.dumps(hist, allow_nan=False)  # strict JSON for the provenance record
    total = INTERVAL * GENERATIONS
    assert sorted(hist["trials"]) == [f"member_{i:02d}" for i in range(4)]
    for t in hist["trials"].values():  # every epoch once: nothing replayed or lost by the resume
        assert t["iterations"] == list(range(1, total + 1)) and t["status"] == "ok"
    old, new = before["policy_log"][0]["replaced"], hist["policy_log"][0]["replaced"]
    assert [(r["target"], r["source"]) for r in new] == [(r["target"], r["source"]) for r in old]
    assert all(new[0]["hp_after"][k] == pytest.approx(v, rel=1e-6) for k, v in old[0]["hp_after"].items()), \
        "the selection logged before the interruption was lost"

    # -- truncation at generation ends: the worst member copied one of the best, confirmed by the workers
    space = tiny_space()
    assert [p["generation"] for p in hist["policy_log"]] == list(range(1, GENERATIONS))
    gen_log = {(e["generation"], e["member"]): e for e in hist["generation_log"]}
    for p in hist["policy_log"]:
        ranking = [name for name, _ in p["ranking"]]
        assert p["epoch"] == p["generation"] * INTERVAL
        # the worst is replaced by the best (with 4 members, a quarter is one), unless it is the protected member 0
        assert [(r["target"], r["source"]) for r in p["replaced"]] == \
            ([] if ranking[-1] == "member_00" else [(ranking[-1], ranking[0])])
        for step in p["replaced"]:
            # the worker that trained the target's next generation started from the source's saved state
            assert gen_log[(p["generation"] + 1, step["target"])]["loaded_sha256"] == \
                gen_log[(p["generation"], step["source"])]["state_sha256"]
            assert all(space[k].low <= v <= space[k].high for k, v in step["hp_after"].items())
    steps = {(r["target"], r["source"], p["epoch"]): r for p in hist["policy_log"] for r in p["replaced"]}
    assert hist["exploits"] and {(e["trial"], e["source"], e["iteration"]) for e in hist["exploits"]} == set(steps)
    for e in hist["exploits"]:  # the member trained on with the explored values the policy logged
        step = steps[(e["trial"], e["source"], e["iteration"])]
        assert all(math.isclose(e["hp_after"][k], step["hp_after"][k], rel_tol=1e-5) for k in space)

    # -- member 0 is the preset's own model (unclipped values, never replaced): the same numbers as one fit
    cfg = tiny_config()
    anchor = hist["trials"]["member_00"]
    assert hist["anchor"]["member"] == 0 and len(anchor["hp_segments"]) == 1
    assert all(anchor["initial_hp"][k] == pytest.approx(getattr(cfg, k), rel=1e-6) for k in space)
    single = Trainer(data, cfg, device="cpu", seed=0)
    for _ in range(total):
        single.train_epoch()
    assert anchor["val_loss_smoothed"] == pytest.approx([m["val_loss_smoothed"] for m in single.metrics], rel=1e-5)
    assert res.best_val_loss <= single.best_val + 1e-6 * abs(single.best_val)  # never worse than the preset on held-out data

    # -- the exported model is the population's best and really is the weights that scored it
    win = hist["winner"]
    post_ramp = [v for t in hist["trials"].values() for it, v in zip(t["iterations"], t["val_loss_smoothed"],
                                                                      strict=True) if it >= single.ramp_end]
    assert res.best_val_loss <= min(post_ramp) + 1e-6 * abs(min(post_ramp))
    assert res.model_dir == run_dir / "best" and (run_dir / "best" / "model.pt").is_file()
    model, best_cfg = load_model(run_dir / "best")
    assert all(getattr(best_cfg, k) == pytest.approx(v, rel=1e-6) for k, v in win["hp"].items())
    check = Trainer(data, best_cfg, device="cpu", seed=0)
    check.model.load_state_dict(model.state_dict())
    assert check.evaluate() == pytest.approx(win["val_loss"], rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), res.model.state_dict().values(),
                                                   strict=True))
    assert win["lineage"] and win["lineage"][-1]["trial"] == res.best_trial

    # -- the summary plot and the history file
    assert res.plot_path is not None and res.plot_path.stat().st_size > 10_000
    assert json.loads((run_dir / "pbt_history.json").read_text())["winner"]["trial"] == res.best_trial
