"""AutoLFADS and resume for a stitched model of several sessions.

`fit SOURCE SOURCE --pbt` trains one stitched model per population member on Ray, selects on the
held-out loss pooled over the sessions and exports the best; a stitched fit resumes from its
checkpoints to the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pynwb import NWBHDF5IO, validate

from nwb_lfads_emg.errors import TrainingError
from nwb_lfads_emg.preprocess import PreprocessConfig, preprocess
from nwb_lfads_emg.simulate import write_session_nwb
from nwb_lfads_emg.simulate_sessions import SessionSetConfig, simulate_sessions
from nwb_lfads_emg.training import checkpoint as ckpt
from nwb_lfads_emg.training.multisession import fit_sessions
from nwb_lfads_emg.training.trainer import Trainer

TINY = {"ic_enc_dim": 8, "ci_enc_dim": 8, "con_dim": 8, "co_dim": 2, "ic_dim": 8, "gen_dim": 16, "fac_dim": 4,
        "seg_len": 40, "seg_overlap": 10, "batch_size": 32, "num_threads": 1, "kl_increase_epoch": 2,
        "l2_increase_epoch": 2}


@pytest.fixture(scope="module")
def sims():
    """Two 8 s sessions of one animal with different muscle subsets."""
    return simulate_sessions(SessionSetConfig(n_sessions=2, duration_s=8.0, seed=0))


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_stitched_fit_resumes_from_its_checkpoints(sims, tmp_path):
    from nwb_lfads_emg.lfads.config import preset

    config = dataclasses.replace(preset("demo"), **TINY)
    data = [preprocess(s.emg, s.emg_rate, PreprocessConfig()).data for s in sims]
    muscles = [s.muscle_names for s in sims]
    run = tmp_path / "run"
    first = fit_sessions(data, muscles, config, run, device="cpu", progress=False, max_epochs=2)
    assert [e for e, _ in ckpt.list_checkpoints(run)] == [1, 2]
    resumed = fit_sessions(data, muscles, config, run, device="cpu", progress=False, max_epochs=4)
    whole = fit_sessions(data, muscles, config, None, device="cpu", progress=False, max_epochs=4)
    assert len(resumed.metrics) == 4 and resumed.metrics[:2] == first.metrics
    assert [m["val_loss"] for m in resumed.metrics] == pytest.approx([m["val_loss"] for m in whole.metrics], rel=1e-6)
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a run directory of one session's model is not continued as a stitched one
    other = tmp_path / "single"
    single = Trainer(data[0], config, device="cpu")
    single.train_epoch()
    ckpt.save_checkpoint(other, 1, single.state_dict())
    with pytest.raises(TrainingError, match="multi-session"):
        fit_sessions(data, muscles, config, other, device="cpu", progress=False, max_epochs=2)


@pytest.mark.slow
def test_pbt_on_several_sources_selects_on_the_pooled_loss(sims, tmp_path):
    from nwb_lfads_emg.pipeline import JobConfig, PBTSettings
    from nwb_lfads_emg.sessions import annotate_any, fit_sources

    files = [write_session_nwb(s, tmp_path / f"ses-{k}.nwb") for k, s in enumerate(sims)]
    before = {p: _sha(p) for p in files}
    run = tmp_path / "run"
    # every member drawn from the space (the preset member is tested in test_pbt_local): the worst is replaced
    settings = PBTSettings(population=3, interval=1, start_from_config=False, search_space={"lr": [1e-3, 2e-2]})
    job = JobConfig(preset="demo", max_epochs=2, pbt=True, pbt_settings=settings, progress=False,
                    lfads_overrides=TINY, device="cpu")
    result = fit_sources([str(f) for f in files], run, emg="EMG", job=job)
    record = json.loads((run / "job.json").read_text())
    assert record["kind"] == "multisession" and record["model_dir"] == str(run / "best")
    hist = record["pbt_history"]
    assert hist["population"] == 3 and hist["population_rule"] == "given (--population)"
    assert all(t["iterations"] == [1, 2] for t in hist["trials"].values())
    # the selection ranked members on the validation loss pooled over both sessions
    (step,) = hist["policy_log"]
    pooled = {name: t["val_loss_smoothed"][0] for name, t in hist["trials"].items()}
    assert [name for name, _ in step["ranking"]] == sorted(pooled, key=pooled.get)
    for t in hist["trials"].values():
        lo, hi = min(t["val_loss_per_session"][0]), max(t["val_loss_per_session"][0])
        assert lo <= t["val_loss"][0] <= hi and len(t["val_loss_per_session"][0]) == 2
    (copy,) = step["replaced"]
    assert copy["target"] == step["ranking"][-1][0] and copy["source"] == step["ranking"][0][0]
    log = {(e["generation"], e["member"]): e for e in hist["generation_log"]}
    assert log[(2, copy["target"])]["loaded_sha256"] == log[(1, copy["source"])]["state_sha256"]
    # the exported model: the best of any member after the KL/L2 ramps (2 epochs here), as a single fit picks
    best_last = min(t["val_loss_smoothed"][-1] for t in hist["trials"].values())
    assert result.best_val_loss <= best_last + 1e-6 * abs(best_last)  # (the history rounds to 7 digits)
    # the exported stitched model annotates a training session with its own read-in/read-out
    out = tmp_path / "ses-1_annotated.nwb"
    annotate_any(files[1], run, out=out, emg="EMG")
    assert validate(path=str(out), use_cached_namespaces=True) == []
    with NWBHDF5IO(str(out), "r") as io:
        module = io.read().processing["ecephys"]
        prov = module["LFADSModelProvenance"]
        assert json.loads(prov.pbt_history)["winner"]["trial"] == hist["winner"]["trial"]
        assert json.loads(prov.config)["multisession"]["readin_readout"]["session_index"] == 1
        assert module["AutoLFADS"].data.shape[1] == len(sims[1].muscle_names)
    assert {p: _sha(p) for p in files} == before


def test_stitched_epoch_steps_on_every_session_and_is_capped_by_epoch_segments(sims):
    """Each step trains one batch of `batch_size` segments drawn from every session in proportion to its
    segments, an epoch is one pass over all of them (as many steps as the longest session needs at its
    share; a shorter one cycles), and `epoch_segments` caps the segments per epoch and those validated; a
    session's own weights learn faster the smaller its share (`session_lr_scale`)."""
    from nwb_lfads_emg.lfads.config import preset
    from nwb_lfads_emg.training.multisession import MultiSessionTrainer

    data = [preprocess(s.emg, s.emg_rate, PreprocessConfig()).data for s in sims]
    data[1] = data[1][: data[1].shape[0] // 3]  # a shorter session cycles through its segments
    muscles = [s.muscle_names for s in sims]
    config = dataclasses.replace(preset("demo"), **{**TINY, "val_fraction": 0.2, "val_blocks": 2, "batch_size": 8})
    whole = MultiSessionTrainer(data, muscles, config, device="cpu")
    steps = whole._epoch_batches()
    sizes = [int(x.shape[0]) for x in whole.x_train]
    shares = [round(config.batch_size * n / sum(sizes)) for n in sizes]
    assert sizes[0] > 2 * sizes[1] and shares[0] > 2 * shares[1] >= 2 and sum(shares) == config.batch_size
    assert len(steps) == -(-sizes[0] // shares[0]) and len(steps) > -(-sizes[0] // config.batch_size)
    assert all(len(step) == 2 and [len(i) for i in step] == shares for step in steps)
    assert sorted(torch.cat([s[0] for s in steps]).unique().tolist()) == list(range(sizes[0]))
    assert sorted(torch.cat([s[1] for s in steps]).unique().tolist()) == list(range(sizes[1]))
    assert whole.model.config.fac_dim == len(whole.model.union) + TINY["fac_dim"]
    capped = MultiSessionTrainer(data, muscles, dataclasses.replace(config, epoch_segments=8), device="cpu")
    assert len(capped._epoch_batches()) == 1  # 8 segments: one step
    n_val = [int(x.shape[0]) for x in capped.x_val]
    assert sum(n_val) <= 9 < sum(int(x.shape[0]) for x in whole.x_val) and min(n_val) >= 1
    m = capped.train_epoch()
    assert len(m["val_loss_per_session"]) == 2 and all(np.isfinite(m["val_loss_per_session"]))
    # a session's own read-in/read-out learns at sqrt(batch / its share) times the shared weights' rate
    group = {id(p): g for g in capped.optimizer.param_groups for p in g["params"]}
    for k, io in enumerate(capped.model.sessions):
        want = m["lr_effective"] * math.sqrt(config.batch_size / shares[k])
        assert all(group[id(p)]["lr"] == pytest.approx(want) for p in io.parameters())
    assert all(group[id(p)]["lr"] == pytest.approx(m["lr_effective"]) for p in capped.model.core.parameters())
    alone = MultiSessionTrainer(data[:1], muscles[:1], config, device="cpu")  # one session: as a single model
    assert [g["lr_scale"] for g in alone.optimizer.param_groups] == [1.0]
