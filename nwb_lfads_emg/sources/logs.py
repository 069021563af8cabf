"""Where log records go from the command line: our warnings to the terminal on one line each, the
dandi client's retries and tracebacks to a log file (or to the terminal with ``--debug``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

#: Loggers of libraries whose records are kept off the terminal unless --debug.
NOISY_LOGGERS = ("dandi", "urllib3", "remfile")


def log_file() -> Path:
    """$NWB_LFADS_EMG_LOG, else nwb-lfads-emg.log in $NWB_LFADS_EMG_CACHE_DIR or ~/.cache/nwb-lfads-emg."""
    env = os.environ.get("NWB_LFADS_EMG_LOG")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("NWB_LFADS_EMG_CACHE_DIR")
    if cache:
        return Path(cache).expanduser() / "nwb-lfads-emg.log"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nwb-lfads-emg" / "nwb-lfads-emg.log"


def route_logs(debug: bool = False) -> Path | None:
    """Send our warnings to stderr as 'warning: ...' and library records to the log file (all to stderr
    with ``debug``). Returns the log file, or None when it cannot be written (records are then dropped)."""
    ours = logging.getLogger("nwb_lfads_emg")
    if not any(getattr(h, "_nwb_lfads_emg", False) for h in ours.handlers):
        terminal = logging.StreamHandler()
        terminal.setFormatter(logging.Formatter("warning: %(message)s"))
        terminal.setLevel(logging.WARNING)
        terminal._nwb_lfads_emg = True  # type: ignore[attr-defined]
        ours.addHandler(terminal)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s: %(message)s")
        return None
    path: Path | None = log_file()
    handler: logging.Handler
    try:
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    except (OSError, AssertionError):
        handler, path = logging.NullHandler(), None
    for name in NOISY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers = [h for h in lib.handlers if not getattr(h, "_nwb_lfads_emg", False)]
        handler._nwb_lfads_emg = True  # type: ignore[attr-defined]
        lib.addHandler(handler)
        lib.propagate = False
    return path
