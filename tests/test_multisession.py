"""Multi-session AutoLFADS (stitching): the model's read-in/read-out, the accuracy claims against the
truth of simulated sessions of one animal, and the CLI end to end on local files and on the assets
of a dandiset served by the local DANDI stand-in (`--match`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dandi_server import dandi_server  # noqa: F401  (pytest fixture)
from pynwb import NWBHDF5IO, validate

from nwb_lfads_emg.cli import main
from nwb_lfads_emg.errors import TrainingError
from nwb_lfads_emg.lfads.config import preset
from nwb_lfads_emg.lfads.readin import MultiSessionLFADS
from nwb_lfads_emg.metrics import r2_affine
from nwb_lfads_emg.preprocess import PreprocessConfig, preprocess
from nwb_lfads_emg.simulate import true_activation_binned, write_session_nwb
from nwb_lfads_emg.simulate_sessions import SessionSetConfig, simulate_sessions
from nwb_lfads_emg.training.inference import infer
from nwb_lfads_emg.training.multisession import (
    MultiSessionTrainer,
    adapt,
    export_multisession,
    fit_sessions,
    load_multisession,
)
from nwb_lfads_emg.training.trainer import Trainer

METHODS = {"AutoLFADS", "LowPass", "BayesianFilter"}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sims():
    """Five 20 s sessions of one animal (simulator defaults; 6-8 of its 10 muscles each)."""
    return simulate_sessions(SessionSetConfig(n_sessions=5, duration_s=20.0, seed=0))


@pytest.fixture(scope="module")
def files(sims, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("sessions")
    return [write_session_nwb(s, folder / f"sub-rat_ses-{k}.nwb") for k, s in enumerate(sims)]


# ---------------------------------------------------------------------------- the model
def test_readin_tied_by_muscle_name_and_adapt_freezes_shared_weights(sims, tmp_path):
    config = preset("demo")
    data = [torch.from_numpy(preprocess(s.emg, s.emg_rate, PreprocessConfig()).data) for s in sims[:2]]
    model = MultiSessionLFADS(config, [s.muscle_names for s in sims[:2]])
    model.initialise(data)
    a, b = model.sessions
    shared = [m for m in a.muscles if m in b.muscles]
    assert shared and set(a.muscles) != set(b.muscles)
    for m in shared:  # same read-in column and read-out rows for one muscle in both sessions
        i, j = a.muscles.index(m), b.muscles.index(m)
        torch.testing.assert_close(a.readin.weight[:, i], b.readin.weight[:, j])
        torch.testing.assert_close(a.readout.weight[[i, a.n_channels + i]], b.readout.weight[[j, b.n_channels + j]])
    out = model(data[1][None, :60], 1)
    assert out.means.shape == (1, 60, b.n_channels)
    core = {k: v.clone() for k, v in model.core.state_dict().items()}
    olds = {k: v.clone() for k, v in model.sessions.state_dict().items()}
    new = sims[2]
    x = preprocess(new.emg, new.emg_rate, PreprocessConfig()).data
    index, result = adapt(model, x, new.muscle_names, device="cpu", progress=False, max_epochs=2)
    assert index == 2 and len(result.metrics) == 2
    for k, v in model.core.state_dict().items():
        torch.testing.assert_close(v, core[k])
    for k, v in olds.items():
        torch.testing.assert_close(model.sessions.state_dict()[k], v)
    assert model.sessions[2].muscles == new.muscle_names
    # the new session reads through its own encoders and controller into the shared generator and factor map
    own = model.sessions[2].encoders
    assert own is not None and own.decoder.gen is model.core.decoder.gen
    assert own.decoder.fac_weight is model.core.decoder.fac_weight and own.ic_encoder is not model.core.ic_encoder
    assert not torch.equal(own.ic_encoder.gru.weight_ih_l0, core["ic_encoder.gru.weight_ih_l0"])  # trained
    export_multisession(tmp_path / "adapted.pt", model)
    back = load_multisession(tmp_path / "adapted.pt")
    x2 = torch.from_numpy(x[None, :60])
    torch.testing.assert_close(back(x2, 2, sample=False).means, model(x2, 2, sample=False).means)


def test_readout_tie_penalty_pools_the_rows_of_a_muscle_across_sessions():
    """The penalty is 0.5 * the mean squared deviation of a shared muscle's read-out weights from their mean over
    the sessions recording it: zero when they agree (whatever the biases and the one-session muscles), quadratic
    in a deviation, restricted to the sessions given, with gradients (W - mean) / count on the rows; the stitched
    loss adds it at `loss_scale * readout_tie`."""
    config = preset("demo")
    config.readout_tie = 2.0
    model = MultiSessionLFADS(config, [["a", "b", "c"], ["b", "c", "d"], ["c", "e"]])
    rows = torch.randn(5, 2, model.config.fac_dim)  # one (n_params, factors) block per muscle a..e
    with torch.no_grad():
        for io in model.sessions:
            for c, name in enumerate(io.muscles):
                io.readout.weight.view(2, io.n_channels, -1)[:, c] = rows["abcde".index(name)]
            io.readout.bias.normal_()  # each session's own gains: not penalised

    def penalty(sessions: list[int] | None = None) -> float:
        return float(model.readout_tie_penalty(sessions).detach())

    assert penalty() == pytest.approx(0.0, abs=1e-12)
    count = (2 + 3) * 2 * model.config.fac_dim  # b in two sessions, c in three; a, d, e in one
    delta = torch.randn(2, model.config.fac_dim)
    values = []
    for scale in (1.0, 2.0):
        with torch.no_grad():
            w0 = model.sessions[0].readout.weight.view(2, 3, -1)
            w0[:, 1] = rows[1] + scale * delta  # b deviates in session 0
            w0[:, 0] = rows[0] + 5 * scale  # a (session 0 only) is free
        values.append(penalty())
    expected = 0.5 * 0.5 * float(delta.pow(2).sum()) / count  # deviations +delta/2 and -delta/2
    assert values[0] == pytest.approx(expected, rel=1e-5) and values[1] == pytest.approx(4 * expected, rel=1e-5)
    assert penalty([0, 2]) == pytest.approx(0.0, abs=1e-12)  # b is not shared between sessions 0 and 2
    model.readout_tie_penalty().backward()
    g0 = model.sessions[0].readout.weight.grad.view(2, 3, -1)
    g1 = model.sessions[1].readout.weight.grad.view(2, 3, -1)
    torch.testing.assert_close(g0[:, 1], 2 * delta / 2 / count)
    torch.testing.assert_close(g1[:, 0], -2 * delta / 2 / count)
    assert not g0[:, 0].any() and not g1[:, 2].any() and g0[:, 2].abs().max() < 1e-9  # a: one session; c: equal rows
    assert model.sessions[0].readout.bias.grad is None
    x = [torch.rand(2, 10, io.n_channels) + 0.1 for io in model.sessions]
    with torch.no_grad():
        outs = model.forward_sessions(x, [0, 1, 2], sample=False)
        tied = model.loss_sessions(outs, x, [None] * 3, [None] * 3, sessions=[0, 1, 2])
        model.config.readout_tie = 0.0
        free = model.loss_sessions(outs, x, [None] * 3, [None] * 3, sessions=[0, 1, 2])
    assert float(tied["loss"] - free["loss"]) == pytest.approx(config.loss_scale * 2.0 * 4 * expected, rel=1e-4)


def test_fit_readin_puts_a_new_session_where_the_trained_one_was(sims):
    """A new session that records the same muscles as a trained one (in another channel order) gets that
    session's read-in back from any start: the regression's target is the trained session's encoder input."""
    config = preset("demo")
    x = preprocess(sims[0].emg, sims[0].emg_rate, PreprocessConfig()).data[:1200]
    names = sims[0].muscle_names
    model = MultiSessionLFADS(config, [names])
    model.initialise([torch.from_numpy(x)])
    order = np.random.default_rng(0).permutation(len(names))
    index = model.add_session([names[i] for i in order], torch.from_numpy(x[:, order]))
    new, old = model.sessions[index], model.sessions[0]
    with torch.no_grad():
        new.readin.weight.normal_()
        new.readin.bias.normal_()
    segments = torch.from_numpy(np.stack([x[i : i + config.seg_len] for i in range(0, 1200 - config.seg_len, 30)]))
    model.fit_readin(index, segments[:, :, order])
    torch.testing.assert_close(new.readin.weight, old.readin.weight[:, order], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(new.readin.bias, old.readin.bias, atol=1e-4, rtol=1e-3)


def test_adapt_trainer_keeps_the_moving_average_of_the_fitted_weights(sims):
    """With `weight_ema` the trainer's result holds, for the fitted weights only, their exponential moving
    average over epoch ends as of the best epoch (what `adapt` keeps); the frozen weights stay as trained."""
    config = preset("demo")
    config.kl_start_epoch = config.kl_increase_epoch = config.l2_start_epoch = config.l2_increase_epoch = 0
    config.val_smoothing = 0.0
    x = preprocess(sims[0].emg, sims[0].emg_rate, PreprocessConfig()).data[:1200]
    names = sims[0].muscle_names
    torch.manual_seed(0)  # the weights' start, so the best epoch does not hang on the tests run before
    model = MultiSessionLFADS(config, [names])
    model.initialise([torch.from_numpy(x)])
    index = model.add_session(names, torch.from_numpy(x))
    model.own_encoders(index)
    own = model.train_only(index)
    frozen = {k: v.clone() for k, v in model.core.state_dict().items()}
    with pytest.raises(TrainingError, match="weight_ema"):
        MultiSessionTrainer([x], [names], config, device="cpu", model=model, session_ids=[index], trainable=own,
                            weight_ema=1.0)
    decay = 0.5
    trainer = MultiSessionTrainer([x], [names], config, device="cpu", model=model, session_ids=[index],
                                  trainable=own, weight_ema=decay)
    fitted = {n for n, p in model.named_parameters() if p.requires_grad}
    assert fitted and all(n.startswith(f"sessions.{index}.") for n in fitted)
    ema, at_best, raw_best = None, None, None
    for _ in range(4):  # the validation loss rises at epoch 2 and reaches a new best by epoch 4 (init seeds 0-3)
        best = trainer.train_epoch()["best"]
        now = {n: p.detach().clone() for n, p in model.named_parameters() if n in fitted}
        ema = now if ema is None else {n: decay * ema[n] + (1 - decay) * now[n] for n in now}
        at_best, raw_best = (dict(ema), now) if best else (at_best, raw_best)
    state = trainer.best_model_state()
    assert trainer.best_epoch > 1 and ema.keys() == fitted  # the average at the best epoch spans epochs
    for n in fitted:
        torch.testing.assert_close(state[n], at_best[n])
    assert any(not torch.allclose(at_best[n], raw_best[n]) for n in fitted)  # not the best epoch's own weights
    for k, v in frozen.items():
        torch.testing.assert_close(state[f"core.{k}"], v)
        torch.testing.assert_close(model.core.state_dict()[k], v)


# ---------------------------------------------------------------------------- the claim
# Both sides trained as `fit` trains them (early stopping, best weights) for the same epochs; a stitched
# epoch is one pass over all four sessions in batches of the preset's size, as a per-session epoch is
# over its one session (four times the steps, four times the CPU of one per-session model). 40 epochs is the
# cheapest length at which the per-session models are trained (R^2 0.76-0.91 vs truth, near the low-pass;
# at 8 they are at 0.2-0.35, starved, and comparing there says nothing). It costs about 8 minutes of one
# CPU core, over the suite's per-test budget, so these are `claim` tests, run with NWB_LFADS_EMG_CLAIMS=1;
# the models are trained once (`stitching_rows`) for both tests, which share one serial group
# (tests/conftest.py). benchmarks/bench_multisession.py prints the same comparison over seeds (its seed 0
# runs exactly these calls). Issue 17 asks the stitched model to win every training session by a margin
# the test asserts, and the adapted held-out session to beat its own model. On this seed the stitched
# model, its read-outs tied by muscle name (`readout_tie`), wins every training session by more than the
# margin (0.937, 0.904, 0.909, 0.912 vs 0.892, 0.869, 0.870, 0.831; the smallest +0.035) and adaptation
# beats the held-out session's own model (0.935 vs 0.913, with adaptation's moving average of its weights).
# The stricter claim that adaptation wins by the same margin does not hold here (+0.022; seeds 1 and 2:
# +0.095, +0.104): a strict expected failure, which fails if that starts to hold (then drop the mark). The
# held-out session's own model is a strong draw there (0.913; 0.870 and 0.908 with training seeds 1 and 2),
# and the other adaptation variants measured (README, stitching) stay within adaptation's training-seed
# noise. Scored as `annotate` writes the estimates (the mean of 20 posterior samples, not `n_samples=1`'s
# posterior means of the latents) every row agrees to 0.001 (`bench_multisession.py --samples 20`), so the
# tests keep 1.
STITCH_EPOCHS = 40
MARGIN = 0.03


@pytest.fixture(scope="module")
def stitching_rows(sims) -> list[tuple[int, float, float]]:
    """(session, per-session model's R^2, stitched model's R^2) on seed 0; session 4 held out and adapted."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = preset("demo")
        config.max_epochs = STITCH_EPOCHS
        binned = [preprocess(s.emg, s.emg_rate, PreprocessConfig()) for s in sims]
        data = [b.data for b in binned]
        truth = [true_activation_binned(s, b.bin_rate)[: b.data.shape[0]] for s, b in zip(sims, binned, strict=True)]
        stitched = fit_sessions(data[:4], [s.muscle_names for s in sims[:4]], config, None, device="cpu",
                                progress=False)
        assert stitched.model.config.fac_dim == len(stitched.model.union) + config.fac_dim
        index, _ = adapt(stitched.model, data[4], sims[4].muscle_names, device="cpu", progress=False)
        rows = []
        for k in range(5):
            trainer = Trainer(data[k], config, device="cpu", seed=0)
            while trainer.epoch < config.max_epochs and not trainer.should_stop:
                trainer.train_epoch()
            trainer.model.load_state_dict(trainer.best_model_state())
            own = float(r2_affine(infer(trainer.model, data[k], config, n_samples=1, device="cpu").rates,
                                  truth[k]).mean())
            view = stitched.model.session_view(k if k < 4 else index)
            shared = float(r2_affine(infer(view, data[k], config, n_samples=1, device="cpu").rates, truth[k]).mean())
            rows.append((k, own, shared))
    finally:
        torch.set_num_threads(threads)
    print("\nsession, per-session model, stitched (4: adapted):", [tuple(round(v, 3) for v in r) for r in rows])
    return rows


@pytest.mark.claim
def test_stitching_claim_stitched_wins_every_session_by_the_margin_and_adapt_beats_a_new_model(stitching_rows):
    """Four 20 s sessions trained together beat a model per session (same preset and epochs) in every
    session by MARGIN; the held-out fifth, adapted (the generator frozen), beats its own model."""
    rows = stitching_rows
    assert min(own for _, own, _ in rows) > 0.7, rows  # the per-session models are trained, not starved
    for _k, own, shared in rows[:4]:
        assert shared > own + MARGIN, rows
    _, own, adapted = rows[4]
    assert adapted > own, rows


@pytest.mark.claim
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="adaptation beats the held-out session's own model "
                   "by less than the stitched model's margin on this seed (0.935 vs 0.913; README, stitching)")
def test_stitching_claim_adapt_beats_a_new_model_by_the_margin_too(stitching_rows):
    """Stricter than issue 17: the adapted held-out session wins by the same margin as the training sessions."""
    _, own, adapted = stitching_rows[4]
    assert adapted > own + MARGIN, stitching_rows


# ---------------------------------------------------------------------------- the CLI
def test_cli_fit_annotate_adapt_on_local_files(files, tmp_path, capsys):
    before = {p: _sha(p) for p in files}
    run = tmp_path / "run"
    assert main(["fit", str(files[0]), str(files[1]), "--emg", "EMG", "--run-dir", str(run), "--max-epochs", "1",
                 "--quiet"]) == 0
    record = json.loads((run / "job.json").read_text())
    assert record["kind"] == "multisession" and len(record["sessions"]) == 2
    out = tmp_path / "s1.nwb"
    assert main(["annotate", str(files[1]), "--run-dir", str(run), "--out", str(out)]) == 0
    assert validate(path=str(out), use_cached_namespaces=True) == []
    with NWBHDF5IO(str(out), "r") as io:
        module = io.read().processing["ecephys"]
        assert METHODS <= set(module.data_interfaces)
        est = module["AutoLFADS"]
        table = est.electrodes.table
        assert [table["location"][i] for i in est.electrodes.data[:]] == record["sessions"][1]["muscles"]
        prov = module["LFADSModelProvenance"]
        config = json.loads(prov.config)["multisession"]
        assert [s["location"] for s in config["training_sessions"]] == [str(files[0]), str(files[1])]
        assert config["readin_readout"]["session_index"] == 1 and not config["readin_readout"]["adapted"]
        assert prov.source_series_path == "acquisition/EMG"
        assert est.data.shape[1] == len(record["sessions"][1]["muscles"])
    held = tmp_path / "s4.nwb"
    capsys.readouterr()
    assert main(["annotate", str(files[4]), "--run-dir", str(run), "--out", str(held)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--adapt" in err and str(files[4]) in err and not held.exists()
    assert main(["annotate", str(files[4]), "--run-dir", str(run), "--out", str(held), "--adapt",
                 "--max-epochs", "1"]) == 0
    assert validate(path=str(held), use_cached_namespaces=True) == []
    with NWBHDF5IO(str(held), "r") as io:
        prov = io.read().processing["ecephys"]["LFADSModelProvenance"]
        used = json.loads(prov.config)["multisession"]["readin_readout"]
        assert used["adapted"] and used["session_index"] == 2 and len(used["adapted_weights_sha256"]) == 64
        assert used["fitted_weights_moving_average"] == 0.9  # adapt's decay, recorded
        assert "adaptation_per_epoch" in json.loads(prov.training_metrics)
    assert {p: _sha(p) for p in files} == before


def test_cli_run_on_dandiset_assets_with_match(dandi_server, files, tmp_path):  # noqa: F811
    before = {p: _sha(p) for p in files}
    assets = {f"sub-rat/sub-rat_ses-{k}.nwb": files[k] for k in range(3)}
    assets["sub-other/sub-other_ses-0.nwb"] = files[3]
    server = dandi_server({"000999": assets})
    out = tmp_path / "derived"
    assert main(["run", "dandi://DANDI/000999@draft", "--match", "sub-rat/*ses-[01].nwb", "--emg", "EMG",
                 "--out", str(out), "--run-dir", str(tmp_path / "run"), "--max-epochs", "1", "--quiet"]) == 0
    assert server.bytes_served > 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["sub-rat_ses-0_annotated.nwb", "sub-rat_ses-1_annotated.nwb"]
    for k, name in enumerate(written):
        path = out / name
        assert validate(path=str(path), use_cached_namespaces=True) == []
        with NWBHDF5IO(str(path), "r") as io:
            prov = io.read().processing["ecephys"]["LFADSModelProvenance"]
            sessions = json.loads(prov.config)["multisession"]["training_sessions"]
            assert all("000999" in s["source_url"] for s in sessions) and len(sessions) == 2
            used = json.loads(prov.config)["multisession"]["readin_readout"]
            assert used["session_index"] == k and not used["adapted"]
            assert prov.source_url == sessions[k]["source_url"] and "000999" in prov.source_url
    assert {p: _sha(p) for p in files} == before
    assert main(["fit", "dandi://DANDI/000999@draft", "--match", "nothing*", "--run-dir", str(tmp_path / "r2")]) == 2


def test_simulated_sessions_share_dynamics_and_differ_in_recording(sims):
    names = [s.muscle_names for s in sims]
    assert all(6 <= len(n) <= 8 and len(n) == s.emg.shape[1] for n, s in zip(names, sims, strict=True))
    assert len({tuple(n) for n in names}) > 1 and all(s.duration_s == 20.0 for s in sims)
    # the same muscle bursts at the same phase of the shared cycle in every session that records it
    common = set(names[0]) & set(names[1])
    for m in common:
        phases = []
        for s in sims[:2]:
            a = s.activation[:, s.muscle_names.index(m)]
            ph = np.angle(s.latent[:, 0] + 1j * s.latent[:, 1])
            phases.append(np.angle(np.sum(a * np.exp(1j * ph))))
        assert abs(np.angle(np.exp(1j * (phases[0] - phases[1])))) < 0.3
