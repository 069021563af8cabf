"""Find series that could be EMG, behaviour series and the Units table in an NWB file."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

EMG_PATTERN = re.compile(r"emg|electromyo|muscle|myomatrix|myo[-_ ]?thread", re.IGNORECASE)
BEHAVIOR_PATTERN = re.compile(
    r"force|torque|kinemat|joint|angle|position|velocit|cursor|finger|hand|grip|pressure|"
    r"marker|pose|speed|acceler|treadmill|wheel|behav|lever|target",
    re.IGNORECASE,
)
# Objects that are results of this project (or truth), not inputs
_NOT_INPUT_TYPES = {"MuscleActivation", "LatentFactors"}
_NOT_INPUT_PATH = re.compile(r"(^|/)(ground_?truth|lfads)[^/]*(/|$)", re.IGNORECASE)


@dataclass
class SeriesInfo:
    """One EMG candidate: a multi-channel ElectricalSeries or a set of per-muscle TimeSeries."""

    path: str
    kind: str  # "ElectricalSeries" or "per_muscle"
    muscles: list[str]
    rate: float | None
    duration_s: float | None
    unit: str
    n_channels: int
    n_samples: int = 0
    starting_time: float = 0.0
    timestamped: bool = False
    why: str = ""
    objects: list[Any] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        """One line for the inventory."""
        rate = f"{self.rate:g} Hz" if self.rate else "rate ?"
        dur = f"{self.duration_s:.1f} s" if self.duration_s is not None else "duration ?"
        names = ", ".join(self.muscles[:16]) + (" ..." if len(self.muscles) > 16 else "")
        stamp = ", timestamped" if self.timestamped else ""
        return (
            f"{self.path} [{self.kind}] {self.n_channels} ch, {rate}, {dur}, unit {self.unit}{stamp}; "
            f"muscles: {names}"
        )


@dataclass
class BehaviorInfo:
    """A behavioural (or other non-EMG) TimeSeries usable for evaluation."""

    path: str
    name: str
    neurodata_type: str
    shape: tuple[int, ...]
    rate: float | None
    duration_s: float | None
    unit: str
    behavioral: bool
    obj: Any = field(default=None, repr=False)

    def describe(self) -> str:
        """One line for the inventory."""
        rate = f"{self.rate:g} Hz" if self.rate else "rate ?"
        dur = f"{self.duration_s:.1f} s" if self.duration_s is not None else "duration ?"
        return f"{self.path} [{self.neurodata_type}] shape {self.shape}, {rate}, {dur}, unit {self.unit}"


def walk_series(nwbfile: Any) -> Iterator[tuple[str, Any, Any]]:
    """Yield (path, TimeSeries, parent container or None) for every TimeSeries in acquisition/processing."""
    from pynwb import TimeSeries

    def children(obj: Any) -> list[Any]:
        out: list[Any] = []
        for attr in ("time_series", "spatial_series", "electrical_series", "roi_response_series"):
            value = getattr(obj, attr, None)
            if isinstance(value, dict):
                out.extend(value.values())
        return out

    roots: list[tuple[str, Any]] = [(f"acquisition/{k}", v) for k, v in nwbfile.acquisition.items()]
    for mod_name, module in nwbfile.processing.items():
        roots.extend((f"processing/{mod_name}/{k}", v) for k, v in module.data_interfaces.items())
    for path, obj in roots:
        if isinstance(obj, TimeSeries):
            yield path, obj, None
        else:
            for child in children(obj):
                if isinstance(child, TimeSeries):
                    yield f"{path}/{child.name}", child, obj


def series_timing(ts: Any) -> tuple[float | None, float, float | None, bool]:
    """(rate, starting_time, duration_s, timestamped) of a TimeSeries, read from few values only."""
    n = int(ts.data.shape[0]) if ts.data is not None and len(ts.data.shape) else 0
    if ts.rate is not None:
        start = float(ts.starting_time or 0.0)
        rate = float(ts.rate)
        if not math.isfinite(rate) or rate <= 0:  # a broken rate attribute: unknown (the reader refuses it)
            return None, start, None, False
        return rate, start, n / rate, False
    stamps = ts.timestamps
    if stamps is None or len(stamps) == 0:
        return None, 0.0, None, True
    first = float(stamps[0])
    if len(stamps) < 2:
        return None, first, 0.0, True
    last = float(stamps[len(stamps) - 1])
    rate = (len(stamps) - 1) / (last - first) if last > first else None
    duration = (last - first) + (1.0 / rate if rate else 0.0)
    return rate, first, duration, True


def _electrode_rows(es: Any) -> list[int]:
    try:
        return [int(i) for i in es.electrodes.data[:]]
    except Exception:
        return []


def electrode_names(es: Any) -> list[str]:
    """Muscle names of an ElectricalSeries' channels from its electrodes (muscle or location column)."""
    rows = _electrode_rows(es)
    table = es.electrodes.table if es.electrodes is not None else None
    names: list[str] = []
    column = None
    if table is not None:
        for col in ("muscle", "muscle_name", "location", "label"):
            if col in table.colnames:
                column = col
                break
    for k, row in enumerate(rows):
        name = ""
        if column is not None:
            value = table[column].data[row]
            name = value.decode() if isinstance(value, bytes) else str(value)
        if not name or name.lower() in ("unknown", "none", "nan"):
            name = f"ch{k}"
        names.append(name)
    if len(es.data.shape) == 2 and len(names) != es.data.shape[1]:
        names = [f"ch{k}" for k in range(es.data.shape[1])]
    return _unique(names)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    out, count = [], dict.fromkeys(seen, 0)
    for n in names:
        if seen[n] > 1:
            count[n] += 1
            out.append(f"{n}_{count[n]}")
        else:
            out.append(n)
    return out


def _es_emg_reason(path: str, es: Any) -> str:
    texts = {"name": path, "description": es.description or "", "comments": es.comments or ""}
    table = es.electrodes.table if es.electrodes is not None else None
    if table is not None:
        if "muscle" in table.colnames or "muscle_name" in table.colnames:
            return "electrodes table has a muscle column"
        rows = _electrode_rows(es)
        if "location" in table.colnames and rows:
            locs = {str(table["location"].data[r]) for r in rows[:64]}
            texts["electrode location"] = " ".join(locs)
        if "group" in table.colnames and rows:
            groups = {table["group"].data[r] for r in rows[:64]}
            for g in groups:
                texts["electrode group"] = " ".join(
                    [texts.get("electrode group", ""), g.name, g.description or "", g.location or ""]
                )
                device = getattr(g, "device", None)
                if device is not None:
                    texts["device"] = f"{device.name} {device.description or ''}"
    for where, text in texts.items():
        if EMG_PATTERN.search(text):
            return f"{where} says EMG/muscle"
    return ""


def find_emg_candidates(nwbfile: Any) -> list[SeriesInfo]:
    """Every series that could be EMG: ElectricalSeries described as EMG, and per-muscle TimeSeries groups."""
    from pynwb.ecephys import ElectricalSeries

    found: list[SeriesInfo] = []
    groups: dict[str, list[tuple[str, Any]]] = {}
    group_why: dict[str, str] = {}
    for path, ts, parent in walk_series(nwbfile):
        if _NOT_INPUT_PATH.search(path) or type(ts).__name__ in _NOT_INPUT_TYPES:
            continue
        if isinstance(ts, ElectricalSeries):
            why = _es_emg_reason(path, ts)
            if why:
                muscles = electrode_names(ts) if len(ts.data.shape) == 2 else electrode_names(ts)[:1]
                rate, start, dur, stamped = series_timing(ts)
                found.append(SeriesInfo(
                    path=path, kind="ElectricalSeries", muscles=muscles, rate=rate, duration_s=dur,
                    unit=ts.unit, n_channels=len(muscles), n_samples=int(ts.data.shape[0]),
                    starting_time=start, timestamped=stamped, why=why, objects=[ts]))
            continue
        container = path.rsplit("/", 1)[0]
        if parent is not None and EMG_PATTERN.search(parent.name):
            groups.setdefault(container, []).append((path, ts))
            group_why[container] = f"{type(parent).__name__} named {parent.name!r}"
        elif parent is None and path.startswith("processing/") and EMG_PATTERN.search(container.split("/")[1]):
            groups.setdefault(container, []).append((path, ts))
            group_why[container] = f"processing module named {container.split('/')[1]!r}"
    for container, members in groups.items():
        first = members[0][1]
        rate, start, dur, stamped = series_timing(first)
        found.append(SeriesInfo(
            path=container, kind="per_muscle", muscles=[ts.name for _, ts in members], rate=rate,
            duration_s=dur, unit=first.unit, n_channels=len(members), n_samples=int(first.data.shape[0]),
            starting_time=start, timestamped=stamped, why=group_why[container],
            objects=[ts for _, ts in members]))
    return found


def find_behavior_series(nwbfile: Any) -> list[BehaviorInfo]:
    """Non-EMG TimeSeries (behaviour first) that can serve for evaluation."""
    from pynwb.ecephys import ElectricalSeries

    emg_paths = {c.path for c in find_emg_candidates(nwbfile)}
    out: list[BehaviorInfo] = []
    for path, ts, parent in walk_series(nwbfile):
        if isinstance(ts, ElectricalSeries) or path in emg_paths or path.rsplit("/", 1)[0] in emg_paths:
            continue
        if _NOT_INPUT_PATH.search(path) or type(ts).__name__ in _NOT_INPUT_TYPES:
            continue
        rate, _start, dur, _ = series_timing(ts)
        text = " ".join([path, type(parent).__name__ if parent is not None else "", ts.description or ""])
        behavioral = bool(BEHAVIOR_PATTERN.search(text)) or "/behavior" in path or (
            parent is not None and type(parent).__name__ in ("BehavioralTimeSeries", "Position", "CompassDirection")
        )
        out.append(BehaviorInfo(path=path, name=ts.name, neurodata_type=type(ts).__name__,
                                shape=tuple(int(s) for s in ts.data.shape), rate=rate, duration_s=dur,
                                unit=ts.unit, behavioral=behavioral, obj=ts))
    out.sort(key=lambda b: not b.behavioral)
    return out


def all_series_summary(nwbfile: Any) -> list[str]:
    """'path (type)' for every TimeSeries in the file, for error messages."""
    return [f"{path} ({type(ts).__name__})" for path, ts, _ in walk_series(nwbfile)]


def column_names(ts: object, n_cols: int) -> list[str]:
    """Column names of a TimeSeries: from a 'a, b, c (columns ...)' description when it lists them."""
    name = str(getattr(ts, "name", "x"))
    if n_cols == 1:
        return [name]
    desc = str(getattr(ts, "description", "") or "")
    text = desc.split(":", 1)[1] if ":" in desc else desc
    text = text.split("(", 1)[0]
    parts = [p.strip().rstrip(".") for p in text.split(",")]
    if len(parts) == n_cols and all(p and len(p) < 40 for p in parts):
        return parts
    return [f"{name}_{j}" for j in range(n_cols)]
