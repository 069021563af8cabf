"""Issue 13's simulator claim, on one seed per task: on the motor-unit simulator's default settings (60 s
sessions), `run --pbt` with default options beats the self-tuned low-pass and the tuned Bayesian filter and
beats the oracle low-pass by at least 0.02 R^2 on average, and `run` (one model, default options) at least
ties the oracle. The same calls as `benchmarks/bench_accuracy.py --real none --sim motor_units:locomotion
motor_units:isometric --seeds 0` (which prints the whole table over seeds and carrier models).

Each cell trains the auto preset at full length (tens of minutes of CPU for one model, about four times
that for the population), so this is a `claim` test: skipped unless NWB_LFADS_EMG_CLAIMS=1. The claim
does not hold (README, motor-unit simulator), so the test is a strict expected failure: it fails if the
claim starts to hold (then drop the mark) or if anything but the claim's assertions fails.
"""

from __future__ import annotations

import pytest

from nwb_lfads_emg.evaluate import evaluate_file
from nwb_lfads_emg.pipeline import JobConfig, PBTSettings, run
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

TASKS = ("locomotion", "isometric")
PBT_OVER_ORACLE = 0.02  # the margin, on average over the tasks
TIE = 0.001  # "at least ties": no more than this below the oracle (the table's third decimal)
XFAIL = ("issue 13's simulator claim does not hold on seed 0: one default model trails the oracle low-pass on "
         "locomotion (0.929 vs 0.936) and ties it on isometric (0.978 vs 0.975); PBT (population 4, 250 epochs "
         "each) beats the low-pass and the Bayesian filter on both but the oracle by -0.002 (locomotion, 0.934 vs "
         "0.936) and +0.005 (isometric, 0.980 vs 0.975): +0.0015 on average, not 0.02 (README, motor-unit simulator)")


def _scores(tmp_path, task: str, pbt: bool) -> dict[str, float]:
    """R^2 vs the true activation per method (mean over muscles) after `run` (or `run --pbt`), defaults."""
    src = tmp_path / f"{task}.nwb"
    if not src.exists():
        write_session_nwb(simulate_session(SimulationConfig(emg_model="motor_units", task=task, seed=0,
                                                            duration_s=60.0)), src)
    tag = "pbt" if pbt else "single"
    out = tmp_path / f"{task}_{tag}.nwb"
    run(src, tmp_path / f"{task}_{tag}_run", out=out,
        job=JobConfig(seed=0, progress=False, pbt=pbt, pbt_settings=PBTSettings()))
    table = evaluate_file(out)
    return table[table.analysis == "vs_truth"].groupby("method").r2.mean().to_dict()


@pytest.mark.claim
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=XFAIL)
def test_pbt_beats_the_baselines_and_one_model_ties_the_oracle_on_the_motor_unit_simulator(tmp_path):
    rows = {(task, mode): _scores(tmp_path, task, mode == "pbt") for task in TASKS for mode in ("single", "pbt")}
    print("\n", {k: {m: round(v, 3) for m, v in s.items()} for k, s in rows.items()})
    for task in TASKS:
        pbt, single = rows[(task, "pbt")], rows[(task, "single")]
        assert pbt["AutoLFADS"] > pbt["LowPass"], (task, rows)
        assert pbt["AutoLFADS"] > pbt["BayesianFilter"], (task, rows)
        assert single["AutoLFADS"] >= single["LowPassOracle"] - TIE, (task, rows)
    margin = sum(rows[(t, "pbt")]["AutoLFADS"] - rows[(t, "pbt")]["LowPassOracle"] for t in TASKS) / len(TASKS)
    assert margin >= PBT_OVER_ORACLE, (margin, rows)
