# %% [markdown]
# # Tutorial 2: stream a DANDI asset and save a shareable NWB file
#
# Public EMG sessions live on the [DANDI Archive](https://dandiarchive.org). `nwb-lfads-emg` reads
# them **in place over HTTP**, fetching only the byte ranges it needs (nothing is downloaded as a
# whole), estimates muscle activation and writes a **new, small NWB file** holding the session's
# metadata, spikes and behaviour plus the estimates and their provenance (which records the asset's
# DANDI URL). You can share that file, or upload it to a dandiset of derived data.
#
# The default asset is one session of the FALCON M1 benchmark, dandiset
# [000941](https://dandiarchive.org/dandiset/000941): a monkey reaching and grasping, 16-muscle EMG
# of the arm and hand (`acquisition/preprocessed_emg`, one `TimeSeries` per muscle) and motor-cortex
# units. Pick another session on the dandiset's web page (*Files*) or with
# `dandi ls -r DANDI:000941`, and set the environment variable `TUTORIAL_DANDI_ASSET` to
# `DANDI:<dandiset>/<path of the asset>` (or a `dandi://` / `https://dandiarchive.org/...` URL).
# `DANDI_INSTANCE` selects another archive than the main one (dandi's own setting).
#
# **What you will see:** the inventory of the remote file, a 3-second window of EMG streamed from
# the archive, training progress, the objects of the new file and where it came from, and a figure
# `streamed_estimates.png` (streamed EMG over the three estimates for four muscles).
#
# **How long it takes:** with the real FALCON session, roughly 10-20 minutes on a laptop CPU,
# depending on the session's length and your connection (streaming takes a minute or two; the rest
# is training on the whole session with the `demo` preset). Fast mode
# (`NWB_LFADS_EMG_TUTORIAL_FAST=1`, 2 training epochs) a few minutes on the real asset; about 20 s
# in the test suite, which serves a 15 s simulated session from a local stand-in for the archive.

# %%
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pynwb import NWBHDF5IO

from nwb_lfads_emg.cli import run_as_typed as run_cli
from nwb_lfads_emg.sources import EMGReader, open_source

FAST = os.environ.get("NWB_LFADS_EMG_TUTORIAL_FAST", "0") not in ("", "0")
OUT = Path(os.environ.get("NWB_LFADS_EMG_TUTORIAL_OUT", "tutorial_output")) / "02_stream_dandi_asset"
OUT.mkdir(parents=True, exist_ok=True)
ASSET = os.environ.get(
    "TUTORIAL_DANDI_ASSET",
    "DANDI:000941/sub-MonkeyL-held-in-calib/sub-MonkeyL-held-in-calib_ses-20120924_behavior+ecephys.nwb",
)
EMG = os.environ.get("TUTORIAL_DANDI_EMG", "preprocessed_emg")
# Streamed bytes are cached on disk, so a second pass (training, then annotating) reads the
# network once. Default: ~/.cache/nwb-lfads-emg, or $NWB_LFADS_EMG_CACHE_DIR.
CACHE = os.environ.get("NWB_LFADS_EMG_CACHE_DIR") or str(Path.home() / ".cache" / "nwb-lfads-emg")
TRAINING = ["--max-epochs", "2"] if FAST else []
print("asset:", ASSET)
print("archive:", os.environ.get("DANDI_INSTANCE", "dandi (https://api.dandiarchive.org/api)"))


# %% [markdown]
# ## 1. Inspect the remote file
#
# Only the file's header and the small metadata datasets travel; the EMG itself stays on the
# archive. FALCON stores each muscle as its own `TimeSeries` inside one `BehavioralTimeSeries`
# container; `nwb-lfads-emg` reads them together as one multi-channel EMG series. What FALCON stores
# is not raw EMG but its envelope, already notch-filtered, high-passed, rectified, resampled to 50 Hz
# and low-passed at 10 Hz, on a 20 ms timestamp grid: `inspect` says how it will be read
# (`input: envelope, sampled at 50 Hz ...; bins 20 ms`). With no option at all the envelope is
# binned as it is (no second high-pass or rectification), one bin per sample, and the estimates are
# written on the file's own timestamps. `--input raw|envelope` and `--bin-ms` override that.

# %%
run_cli("inspect", ASSET, "--cache-dir", CACHE)

# %% [markdown]
# ## 2. Look at a few seconds of EMG, streamed
#
# The same reader the job uses is available from Python: `open_source` opens the asset lazily and
# `EMGReader.window(t0, t1)` fetches just that time window (an `xarray.DataArray`, time x muscle).

# %%
with open_source(ASSET, cache_dir=CACHE) as opened:
    reader = EMGReader(opened, EMG)
    print(f"{reader.series_path}: {len(reader.muscles)} muscles at {reader.rate:g} Hz, "
          f"{reader.n_samples / reader.rate:.1f} s")
    duration_s = reader.n_samples / reader.rate
    EMG_UNIT = reader.unit
    T0 = reader.starting_time + min(0.4 * duration_s, 60.0)
    window = reader.window(T0, T0 + 3.0)
print(window.sizes, "| muscles:", list(window.coords["muscle"].values))

# %% [markdown]
# ## 3. Run the job on the streamed EMG
#
# `run` needs `--out` for a remote source (the archive is read-only). The model is trained on this
# session's EMG; the run directory keeps it for reuse (tutorial 5).

# %%
DERIVED = OUT / "derived_activation.nwb"
run_cli("run", ASSET, "--emg", EMG, "--out", DERIVED, "--run-dir", OUT / "run", "--cache-dir", CACHE,
        "--overwrite", *TRAINING)

# %% [markdown]
# ## 4. The shareable file
#
# It opens with plain pynwb. It keeps the session's subject, units and behaviour, so the estimates
# can be analysed next to the spikes, but not the raw EMG: `LFADSModelProvenance.source_url` and
# `source_series_path` say where that is.

# %%
with NWBHDF5IO(str(DERIVED), "r") as io:
    nwbfile = io.read()
    results = nwbfile.processing["ecephys"]
    for name, obj in results.data_interfaces.items():
        print(f"{name:22s} {type(obj).__name__:22s} {getattr(getattr(obj, 'data', None), 'shape', '')}")
    provenance = results["LFADSModelProvenance"]
    print("source:", provenance.source_url, "|", provenance.source_series_path)
    decision = json.loads(provenance.preprocessing)["input_decision"]
    print(f"input read as {decision['kind']} ({'; '.join(decision['reasons'])}), bins {decision['bin_ms']:g} ms")
    print("units:", 0 if nwbfile.units is None else len(nwbfile.units),
          "| behaviour:", list(nwbfile.processing["behavior"].data_interfaces)
          if "behavior" in nwbfile.processing else [])
    estimates = {}
    for method in ("AutoLFADS", "LowPass", "BayesianFilter"):
        est = results[method]
        # a timestamped source (FALCON) gives estimates on its own timestamps; a sampled one, rate + start
        if est.timestamps is not None:
            t_est = np.asarray(est.timestamps[:])
        else:
            t_est = float(est.starting_time) + np.arange(est.data.shape[0]) / float(est.rate)
        j0, j1 = np.searchsorted(t_est, [T0, T0 + 3.0])
        estimates[method] = (t_est[j0:j1], est.data[j0:j1, :])
    muscles = list(results["AutoLFADS"].muscle_names[:])
print(f"size of {DERIVED.name}: {DERIVED.stat().st_size / 1e6:.1f} MB")

# %% [markdown]
# ## 5. Plot the streamed EMG under the estimates

# %%
t_emg = window.coords["time"].values
fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
for ax, m in zip(axes, range(min(4, len(muscles))), strict=False):
    ax.plot(t_emg, window.sel(muscle=muscles[m]).values, color="0.75", lw=0.4)
    ax.set_ylabel(f"{muscles[m]}\nEMG ({EMG_UNIT})", fontsize=8)
    ax2 = ax.twinx()
    for method, (t, y) in estimates.items():
        ax2.plot(t, y[:, m], lw=1.2, label=method)
    ax2.set_ylabel("activation (a.u.)", fontsize=8)
fig.legend(*ax2.get_legend_handles_labels(), loc="upper right", ncol=3, fontsize=8)
axes[-1].set_xlabel("time (s)")
fig.tight_layout(rect=(0, 0, 1, 0.96))
FIGURE = OUT / "streamed_estimates.png"
fig.savefig(FIGURE, dpi=110)
plt.close(fig)
print(f"figure: {FIGURE}")

# %% [markdown]
# ## Sharing it
#
# To publish the derived file, put it in a dandiset of your own, organised like the source, and
# upload it with the `dandi` client (an API key from the archive is needed):
#
# ```bash
# dandi download --download dandiset.yaml DANDI:<your dandiset>
# cd <your dandiset> && mkdir -p sub-MonkeyL
# cp derived_activation.nwb sub-MonkeyL/sub-MonkeyL_ses-20120924_desc-lfads_behavior.nwb
# dandi validate . && dandi upload
# ```
