# %% [markdown]
# # Tutorial 3: compare methods — AutoLFADS vs low-pass vs Bayesian filter
#
# Which estimate of muscle activation carries the most information about the movement? This
# tutorial annotates a session with all three methods and scores them the same way:
#
# - **decoding of behaviour**: a lagged linear decoder (ridge regression on the last 100 ms of the
#   estimate, Wiener-filter style), cross-validated on contiguous blocks of time, predicts each joint
#   angle and its velocity; the score is the held-out R². `decode_quadratic` adds the squares of the
#   estimate (a static nonlinearity the decoder may use);
# - **accuracy against the truth** (`vs_truth`), possible here because the session is simulated
#   and its true activation is stored in the file: R² after the best affine map, per muscle;
# - **prediction from cortex** (`from_spikes`): how well the units' binned spikes predict each
#   estimate;
# - `rectified` is the binned rectified EMG itself, the floor every method should beat.
#
# **What you will see:** the summary table (mean R² per method and analysis), the report folder of
# `nwb-lfads-emg evaluate` (`report.html`, `traces.png`, `r2_bars.png`, `spectra.png`,
# `phase_response.png`, `smoothness.png`, the tables as CSV/JSON), and two figures made here:
# `decoding_r2.png` (held-out R² per behavioural output and method) and `decoded_angle.png` (a joint
# angle and its prediction from each method over a few seconds).
#
# **How long it takes:** about 3-5 minutes on a laptop CPU (a 60 s session, `demo` preset). Fast
# mode (`NWB_LFADS_EMG_TUTORIAL_FAST=1`: 15 s, 2 epochs) about 30 s. In fast mode AutoLFADS is
# barely trained, so its scores say nothing about the method: read them from a full run.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pynwb import NWBHDF5IO

from nwb_lfads_emg.cli import run_as_typed as run_cli
from nwb_lfads_emg.colors import method_color
from nwb_lfads_emg.evaluate import decode_r2
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb
from nwb_lfads_emg.sources import read_behavior

FAST = os.environ.get("NWB_LFADS_EMG_TUTORIAL_FAST", "0") not in ("", "0")
OUT = Path(os.environ.get("NWB_LFADS_EMG_TUTORIAL_OUT", "tutorial_output")) / "03_compare_methods"
OUT.mkdir(parents=True, exist_ok=True)
DURATION_S = 15.0 if FAST else 60.0
TRAINING = ["--max-epochs", "2"] if FAST else []
METHODS = ["AutoLFADS", "LowPass", "BayesianFilter"]


# %% [markdown]
# ## 1. A session with behaviour, annotated by all three methods
#
# A simulated walking rat: 8 hindlimb muscles, 30 cortical units and three joint angles
# (`processing/behavior/joint_angles`). `run` writes the AutoLFADS, low-pass (zero-phase, 4th order,
# its cutoff chosen from the EMG alone by held-out prediction; `--lowpass-hz` fixes it) and
# Bayesian-filter (its two parameters by maximum likelihood) estimates side by side, on the same bins
# (their width chosen from the recording; `--bin-ms` fixes it) and the same per-muscle scale. (`task="isometric"` simulates a monkey producing wrist forces
# instead.)

# %%
session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=DURATION_S, task="locomotion", seed=1))
SOURCE = write_session_nwb(session, OUT / "session.nwb")
ANNOTATED = OUT / "session_annotated.nwb"
run_cli("run", SOURCE, "--emg", "EMG", "--out", ANNOTATED, "--run-dir", OUT / "run", "--overwrite", *TRAINING)

# %% [markdown]
# ## 2. Evaluate
#
# `evaluate` finds every `MuscleActivation` in the file, the behaviour, the stored truth and the
# spikes, and scores each estimate. With `--report` it also writes the table and figures.
# `--cycles gait_cycles` (the simulator's gait cycles) adds the phase-resolved frequency response:
# which filter of the rectified EMG each method is at each phase of the stride; and since the file
# has spikes, the report also sets `from_spikes` beside low-pass envelopes of several cutoffs.

# %%
REPORT = OUT / "report"
run_cli("evaluate", ANNOTATED, "--cycles", "gait_cycles", "--report", REPORT, "--quiet")
print("report files:", sorted(p.name for p in REPORT.iterdir()))

# %% [markdown]
# The report's table is tidy, one row per method, analysis and target, so pandas summarises it any
# way you like. Here: the held-out R² of the linear decoder for each behavioural output.

# %%
table = pd.read_csv(REPORT / "evaluation.csv")
decoding = table[table["analysis"] == "decode_linear"].pivot(index="target", columns="method", values="r2")
decoding = decoding[[m for m in ["rectified", *METHODS] if m in decoding.columns]]
print(decoding.round(3).to_string())

ax = decoding.plot.bar(figsize=(9, 4), width=0.8, color=[method_color(m) for m in decoding.columns])
ax.set_ylabel("held-out R² (linear decoder)")
ax.set_xlabel("")
ax.set_ylim(min(0.0, float(np.nanmin(decoding.values))), 1.0)
ax.tick_params(axis="x", labelrotation=0)
ax.legend(fontsize=8, ncol=4, loc="lower right")
ax.set_title("Decoding behaviour from each activation estimate")
ax.figure.tight_layout()
ax.figure.savefig(OUT / "decoding_r2.png", dpi=110)
plt.close(ax.figure)

# %% [markdown]
# ## 3. See the decoded movement
#
# The same decoder from Python (`nwb_lfads_emg.evaluate.decode_r2`, which also returns the held-out
# prediction): the estimates come from the annotated file with plain pynwb, the joint angles are
# interpolated onto the estimates' bins with `read_behavior`.

# %%
with NWBHDF5IO(str(ANNOTATED), "r") as io:
    nwbfile = io.read()
    results = nwbfile.processing["ecephys"]
    estimates = {m: np.asarray(results[m].data[:], dtype=float) for m in METHODS}
    rate, start = float(results["AutoLFADS"].rate), float(results["AutoLFADS"].starting_time)
    times = start + (np.arange(len(estimates["AutoLFADS"])) + 0.5) / rate  # bin centres
    angles = read_behavior(nwbfile, "joint_angles", times=times)

# the first joint angle, named as in the evaluation table (outputs first, then their velocities)
outputs = list(dict.fromkeys(table.loc[table["analysis"] == "decode_linear", "target"]))
output = outputs[0] if len(outputs) == 2 * angles.shape[1] else str(angles.coords[angles.dims[1]].values[0])
target = angles.values[:, 0]
ok = np.isfinite(target)
predictions = {}
for method, est in estimates.items():
    r2, pred = decode_r2(est[ok], target[ok], rate, return_prediction=True)
    predictions[method] = (float(np.ravel(r2)[0]), np.ravel(pred))
    print(f"{method:15s} R² = {predictions[method][0]:.3f}")

# decode_r2 drops the first 100 ms (the decoder's lag window): align the predictions to their end
t = times[ok]
n_pred = len(next(iter(predictions.values()))[1])
window = slice(n_pred - int(min(4.0, 0.5 * DURATION_S) * rate), n_pred)
fig, ax = plt.subplots(figsize=(10, 3.5))
ax.plot(t[-n_pred:][window], target[ok][-n_pred:][window], "k", lw=2, label=f"{output} (true)")
for method, (r2, pred) in predictions.items():
    ax.plot(t[-n_pred:][window], pred[window], lw=1.2, color=method_color(method), label=f"{method} (R² {r2:.2f})")
ax.set_xlabel("time (s)")
ax.set_ylabel(f"{output} ({angles.attrs.get('unit', 'rad')})")
ax.legend(fontsize=8, ncol=2)
fig.tight_layout()
fig.savefig(OUT / "decoded_angle.png", dpi=110)
plt.close(fig)
print("figures:", OUT / "decoding_r2.png", OUT / "decoded_angle.png", REPORT / "report.html")

# %% [markdown]
# ## Reading the comparison
#
# - All methods start from the same rectified EMG; they differ in how they smooth it. The low-pass
#   filter trades noise for temporal blur at a fixed cutoff, the Bayesian filter adapts to jumps,
#   AutoLFADS learns the shared dynamics of all muscles from the data.
# - Judge on a full run (unset `NWB_LFADS_EMG_TUTORIAL_FAST`), and on your own sessions: the
#   ranking depends on the recording (noise, cross-talk, how fast activation changes).
# - `spectra.png` in the report shows what each method keeps at high frequencies; `traces.png` the
#   estimates against the truth.
