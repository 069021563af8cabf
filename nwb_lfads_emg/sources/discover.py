"""Find series that could be EMG, behaviour series and the Units table in an NWB file."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    kind: str  # "ElectricalSeries", "TimeSeries" (time x channels) or "per_muscle" (1-D series)
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
    warning: str = ""

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
    """Yield (path, TimeSeries, parent container or None) for every TimeSeries in acquisition, stimulus
    and processing (also those one container deep: BehavioralTimeSeries, LFP, ...)."""
    from pynwb import TimeSeries

    def children(obj: Any) -> list[Any]:
        out: list[Any] = []
        for attr in ("time_series", "spatial_series", "electrical_series", "roi_response_series"):
            value = getattr(obj, attr, None)
            if isinstance(value, dict):
                out.extend(value.values())
        return out

    roots: list[tuple[str, Any]] = [(f"acquisition/{k}", v) for k, v in nwbfile.acquisition.items()]
    roots += [(f"stimulus/{k}", v) for k, v in (getattr(nwbfile, "stimulus", None) or {}).items()]
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
    head = np.diff(np.asarray(stamps[:min(len(stamps), 1001)], dtype=np.float64))
    period = float(np.median(head)) if head.size else 0.0  # the sampling interval, not diluted by gaps
    last = float(stamps[len(stamps) - 1])
    rate = 1.0 / period if period > 0 else None
    if rate is not None and abs(rate - round(rate)) < 1e-6 * rate:
        rate = float(round(rate))
    duration = (last - first) + (period if rate else 0.0)
    return rate, first, duration, True


def _electrode_rows(es: Any) -> list[int]:
    try:
        return [int(i) for i in es.electrodes.data[:]]
    except Exception:
        return []


def electrode_names(es: Any) -> list[str]:
    """Muscle names of an ElectricalSeries' channels from its electrodes (muscle, location, label or channel name)."""
    rows = _electrode_rows(es)
    table = es.electrodes.table if es.electrodes is not None else None
    columns = [c for c in ("muscle", "muscle_name", "location", "label", "channel_name")
               if table is not None and c in table.colnames]
    names: list[str] = []
    for k, row in enumerate(rows):
        name = ""
        for col in columns:
            value = table[col].data[row]
            value = value.decode() if isinstance(value, bytes) else str(value)
            if value and value.strip().lower() not in ("unknown", "none", "nan", ""):
                name = value.strip()
                break
        names.append(name or f"ch{k}")
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


def series_text(path: str, ts: Any, parent: Any = None) -> dict[str, str]:
    """The words a file uses about a series: its path, description, comments, unit and container."""
    texts = {"name": path, "description": str(getattr(ts, "description", "") or ""),
             "comments": str(getattr(ts, "comments", "") or ""), "unit": str(getattr(ts, "unit", "") or "")}
    if parent is not None:
        texts["container"] = f"{type(parent).__name__} {parent.name}"
    return texts


def _text_reason(texts: dict[str, str]) -> str:
    for where, text in texts.items():
        if where != "description" and where != "comments" and EMG_PATTERN.search(text):
            return f"{where} says EMG/muscle"
    for where in ("description", "comments"):
        if EMG_PATTERN.search(texts.get(where, "")):
            return f"{where} says EMG/muscle"
    return ""


def _shape(ts: Any) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in ts.data.shape)
    except Exception:  # noqa: BLE001 - links to missing data, scalars
        return ()


def _numeric(ts: Any) -> bool:
    try:
        return np.dtype(ts.data.dtype).kind in "iuf"
    except Exception:  # noqa: BLE001
        return False


def _timebase(ts: Any) -> tuple[Any, ...]:
    """A key equal for series that share a time base (length, rate and start, or first/last stamps)."""
    n = _shape(ts)[0] if _shape(ts) else 0
    if ts.rate is not None:
        return (n, round(float(ts.rate), 6), round(float(ts.starting_time or 0.0), 6))
    stamps = ts.timestamps
    if stamps is None or n == 0:
        return (n, None)
    return (n, round(float(stamps[0]), 6), round(float(stamps[len(stamps) - 1]), 6))


def _is_boundary(name: str, k: int) -> bool:
    """True when position k of a name starts a new word (after _ - . space, or a camel-case edge)."""
    if k <= 0 or k >= len(name):
        return True
    a, b = name[k - 1], name[k]
    if a in "_-. " or b in "_-. ":
        return True
    if a.islower() and b.isupper():
        return True
    return a.isupper() and b.isupper() and k + 1 < len(name) and name[k + 1].islower()


def common_prefix(names: list[str]) -> str:
    """The longest common prefix of names that ends on a word boundary in every name."""
    import os.path

    prefix = os.path.commonprefix(names)
    k = len(prefix)
    while k > 0 and not all(_is_boundary(n, k) for n in names):
        k -= 1
    return prefix[:k]


def _muscle_name(name: str, prefix: str) -> str:
    rest = name[len(prefix):].lstrip("_-. ")
    return rest or name


def _series_info(path: str, kind: str, members: list[Any], muscles: list[str], why: str,
                 warning: str = "") -> SeriesInfo:
    first = members[0]
    rate, start, dur, stamped = series_timing(first)
    return SeriesInfo(path=path, kind=kind, muscles=muscles, rate=rate, duration_s=dur, unit=first.unit,
                      n_channels=len(muscles), n_samples=int(_shape(first)[0]) if _shape(first) else 0,
                      starting_time=start, timestamped=stamped, why=why, objects=list(members), warning=warning)


def multichannel_info(path: str, ts: Any, why: str, warning: str = "") -> SeriesInfo:
    """A (time, channels) ElectricalSeries or TimeSeries (or a 1-D one as one channel) as a candidate."""
    from pynwb.ecephys import ElectricalSeries

    shape = _shape(ts)
    if isinstance(ts, ElectricalSeries):
        muscles = electrode_names(ts) if len(shape) == 2 else electrode_names(ts)[:1]
        return _series_info(path, "ElectricalSeries", [ts], muscles, why, warning)
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return _series_info(path, "per_muscle", [ts], [ts.name], why, warning)
    n_cols = shape[1] if len(shape) == 2 else 0
    return _series_info(path, "TimeSeries", [ts], _unique(column_names(ts, n_cols)), why, warning)


def group_info(path: str, members: list[tuple[str, Any]], why: str, warning: str = "") -> SeriesInfo:
    """Several 1-D series (one per muscle) read together as one (time, muscles) candidate."""
    names = [ts.name for _, ts in members]
    prefix = common_prefix(names) if len(names) > 1 else ""
    muscles = _unique([_muscle_name(n, prefix) for n in names])
    return _series_info(path, "per_muscle", [ts for _, ts in members], muscles, why, warning)


def _is_input(path: str, ts: Any) -> bool:
    return not (_NOT_INPUT_PATH.search(path) or type(ts).__name__ in _NOT_INPUT_TYPES)


def find_emg_candidates(nwbfile: Any) -> list[SeriesInfo]:
    """Every series that could be EMG, in any layout converters use.

    (time, channels) ElectricalSeries and TimeSeries whose name, description, comments, unit,
    electrodes or container says EMG/muscle/myo; 1-D per-muscle series grouped by their container
    or, when loose in acquisition or a processing module, by a shared name prefix and time base.
    """
    from pynwb.ecephys import ElectricalSeries

    found: list[SeriesInfo] = []
    groups: dict[str, list[tuple[str, Any]]] = {}
    group_why: dict[str, str] = {}
    loose: dict[tuple[Any, ...], list[tuple[str, Any]]] = {}
    for path, ts, parent in walk_series(nwbfile):
        if not _is_input(path, ts):
            continue
        shape = _shape(ts)
        if isinstance(ts, ElectricalSeries):
            why = _es_emg_reason(path, ts)
            if why:
                found.append(multichannel_info(path, ts, why))
            continue
        if not shape or not _numeric(ts):
            continue
        one_d = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
        container = path.rsplit("/", 1)[0]
        if parent is not None and EMG_PATTERN.search(parent.name) and one_d:
            groups.setdefault(container, []).append((path, ts))
            group_why[container] = f"{type(parent).__name__} named {parent.name!r}"
            continue
        if parent is None and one_d and path.startswith("processing/") and EMG_PATTERN.search(container.split("/")[1]):
            groups.setdefault(container, []).append((path, ts))
            group_why[container] = f"processing module named {container.split('/')[1]!r}"
            continue
        why = _text_reason(series_text(path, ts, parent))
        if not why:
            continue
        if one_d:
            loose.setdefault((container, *_timebase(ts)), []).append((path, ts))
        elif len(shape) == 2:
            found.append(multichannel_info(path, ts, why))
    for container, members in groups.items():
        found.append(group_info(container, members, group_why[container]))
    for key, members in loose.items():
        container = key[0]
        if len(members) == 1:
            path, ts = members[0]
            found.append(multichannel_info(path, ts, _text_reason(series_text(path, ts))))
            continue
        prefix = common_prefix([ts.name for _, ts in members])
        path = f"{container}/{prefix}*" if prefix else ",".join(p for p, _ in members)
        found.append(group_info(path, members, f"{len(members)} 1-D series that say EMG/muscle, "
                                f"{'named ' + prefix + '*, ' if prefix else ''}on one time base"))
    return found


def find_behavior_series(nwbfile: Any) -> list[BehaviorInfo]:
    """Non-EMG TimeSeries (behaviour first) that can serve for evaluation."""
    from pynwb.ecephys import ElectricalSeries

    emg_objects = {id(ts) for c in find_emg_candidates(nwbfile) for ts in c.objects}
    out: list[BehaviorInfo] = []
    for path, ts, parent in walk_series(nwbfile):
        if isinstance(ts, ElectricalSeries) or id(ts) in emg_objects:
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
    """Column names of a TimeSeries from a 'Columns: a, b, c.' (or Channels:/Muscles:) list in its
    description or comments, else from a plain 'a, b, c' description; else name_0, name_1, ..."""
    name = str(getattr(ts, "name", "x"))
    if n_cols == 1:
        return [name]
    texts = [str(getattr(ts, "description", "") or ""), str(getattr(ts, "comments", "") or "")]
    for text in texts:
        for m in re.finditer(r"(?:columns|channels|muscles)\s*(?:are|:)\s*([^.;()]+)", text, re.IGNORECASE):
            parts = [p.strip() for p in m.group(1).split(",")]
            if len(parts) == n_cols and all(p and len(p) < 40 for p in parts):
                return parts
    desc = texts[0]
    text = desc.split(":", 1)[1] if ":" in desc else desc
    text = text.split("(", 1)[0]
    parts = [p.strip().rstrip(".") for p in text.split(",")]
    if len(parts) == n_cols and all(p and len(p) < 40 for p in parts):
        return parts
    return [f"{name}_{j}" for j in range(n_cols)]
