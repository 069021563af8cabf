"""AutoLFADS: population-based training of LFADS on Ray (embedded local Ray, or a Ray cluster).

Generations of a fixed number of epochs: every member trains one generation as a Ray task, the
driver waits for all of them, ranks them on the smoothed held-out loss at that same epoch and
replaces the worst quarter (`quantile_fraction`) by copies of the best quarter with perturbed
hyper-parameters (truncation selection, as in AutoLFADS). Member 0 trains the configuration's own
hyper-parameters and is never replaced, so the exported model is never worse on the held-out loss
than the configuration's single model. One file per job: `trainable` (a member's generation as a
Ray task, the stagnation stopper), `search` (the Ray session, the generations, selection, the
population's resumable record in `run_dir/pbt/`, the export of the best model into `run_dir/best/`,
readable by `inference.load_model`) and `history` (the history for the provenance record, the
winner's lineage, a summary table and a plot).

Data reach the members through Ray's object store unless `shared_data_path` names a file every
node sees; members' states travel through Ray too, so only the driver's machine writes `run_dir`.
One session or several (`muscles=`: one stitched model, selection on the loss pooled over sessions).
"""

from ..search_space import HyperParam, autolfads_search_space
from .history import build_history, plot_history, summary_table
from .search import (
    BEST_DIR,
    CHAMPION_FILE,
    DATA_FILE,
    EXPERIMENT_NAME,
    HISTORY_FILE,
    PLOT_FILE,
    SETTINGS_FILE,
    STATE_FILE,
    PBTResult,
    default_population,
    fit_pbt,
    ray_session,
    truncation_selection,
)
from .trainable import METRIC, PopulationPlateauStopper, load_member_state, member_name, train_member

__all__ = ["PBTResult", "fit_pbt", "build_history", "plot_history", "summary_table", "ray_session",
           "PopulationPlateauStopper", "HyperParam", "autolfads_search_space", "METRIC", "train_member",
           "load_member_state", "member_name", "default_population", "truncation_selection",
           "BEST_DIR", "CHAMPION_FILE", "DATA_FILE", "EXPERIMENT_NAME", "HISTORY_FILE", "PLOT_FILE",
           "SETTINGS_FILE", "STATE_FILE"]
