# %% [markdown]
# # Tutorial 6: one model across many sessions (stitching), then a new session
#
# Single sessions are often short, too little to learn the dynamics behind the EMG alone, and each
# day may have a different set of working channels. A *stitched* model shares one LFADS (encoders,
# controller, generator) across sessions and gives each session its own read-in (its channels ->
# a common input space) and read-out (shared factors -> its muscles). `fit` takes several sources
# (paths, DANDI assets, or a whole dandiset or folder with `--match GLOB`); `annotate` writes each
# session's estimates with its own read-in/read-out; `annotate --adapt` fits, for a session the model
# never saw, its read-in, read-out and its own copy of the encoders and controller, with the shared
# dynamics (the generator and its factor map) frozen.
#
# **What you will see:** five simulated 20 s sessions of one rat (one locomotor pattern generator;
# each session records its own 6-8 of 10 muscles, with its own electrode gains and cross-talk), a
# stitched model fitted on four of them selected with `--match`, the annotation of a training
# session, the held-out fifth refused without `--adapt` and annotated with it, the provenance
# (training sessions, which read-in/read-out was used), and a table of R² against the truth.
#
# **How long it takes:** about 15-20 minutes on a laptop CPU (`demo` preset, 70 epochs over four
# sessions, each epoch one pass over all of them; the adaptation leaves the generator frozen). Fast mode
# (`NWB_LFADS_EMG_TUTORIAL_FAST=1`: 10 s sessions, 1 epoch) about 1 minute; the estimates of such
# short training are rough (see `benchmarks/bench_multisession.py` for the measured comparison).

# %%
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from pynwb import NWBHDF5IO

from nwb_lfads_emg.cli import run_as_typed as run_cli
from nwb_lfads_emg.evaluate import r2_affine
from nwb_lfads_emg.simulate import write_session_nwb
from nwb_lfads_emg.simulate_sessions import SessionSetConfig, simulate_sessions

FAST = os.environ.get("NWB_LFADS_EMG_TUTORIAL_FAST", "0") not in ("", "0")
OUT = Path(os.environ.get("NWB_LFADS_EMG_TUTORIAL_OUT", "tutorial_output")) / "06_multisession"
OUT.mkdir(parents=True, exist_ok=True)
DURATION_S = 10.0 if FAST else 20.0
TRAINING = ["--max-epochs", "1"] if FAST else []
# a dandiset holding the sessions (e.g. dandi://DANDI/000999@draft); default: a local folder
DANDISET = os.environ.get("TUTORIAL_DANDISET")


# %% [markdown]
# ## Five sessions of one animal
#
# The simulator's session set: the same pattern generator drives every session, but each records
# a different subset of muscles. Four sessions go in `sub-rat1/`, the fifth (held out) elsewhere.

# %%
sims = simulate_sessions(SessionSetConfig(n_sessions=5, duration_s=DURATION_S, seed=0))
DATA = OUT / "dandiset"
paths = []
for k, sim in enumerate(sims):
    folder = DATA / ("sub-rat1" if k < 4 else "sub-rat1-heldout")
    paths.append(write_session_nwb(sim, folder / f"{folder.name}_ses-{k}.nwb"))
    print(paths[-1].relative_to(DATA), sim.muscle_names)

# %% [markdown]
# ## 1. Fit one model on the four training sessions
#
# `--match` selects the assets of a dandiset (or the files of a folder) by their path. On the
# DANDI Archive each asset is streamed, never downloaded whole.

# %%
SOURCE = DANDISET or DATA
RUN_DIR = OUT / "run"
run_cli("fit", SOURCE, "--match", "sub-rat1/*.nwb", "--emg", "EMG", "--run-dir", RUN_DIR, "--preset", "demo",
        "--quiet", *TRAINING)
record = json.loads((RUN_DIR / "job.json").read_text())
for s in record["sessions"]:
    print(s["index"], Path(s["location"]).name if not s["source_url"] else s["source_url"], s["muscles"])
print("muscles across sessions:", record["muscles"])

# %% [markdown]
# ## 2. Annotate a training session, and the held-out one
#
# A training session is annotated with its own read-in/read-out. A session the model never saw is
# refused (one line) unless `--adapt` is given: then its read-in/read-out are fitted first, with the
# shared generator frozen: the read-in starts from the training sessions' for muscles of the same name,
# the read-out is regressed onto the frozen model's factors, the read-in is regressed onto the shared
# input space (where the training sessions put the same moments, their missing muscles predicted by the
# model), the read-out again, then the read-in, read-out and the session's own copy of the encoders and
# controller train (they infer the initial conditions and inputs that drive the frozen generator).

# %%
TRAINED_OUT, HELD_OUT = OUT / "ses-0_annotated.nwb", OUT / "ses-4_annotated.nwb"
run_cli("annotate", paths[0], "--run-dir", RUN_DIR, "--out", TRAINED_OUT, "--overwrite")
run_cli("annotate", paths[4], "--run-dir", RUN_DIR, "--out", HELD_OUT, "--overwrite", expect=2)
run_cli("annotate", paths[4], "--run-dir", RUN_DIR, "--out", HELD_OUT, "--overwrite", "--adapt", *TRAINING)

# %% [markdown]
# ## 3. Provenance and accuracy
#
# The provenance record of each file lists every training session (file identifier, series path,
# DANDI URL) and the read-in/read-out its estimates used. The sessions are simulated, so their
# true activation is in the files and we can score each estimate.

# %%
rows = {}
for label, path in (("ses-0 (trained)", TRAINED_OUT), ("ses-4 (adapted)", HELD_OUT)):
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        results = nwbfile.processing["ecephys"]
        multi = json.loads(results["LFADSModelProvenance"].config)["multisession"]
        used = multi["readin_readout"]
        print(label, "| read-in/out of session", used["session_index"], "| adapted:", used["adapted"],
              "| trained on", len(multi["training_sessions"]), "sessions")
        rate = float(results["AutoLFADS"].rate)
        truth_series = nwbfile.processing["ground_truth"]["true_activation"]
        step = int(round(float(truth_series.rate) / rate))
        truth_raw = np.asarray(truth_series.data[:], dtype=float)
        n = min(len(truth_raw) // step, results["AutoLFADS"].data.shape[0])
        truth = truth_raw[: n * step].reshape(n, step, -1).mean(axis=1)
        rows[label] = {m: float(r2_affine(np.asarray(results[m].data[:n], dtype=float), truth).mean())
                       for m in ("AutoLFADS", "LowPass", "BayesianFilter")}
table = pd.DataFrame(rows).T
print("mean R² against the true activation:")
print(table.round(3).to_string())
table.to_csv(OUT / "r2_vs_truth.csv")

# %% [markdown]
# ## Tips
#
# - `run SOURCE [SOURCE ...] --out FOLDER` fits and annotates every session in one command.
# - Muscles are tied across sessions by name: name the same muscle the same way in every file
#   (the electrode `location`, or the per-muscle series name).
# - Measured on the simulator (`benchmarks/bench_multisession.py`, README "stitching"): with every
#   model trained 40 epochs, the stitched model beat a model per session in all 12 sessions of 3
#   seeds (by 0.012 to 0.187) and the adapted held-out session beat a model trained on it alone on
#   all 3 seeds (by 0.023 to 0.096); a stitched epoch costs as much CPU as the sessions' own epochs together.
