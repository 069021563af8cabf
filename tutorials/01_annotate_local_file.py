# %% [markdown]
# # Tutorial 1: annotate a local NWB file
#
# You have multi-muscle EMG in an NWB file. In this tutorial you will
#
# 1. **inspect** the file to see which series `nwb-lfads-emg` takes for EMG,
# 2. **run** the whole job: preprocess the EMG, train an AutoLFADS model, compute the low-pass and
#    Bayesian-filter estimates beside it, and write all three back into a copy of the file,
# 3. **open the result with plain pynwb** (no `nwb-lfads-emg` code needed to read it) and
# 4. **plot** the estimates next to the raw EMG.
#
# **What you will see:** the inventory of the file (EMG series, units, behaviour), a progress bar
# while the model trains, the list of objects added under `processing/ecephys` (three
# `MuscleActivation`, one `LatentFactors`, one `LFADSModelProvenance`) and a figure,
# `emg_and_estimates.png`, with four muscles: raw EMG in grey, the AutoLFADS estimate with its
# posterior spread, the low-pass envelope and the Bayesian-filter estimate.
#
# **How long it takes:** about 2-4 minutes on a laptop CPU (a 60 s session, the `demo` model
# preset). In fast mode (`NWB_LFADS_EMG_TUTORIAL_FAST=1`: a 15 s session, 2 training epochs) about
# 15 s; the estimates of an under-trained model are then rough.
#
# Here the "recording" comes from the package's simulator, so that the tutorial runs anywhere. To
# use your own file, set `SOURCE` below to its path and `EMG` to the series name `inspect` shows.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write figures to files; in Jupyter, `%matplotlib inline` shows them too
import matplotlib.pyplot as plt
import numpy as np
from pynwb import NWBHDF5IO

from nwb_lfads_emg.cli import run_as_typed as run_cli
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

FAST = os.environ.get("NWB_LFADS_EMG_TUTORIAL_FAST", "0") not in ("", "0")
OUT = Path(os.environ.get("NWB_LFADS_EMG_TUTORIAL_OUT", "tutorial_output")) / "01_annotate_local_file"
OUT.mkdir(parents=True, exist_ok=True)
DURATION_S = 15.0 if FAST else 60.0
TRAINING = ["--max-epochs", "2"] if FAST else []  # the demo preset trains up to 40 epochs


# %% [markdown]
# ## A session to work on
#
# The simulator writes an NWB file like a Myomatrix/Intan recording: 8 muscles of a walking rat as
# one `ElectricalSeries` (`acquisition/EMG`, 2 kHz, one bipolar channel per muscle, the muscle in the
# electrodes table's `location` column), 30 cortical units and joint angles.

# %%
session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=DURATION_S, task="locomotion", seed=0))
SOURCE = write_session_nwb(session, OUT / "session.nwb")
EMG = "EMG"
print(f"wrote {SOURCE}: {DURATION_S:.0f} s, muscles {', '.join(session.muscle_names)}")

# %% [markdown]
# ## 1. Inspect
#
# `inspect` lists every series that could be EMG (and why it thinks so), the Units table and the
# behavioural series. When a file holds more than one EMG candidate, pass the one you want with
# `--emg`.

# %%
run_cli("inspect", SOURCE)

# %% [markdown]
# ## 2. Run the job
#
# `run` preprocesses the EMG (high-pass, rectify, 5 ms bins, normalise per muscle), trains the
# model, infers the activation with its posterior spread, computes the two baselines and writes
# everything into `--out` (the source file is not modified; `--in-place` would annotate it
# instead). The checkpoints and the trained model go into `--run-dir`; tutorial 5 reuses them.

# %%
ANNOTATED = OUT / "session_annotated.nwb"
RUN_DIR = OUT / "run"
run_cli("run", SOURCE, "--emg", EMG, "--out", ANNOTATED, "--run-dir", RUN_DIR, "--preset", "demo",
        "--overwrite", *TRAINING)

# %% [markdown]
# ## 3. Open the result with plain pynwb
#
# The file carries the `ndx-lfads-emg` schema, so a colleague can open it with `pynwb` alone. The
# results sit in the processing module `ecephys`: one `MuscleActivation` per method (`data` is
# time x muscles, `muscle_names` names the columns, `source_series` links to the raw EMG), the
# model's `LatentFactors` and the `LFADSModelProvenance` record (settings, preprocessing, training
# metrics, software versions, random seed, hash of the weights).

# %%
io = NWBHDF5IO(str(ANNOTATED), "r")
nwbfile = io.read()
results = nwbfile.processing["ecephys"]
for name, obj in results.data_interfaces.items():
    shape = getattr(getattr(obj, "data", None), "shape", "")
    print(f"{name:22s} {type(obj).__name__:22s} {shape}")

autolfads = results["AutoLFADS"]
print("method:", autolfads.method, "| rate:", autolfads.rate, "Hz | muscles:", list(autolfads.muscle_names[:]))
print("source series:", autolfads.source_series.name)
print("provenance seed:", results["LFADSModelProvenance"].random_seed)

# %% [markdown]
# ## 4. Plot the estimates next to the EMG
#
# Three seconds of four muscles. The raw EMG is in millivolts (left axis); the estimates are in the
# normalised units of the preprocessing (right axis). The shaded band is the AutoLFADS posterior
# mean +- one standard deviation over posterior samples (`uncertainty`).

# %%
emg_series = autolfads.source_series
emg_rate = float(emg_series.rate)
t0, t1 = 0.4 * DURATION_S, 0.4 * DURATION_S + 3.0
i0, i1 = int(t0 * emg_rate), int(t1 * emg_rate)
raw = emg_series.data[i0:i1, :] * emg_series.conversion * 1e3  # mV; reads only this window from disk
t_raw = float(emg_series.starting_time or 0.0) + np.arange(i0, i1) / emg_rate

muscles = list(autolfads.muscle_names[:])
methods = {"AutoLFADS": "C0", "LowPass": "C1", "BayesianFilter": "C2"}
fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
for ax, m in zip(axes, range(4), strict=True):
    ax.plot(t_raw, raw[:, m], color="0.75", lw=0.4)
    ax.set_ylabel(f"{muscles[m]}\nEMG (mV)", fontsize=8)
    ax2 = ax.twinx()
    for method, color in methods.items():
        est = results[method]
        rate, start = float(est.rate), float(est.starting_time)
        j0, j1 = int((t0 - start) * rate), int((t1 - start) * rate)
        t = start + np.arange(j0, j1) / rate
        y = est.data[j0:j1, m]
        ax2.plot(t, y, color=color, lw=1.2, label=method)
        if method == "AutoLFADS" and est.uncertainty is not None:
            sd = est.uncertainty[j0:j1, m]
            ax2.fill_between(t, y - sd, y + sd, color=color, alpha=0.25, lw=0)
    ax2.set_ylabel("activation (a.u.)", fontsize=8)
axes[0].figure.legend(*ax2.get_legend_handles_labels(), loc="upper right", ncol=3, fontsize=8)
axes[-1].set_xlabel("time (s)")
fig.tight_layout(rect=(0, 0, 1, 0.96))
FIGURE = OUT / "emg_and_estimates.png"
fig.savefig(FIGURE, dpi=110)
plt.close(fig)
io.close()
print(f"figure: {FIGURE}")

# %% [markdown]
# ## What next
#
# - `nwb-lfads-emg evaluate session_annotated.nwb --report report/` scores every estimate
#   (tutorial 3).
# - Tutorial 2 does the same for a session on the DANDI Archive, without downloading it.
# - For your own data, leave out `--preset demo`: `run`'s default (`--preset auto`) sizes the model,
#   its bins, segments and training length from the recording; consider AutoLFADS population-based
#   training too (`--pbt`, tutorial 4).
