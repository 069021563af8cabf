"""AutoLFADS: population-based training of LFADS with Ray Tune (embedded local Ray, or a Ray cluster).

Ray Tune does the work: `PopulationBasedTraining` (asynchronous: each member is ranked against the
others every `perturbation_interval` epochs on the smoothed held-out sample-validation loss; one in
the bottom quarter copies the checkpoint of one in the top quarter, then explores), the
trial checkpointing, `Tuner.restore` for an interrupted search. This package adds, one file per job:
`trainable` (the LFADS trainable, a stopper on population stagnation, the result recorder),
`search` (the Ray session, the scheduler's set-up with the AutoLFADS explore rule from
`search_space`, the run, the export of the best model into `run_dir/best/`, readable by
`inference.load_model`) and `history` (the history for the provenance record, the winner's lineage,
a summary table and a plot).

Data reach the trials through Ray's object store (`tune.with_parameters`) unless `shared_data_path`
names a file on a filesystem every node sees. Checkpoints live under `run_dir/pbt/`; on a cluster of
several machines `run_dir` (or `storage_path`) must be on a shared filesystem.
"""

from ..search_space import HyperParam, autolfads_search_space
from .history import collect_history, plot_history, read_results, summary_table
from .search import (
    BEST_DIR,
    DATA_FILE,
    EXPERIMENT_NAME,
    HISTORY_FILE,
    PLOT_FILE,
    RESULTS_FILE,
    SETTINGS_FILE,
    PBTResult,
    fit_pbt,
    ray_session,
)

# PBTRecorder too: a search interrupted before the split pickled it as nwb_lfads_emg.training.pbt.PBTRecorder
from .trainable import METRIC, LFADSTrainable, PBTRecorder, PopulationPlateauStopper

__all__ = ["PBTResult", "fit_pbt", "collect_history", "plot_history", "summary_table", "ray_session",
           "PopulationPlateauStopper", "HyperParam", "autolfads_search_space", "METRIC", "LFADSTrainable",
           "BEST_DIR", "DATA_FILE", "EXPERIMENT_NAME", "HISTORY_FILE", "PLOT_FILE", "RESULTS_FILE", "SETTINGS_FILE",
           "read_results", "PBTRecorder"]
