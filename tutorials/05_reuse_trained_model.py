# %% [markdown]
# # Tutorial 5: reuse a trained model on a new session
#
# Training is the slow part. Once a model is trained on one session, `annotate` applies it to
# other sessions of the same animal and muscles in seconds: `fit` trains and keeps the model in a
# run directory; `annotate --run-dir` infers with it, adds the two baselines, and writes back. The
# new session is preprocessed with the *training* session's settings (bin width, filters), and it
# must record the same muscles, in the same order.
#
# **What you will see:** the training on session A (`fit`), the annotation of session B (another
# day: different seed of the simulator, same 8 muscles) with the model of A, the provenance of B's
# estimate naming the session the model was trained on, a table of how well each method recovers
# B's true activation, a figure `session_b_estimates.png`, and the one-line error you get when the
# muscles do not match.
#
# **How long it takes:** about 2-4 minutes on a laptop CPU (two 60 s sessions, `demo` preset; the
# annotation itself takes seconds). Fast mode (`NWB_LFADS_EMG_TUTORIAL_FAST=1`: 15 s sessions,
# 2 epochs) about 20 s; the under-trained model is then less accurate than the baselines.

# %%
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pynwb import NWBHDF5IO

from nwb_lfads_emg.cli import run_as_typed as run_cli
from nwb_lfads_emg.evaluate import r2_affine
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

FAST = os.environ.get("NWB_LFADS_EMG_TUTORIAL_FAST", "0") not in ("", "0")
OUT = Path(os.environ.get("NWB_LFADS_EMG_TUTORIAL_OUT", "tutorial_output")) / "05_reuse_trained_model"
OUT.mkdir(parents=True, exist_ok=True)
DURATION_S = 15.0 if FAST else 60.0
TRAINING = ["--max-epochs", "2"] if FAST else []
METHODS = ["AutoLFADS", "LowPass", "BayesianFilter"]


# %% [markdown]
# ## Two sessions of one animal
#
# Same task and muscles, different days (simulator seeds 0 and 1: other strides, noise and
# units).

# %%
sessions = {}
for label, seed in (("A", 0), ("B", 1)):
    sim = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=DURATION_S, task="locomotion", seed=seed))
    sessions[label] = (sim, write_session_nwb(sim, OUT / f"session_{label}.nwb"))
    print(label, sessions[label][1].name, sim.muscle_names)

# %% [markdown]
# ## 1. Train once, on session A
#
# `fit` does the first half of `run`: preprocess and train. The run directory keeps the weights
# (`model.pt`), the settings (`config.json`), the metrics and `job.json`, the record of what the
# model was trained on (muscles, bin rate, source file).

# %%
RUN_DIR = OUT / "run_A"
run_cli("fit", sessions["A"][1], "--emg", "EMG", "--run-dir", RUN_DIR, "--preset", "demo", *TRAINING)
record = json.loads((RUN_DIR / "job.json").read_text())
print("trained on:", record["source_location"], "| muscles:", record["muscles"], "| bins:",
      record["bin_rate"], "Hz")

# %% [markdown]
# ## 2. Annotate session B with the model of A
#
# No training here: inference with the posterior samples, the baselines, the write-back. The
# same works for a DANDI asset (`annotate DANDI:... --out ...`, see tutorial 2).

# %%
ANNOTATED_B = OUT / "session_B_annotated.nwb"
run_cli("annotate", sessions["B"][1], "--emg", "EMG", "--run-dir", RUN_DIR, "--out", ANNOTATED_B, "--overwrite")

# %% [markdown]
# ## 3. Check the result
#
# The AutoLFADS estimate records where its model comes from (`method_parameters.trained_on`; the
# provenance keeps the training settings and the hash of the weights). Because session B is
# simulated, its true activation is in the file, so we can score the estimates of a model that
# never saw this session.

# %%
with NWBHDF5IO(str(ANNOTATED_B), "r") as io:
    nwbfile = io.read()
    results = nwbfile.processing["ecephys"]
    print("trained on:", json.loads(results["AutoLFADS"].method_parameters)["trained_on"])
    print("weights sha256:", results["LFADSModelProvenance"].weights_sha256[:16], "...")
    rate, start = float(results["AutoLFADS"].rate), float(results["AutoLFADS"].starting_time)
    estimates = {m: np.asarray(results[m].data[:], dtype=float) for m in METHODS}
    uncertainty = np.asarray(results["AutoLFADS"].uncertainty[:], dtype=float)
    truth_series = nwbfile.processing["ground_truth"]["true_activation"]
    truth_rate = float(truth_series.rate)
    truth_raw = np.asarray(truth_series.data[:], dtype=float)
    muscles = list(results["AutoLFADS"].muscle_names[:])

# the truth at the estimates' 5 ms bins: mean over each bin
step = int(round(truth_rate / rate))
n = min(len(truth_raw) // step, len(estimates["AutoLFADS"]))
truth = truth_raw[: n * step].reshape(n, step, -1).mean(axis=1)
scores = pd.DataFrame({m: r2_affine(est[:n], truth) for m, est in estimates.items()}, index=muscles)
scores.loc["mean"] = scores.mean()
print("R² against the true activation of session B (after the best affine map):")
print(scores.round(3).to_string())

t = start + np.arange(n) / rate
sl = slice(int(0.4 * n), int(0.4 * n) + int(3.0 * rate))
fig, axes = plt.subplots(4, 1, figsize=(10, 7), sharex=True)
for ax, m in zip(axes, range(4), strict=True):
    ax.plot(t[sl], truth[sl, m], "k--", lw=1.2, label="truth")
    ax2 = ax.twinx()
    for method in METHODS:
        ax2.plot(t[sl], estimates[method][sl, m], lw=1.0, label=method)
    y, sd = estimates["AutoLFADS"][sl, m], uncertainty[:n][sl, m]
    ax2.fill_between(t[sl], y - sd, y + sd, color="C0", alpha=0.25, lw=0)
    ax.set_ylabel(f"{muscles[m]}\ntruth", fontsize=8)
    ax2.set_ylabel("estimate (a.u.)", fontsize=8)
handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
fig.legend(handles, [h.get_label() for h in handles], loc="upper right", ncol=4, fontsize=8)
axes[-1].set_xlabel("time (s)")
fig.tight_layout(rect=(0, 0, 1, 0.95))
fig.savefig(OUT / "session_b_estimates.png", dpi=110)
plt.close(fig)
print("figure:", OUT / "session_b_estimates.png")

# %% [markdown]
# ## 4. When the muscles do not match
#
# A model knows its muscles. A session with other channels (here 6 muscles instead of 8) is
# refused with a one-line error, and nothing is written. Train a model for that set of muscles, or
# pick the matching series with `--emg`.

# %%
other = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=6, duration_s=min(DURATION_S, 10.0), seed=2))
OTHER = write_session_nwb(other, OUT / "session_C_6_muscles.nwb")
code = run_cli("annotate", OTHER, "--run-dir", RUN_DIR, "--out", OUT / "session_C_annotated.nwb", expect=2)
print("exit code:", code)
assert not (OUT / "session_C_annotated.nwb").exists()

# %% [markdown]
# ## Tips
#
# - Train on your longest or most varied session; activation patterns the model never saw are
#   estimated less well. With several sessions of one animal, compare the R² of the baselines and
#   AutoLFADS on a held-out session as above (using behaviour if there is no truth:
#   `nwb-lfads-emg evaluate`, tutorial 3).
# - A model trained with AutoLFADS (`fit --pbt`, tutorial 4) is reused the same way: its
#   `--run-dir` holds the winner in `best/`.
