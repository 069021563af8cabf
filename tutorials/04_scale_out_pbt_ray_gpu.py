# %% [markdown]
# # Tutorial 4: scale out — AutoLFADS on a Ray cluster, and on a GPU
#
# A single LFADS model needs its hyper-parameters (learning rate, dropout, the weights of the KL
# and L2 penalties, ...) tuned to the data. **AutoLFADS** does that by population-based training
# (PBT): a population of models trains in parallel in generations of a fixed number of epochs;
# after each generation the worst quarter copies the weights of members of the best quarter and
# perturbs their hyper-parameters, so the search follows good settings while training. One member
# trains the preset itself and is never replaced, so the search cannot end worse than the preset.
# `nwb-lfads-emg` runs it on [Ray](https://docs.ray.io/): on your machine by default, on a cluster
# with `--ray-address`.
#
# **What you will see:** whether PyTorch sees a GPU; one model trained with `--device` set
# accordingly; then a PBT search (progress per generation, which member copied which, a summary
# table), its progress plot `pbt_progress.png` and the exported best model in `run_pbt/best/`.
#
# **How long it takes:** the full mode runs the PBT command exactly as below on a 60 s session,
# with a population of 8: roughly 15-60 minutes on an 8-core laptop CPU, a few minutes on a Ray
# cluster with GPUs (the search stops when the population stops improving). Fast mode
# (`NWB_LFADS_EMG_TUTORIAL_FAST=1`) needs neither a GPU nor a cluster: a 15 s session, 2 epochs
# for the single model and `fit --pbt` with a population of 2 for 2 one-epoch generations on a
# local Ray, about 1 minute (mostly starting Ray).

# %%
import json
import os
from pathlib import Path

import torch
from pynwb import NWBHDF5IO

from nwb_lfads_emg.cli import run_as_typed as run_cli
from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb

FAST = os.environ.get("NWB_LFADS_EMG_TUTORIAL_FAST", "0") not in ("", "0")
OUT = Path(os.environ.get("NWB_LFADS_EMG_TUTORIAL_OUT", "tutorial_output")) / "04_scale_out_pbt_ray_gpu"
OUT.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray without token authentication
DURATION_S = 15.0 if FAST else 60.0
TRAINING = ["--max-epochs", "2"] if FAST else []
POPULATION = 2 if FAST else 8
# The address of a running Ray cluster ("<head-ip>:6379"); unset: Ray starts on this machine.
RAY_ADDRESS = os.environ.get("TUTORIAL_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")


session = simulate_session(SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=DURATION_S, seed=0))
SOURCE = write_session_nwb(session, OUT / "session.nwb")

# %% [markdown]
# ## 1. On a GPU
#
# Check that PyTorch sees the GPU (in a terminal: `nvidia-smi`, then
# `python -c "import torch; print(torch.cuda.is_available())"`). On Linux the `torch` wheel from
# PyPI is the CUDA build; if it prints `False` on a machine with an NVIDIA GPU, install the build
# for your CUDA version from [pytorch.org](https://pytorch.org/get-started/locally/).
#
# `--device cuda` trains there (an error if there is none); the default, `--device auto`, takes the
# GPU when there is one, else the CPU. The device used is recorded in the provenance.

# %%
print("CUDA available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

SINGLE = OUT / "session_single.nwb"
run_cli("run", SOURCE, "--emg", "EMG", "--device", DEVICE, "--out", SINGLE, "--run-dir", OUT / "run_single",
        "--overwrite", "--quiet", *TRAINING)
with NWBHDF5IO(str(SINGLE), "r") as io:
    metrics = json.loads(io.read().processing["ecephys"]["LFADSModelProvenance"].training_metrics)
print("trained on:", metrics["device"], "| best validation loss:", round(metrics["best_val_loss"], 4))

# %% [markdown]
# ## 2. AutoLFADS (PBT) on this machine
#
# `--pbt --population N` trains N models, one CPU core each, as many at once as there are cores
# (Ray starts in the background and stops at the end; without `--population` the population is
# sized for the machine: 4-6 on a CPU, 20 on a GPU). The search stops when the population's best validation loss stops
# improving for 4 generations of 25 epochs, or after 20 generations. If it is interrupted, run the
# same command again with the same `--run-dir`: it resumes.
#
# The run directory then holds `pbt_history.json` (every member's hyper-parameters and losses,
# every exploit), `pbt_progress.png`, and the winner in `best/`; the annotated file's
# `LFADSModelProvenance.pbt_history` keeps the history with the estimates.

# %%
PBT_RUN = OUT / "run_pbt"
PBT_OUT = OUT / "session_autolfads.nwb"
pbt_command = ["run", SOURCE, "--emg", "EMG", "--pbt", "--population", POPULATION, "--out", PBT_OUT,
               "--run-dir", PBT_RUN, "--overwrite"]
if RAY_ADDRESS:
    pbt_command += ["--ray-address", RAY_ADDRESS]

if not FAST:
    run_cli(*pbt_command)
else:
    # Fast mode: only the training half (`fit`), a population of 2 for 2 one-epoch generations
    print("full mode runs:  $ nwb-lfads-emg " + " ".join(map(str, pbt_command)))
    fast = ["fit", SOURCE, "--emg", "EMG", "--pbt", "--population", POPULATION, "--preset", "demo",
            "--max-epochs", "2", "--pbt-interval", "1", "--run-dir", PBT_RUN]
    run_cli(*fast, *(["--ray-address", RAY_ADDRESS] if RAY_ADDRESS else []))

history = json.loads((PBT_RUN / "pbt_history.json").read_text())
print("stopped:", history.get("stop_reason"), "| ran on:", history.get("ray"))
print("progress plot:", PBT_RUN / "pbt_progress.png", "| best model:", PBT_RUN / "best")

# %% [markdown]
# ## 3. On a Ray cluster
#
# Start Ray on the machines (the same Python environment, with `nwb-lfads-emg` installed, on
# every node), then point the command at the head node. The members' states travel through Ray,
# so `--run-dir` only needs to be on the machine that runs the command.
#
# ```bash
# # on the head node
# ray start --head --port=6379
# # on every worker node (GPUs are found and offered to Ray automatically)
# ray start --address=<head-ip>:6379
# # from the head node, or any machine that can reach it
# nwb-lfads-emg run session.nwb --emg EMG --out session_annotated.nwb \
#     --pbt --population 16 --ray-address <head-ip>:6379 --run-dir /shared/runs/session
# # when done, on every node
# ray stop
# ```
#
# `ray status` shows the cluster's CPUs and GPUs. Setting `RAY_ADDRESS=<head-ip>:6379` instead of
# `--ray-address` works too (this notebook takes it from `TUTORIAL_RAY_ADDRESS` or `RAY_ADDRESS`).
# From Python, `nwb_lfads_emg.training.pbt.fit_pbt(..., ray_address=..., gpus_per_trial=0.5)` also
# sets how many members share one GPU, the number of generations and their length.
