"""AutoLFADS search space, explore rule and population stopper (no Ray cluster needed)."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from nwb_lfads_emg.errors import TrainingError
from nwb_lfads_emg.lfads.config import MUTABLE_HYPERPARAMETERS, LFADSConfig, preset
from nwb_lfads_emg.training.search_space import (
    AUTOLFADS_SPACE,
    Explorer,
    HyperParam,
    autolfads_search_space,
    clip_to_space,
    sample_population,
    validate_space,
)


def test_default_space_is_autolfads():
    space = autolfads_search_space()
    assert set(space) == set(MUTABLE_HYPERPARAMETERS)
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (1e-5, 5e-3, True)
    assert (space["kl_ic_scale"].low, space["kl_ic_scale"].high, space["kl_ic_scale"].width) == (1e-6, 1e-3, 0.8)
    assert (space["cd_rate"].low, space["cd_rate"].high, space["cd_rate"].log) == (0.01, 0.7, False)
    assert space["temporal_shift_ms"].low > 0  # the augmentation stays on
    # every name is a real LFADSConfig field that the trainer may change mid-run
    fields = LFADSConfig().to_dict()
    assert all(p.name in fields for p in AUTOLFADS_SPACE)
    validate_space(space, preset("default"))


def test_overrides_replace_and_drop():
    space = autolfads_search_space({"lr": (1e-3, 1e-2), "temporal_shift_ms": None})
    assert "temporal_shift_ms" not in space
    assert (space["lr"].low, space["lr"].high, space["lr"].log, space["lr"].width) == (1e-3, 1e-2, True, 0.3)
    with pytest.raises(ValueError, match="can change during training"):
        HyperParam("gen_dim", 1, 10)
    with pytest.raises(ValueError, match="log-scaled"):
        HyperParam("lr", 0.0, 1.0, log=True)
    with pytest.raises(ValueError, match="below 0.95"):
        validate_space(autolfads_search_space({"cd_rate": (0.1, 0.9)}), preset("default"))


def test_samples_within_bounds_and_log_uniform():
    space = autolfads_search_space()
    pts = sample_population(space, 400, seed=3)
    for pt in pts:
        for name, p in space.items():
            assert p.low <= pt[name] <= p.high
            if p.integer:
                assert isinstance(pt[name], int)
    # log sampling: about half the learning rates lie below the geometric mean of the bounds
    gm = math.sqrt(1e-5 * 5e-3)
    frac = sum(pt["lr"] < gm for pt in pts) / len(pts)
    assert 0.4 < frac < 0.6
    assert sample_population(space, 5, seed=1) == sample_population(space, 5, seed=1)
    first = sample_population(space, 3, seed=0, first={**preset("demo").to_dict()})
    assert first[0]["lr"] == 5e-3  # the demo's 1e-2 is clipped into the AutoLFADS bounds
    assert first[0]["dropout"] == pytest.approx(0.05)


@pytest.mark.parametrize("p", AUTOLFADS_SPACE, ids=lambda p: p.name)
def test_perturbation_stays_in_bounds_and_moves(p: HyperParam):
    rng = random.Random(0)
    for start in (p.low, p.high, p.sample(rng)):
        start = p.clip(start)
        for _ in range(200):
            new = p.perturb(start, rng)
            assert p.low <= new <= p.high
            if not p.integer and start > 0:
                ratio = new / start
                # a factor 1 +- u with u at most the width (log params: times or divided by 1 + u)
                lo = 1 / (1 + p.width) if p.log else 1 - p.width
                assert lo - 1e-12 <= ratio <= 1 + p.width + 1e-12
                assert ratio != 1.0


def test_log_perturbation_is_symmetric_in_log_space():
    p = HyperParam("kl_co_scale", 1e-12, 1.0, log=True, width=0.8)
    rng = random.Random(1)
    logs = [math.log(p.perturb(1e-6, rng) / 1e-6) for _ in range(4000)]
    assert abs(sum(logs) / len(logs)) < 0.02
    lin = HyperParam("dropout", 0.0, 1.0, width=0.3)
    ups = [lin.perturb(0.5, rng) > 0.5 for _ in range(2000)]
    assert 0.45 < sum(ups) / len(ups) < 0.55


def test_integer_parameter_always_moves():
    p = HyperParam("temporal_shift_ms", 0, 6, width=0.3, integer=True)
    rng = random.Random(2)
    seen = {p.perturb(1, rng) for _ in range(200)}
    assert seen <= {0, 2} and seen == {0, 2}
    assert {p.perturb(0, rng) for _ in range(50)} == {1}


def test_explorer_perturbs_only_searched_keys_and_pickles():
    space = autolfads_search_space({"temporal_shift_ms": None})
    explore = Explorer(space, seed=4)
    cfg = {**clip_to_space(preset("default").to_dict(), space), "other": 7}
    new = explore(cfg)
    assert new["other"] == 7
    assert all(new[k] != cfg[k] for k in space)
    assert all(space[k].low <= new[k] <= space[k].high for k in space)
    clone = pickle.loads(pickle.dumps(explore))
    assert clone(cfg) == explore(cfg)  # same RNG state after the round trip


def test_plateau_stopper():
    from nwb_lfads_emg.training.pbt import PopulationPlateauStopper

    s = PopulationPlateauStopper(interval=2, max_iterations=100, patience=2, min_improvement=0.01)
    values = {1: 1.0, 2: 0.9, 3: 0.8, 4: 0.79, 5: 0.795, 6: 0.792, 7: 0.7905, 8: 0.7901}
    stopped_at = None
    for it, v in values.items():
        assert s("t1", {"training_iteration": it, "val_loss_smoothed": v}) is False
        if s.stop_all():
            stopped_at = it
            break
    # best improved by >= 0.01 last at iteration 3 (generation 1); two generations later (iteration 6) it stops
    assert stopped_at == 6
    assert "improved by less than" in s.reason
    s2 = PopulationPlateauStopper(interval=2, max_iterations=4)
    assert s2("t", {"training_iteration": 4, "val_loss_smoothed": 1.0}) is True


def test_fit_pbt_rejects_bad_arguments(tmp_path):
    import numpy as np

    from nwb_lfads_emg.training.pbt import fit_pbt

    data = np.ones((200, 3), np.float32)
    with pytest.raises(TrainingError, match="at least 2"):
        fit_pbt(data, preset("demo"), tmp_path, population=1)
    with pytest.raises(TrainingError, match="cannot reach the Ray head node"):
        fit_pbt(data, preset("demo"), tmp_path, population=2, ray_address="127.0.0.1:9")
    with pytest.raises(TrainingError, match="host:port"):
        fit_pbt(data, preset("demo"), tmp_path, population=2, ray_address="not-an-address")
    with pytest.raises(TrainingError, match="search space"):
        fit_pbt(data, preset("demo"), tmp_path, population=2,
                search_space=autolfads_search_space({"cd_rate": (0.1, 0.93)}))


def test_pbt_settings_from_flags_and_config_file(tmp_path, capsys):
    """Every PBT setting reaches the job from a flag or a JSON file (flags win) and survives the record."""
    import json

    from nwb_lfads_emg.cli import _job, build_parser, main
    from nwb_lfads_emg.pipeline import JobConfig, PBTSettings, _job_dict

    cfg = tmp_path / "pbt.json"
    cfg.write_text(json.dumps({"population": 6, "min_improvement": 1e-3, "search_space": {"lr": [1e-4, 1e-3]}}))
    args = build_parser().parse_args([
        "fit", "x.nwb", "--run-dir", "r", "--pbt", "--pbt-config", str(cfg), "--population", "3",
        "--pbt-interval", "5", "--pbt-burn-in", "10", "--cpus-per-trial", "2", "--pbt-patience", "7",
        "--pbt-quantile", "0.5", "--pbt-storage", "s3://b/x", "--pbt-shared-data", "/shared",
        "--pbt-restart", "--pbt-random-start", "--gpus-per-trial", "0.5", "--ray-address", "h:1"])
    job = _job(args)
    assert job.pbt_settings == PBTSettings(
        population=3, ray_address="h:1", gpus_per_trial=0.5, cpus_per_trial=2.0, interval=5, burn_in=10,
        patience_generations=7, min_improvement=1e-3, quantile_fraction=0.5, storage_path="s3://b/x",
        shared_data_path="/shared", resume=False, start_from_config=False, search_space={"lr": [1e-4, 1e-3]})
    assert JobConfig.from_dict(_job_dict(job)) == job  # recorded whole in job.json and the provenance
    cfg.write_text(json.dumps({"populaton": 6}))
    assert main(["fit", "x.nwb", "--run-dir", str(tmp_path / "r"), "--pbt", "--pbt-config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "populaton" in err and "--pbt-config" in err and str(cfg) in err


def test_truncation_selection_and_population_size():
    import random

    from nwb_lfads_emg.training.pbt import default_population, truncation_selection

    values = {0: 0.5, 1: 0.9, 2: 0.1, 3: float("inf"), 4: 0.3, 5: 0.7, 6: 0.2, 7: 0.8}
    rng = random.Random(0)
    pairs = truncation_selection(values, 0.25, protected=[], rng=rng)
    assert sorted(t for t, _ in pairs) == [1, 3]  # the worst quarter (a diverged member ranks last) ...
    assert all(s in (2, 6) for _, s in pairs)  # ... copies members of the best quarter
    assert sorted(t for t, _ in truncation_selection(values, 0.25, protected=[3], rng=rng)) == [1]
    assert len(truncation_selection({0: 1.0, 1: 2.0}, 0.5, [], rng)) == 1  # at least one, at most half
    assert truncation_selection({0: 2.0, 1: 1.0}, 0.25, [0], rng) == []  # the protected member is never replaced
    assert default_population("cpu", 2)[0] == 4 and default_population("cpu", 64)[0] == 6
    n, rule = default_population("cuda", 16, 1)
    assert n == 20 and "CUDA" in rule and default_population("cuda", 16, 4)[0] == 40


def test_job_checks_accept_the_default_population_and_refuse_one_member():
    from nwb_lfads_emg.pipeline import JobConfig, PBTSettings, check_job, lfads_config, pbt_arguments

    job = JobConfig(pbt=True, preset="demo")
    check_job(job)  # population None: sized for the compute when the search starts
    args = pbt_arguments(job, lfads_config(job))
    assert args["population"] is None and args["start_from_config"] and args["quantile_fraction"] == 0.25
    with pytest.raises(TrainingError, match="--population 1"):
        check_job(JobConfig(pbt=True, pbt_settings=PBTSettings(population=1)))


def test_space_widened_to_include_the_preset_but_keeps_the_shift_on():
    from nwb_lfads_emg.training.search_space import widen_to_include

    space = autolfads_search_space()
    demo = preset("demo")  # lr 1e-2 above lfads-torch's 5e-3; temporal shift off (0)
    wide, names = widen_to_include(space, {k: getattr(demo, k) for k in space})
    assert names == ["lr"] and wide["lr"].high == demo.lr and wide["lr"].low == space["lr"].low
    assert wide["temporal_shift_ms"] == space["temporal_shift_ms"] and demo.temporal_shift_ms == 0
