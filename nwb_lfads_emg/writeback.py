"""Write activation estimates, latent factors and provenance back into NWB, never corrupting a file.

Every write goes to a temporary file beside the destination, is validated (pynwb against the cached
namespaces, nwbinspector at CRITICAL and above), and only then atomically replaces the destination
with `os.replace`. A failure or a kill at any moment leaves the original file as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import ndx  # noqa: F401 - registers the extension before any NWBHDF5IO is created
from .errors import WriteBackError

RESULTS_MODULE = "ecephys"
FACTORS_NAME = "LatentFactors"
PROVENANCE_NAME = "LFADSModelProvenance"
METHOD_DESCRIPTIONS = {
    "AutoLFADS": "Posterior mean of the LFADS/AutoLFADS model's per-muscle output (Gamma mean), "
    "averaged over posterior samples; uncertainty is the standard deviation across samples.",
    "LowPass": "Zero-phase Butterworth low-pass envelope of the high-passed, rectified EMG.",
    "BayesianFilter": "MAP estimate of Sanger's (2007) Bayesian filter on the high-passed, rectified EMG.",
}


@dataclass
class ActivationEstimate:
    """One method's activation estimate on the bin time base, shape (bins, muscles)."""

    method: str
    data: np.ndarray
    uncertainty: np.ndarray | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class SessionResults:
    """Everything the pipeline writes back for one EMG series of one session."""

    estimates: list[ActivationEstimate]
    rate: float
    starting_time: float
    muscles: list[str]
    source_series_path: str
    electrode_indices: list[int] | None = None
    factors: np.ndarray | None = None
    inferred_inputs: np.ndarray | None = None
    provenance: dict[str, Any] | None = None
    timestamps: np.ndarray | None = None  # bin start times, when the input's own timestamps are kept (gaps)


def _compressed(data: np.ndarray) -> Any:
    """Chunked, gzip-compressed dataset for large arrays (nwbinspector's best practice)."""
    from hdmf.backends.hdf5 import H5DataIO

    data = np.ascontiguousarray(data, dtype=np.float32)
    chunk_rows = max(1, min(data.shape[0], (1 << 18) // max(1, data[0].size * 4)))
    return H5DataIO(data, compression="gzip", compression_opts=4, chunks=(chunk_rows, *data.shape[1:]))


def _resolve(nwbfile: Any, path: str) -> Any | None:
    """The object at an in-file path such as 'acquisition/EMG' or 'processing/ecephys/X' (None if absent)."""
    parts = [p for p in path.strip("/").split("/") if p]
    try:
        if parts[0] == "acquisition":
            obj = nwbfile.acquisition[parts[1]]
            rest = parts[2:]
        elif parts[0] == "processing":
            obj = nwbfile.processing[parts[1]][parts[2]]
            rest = parts[3:]
        else:
            return None
        for name in rest:
            obj = obj[name]
        return obj
    except (KeyError, IndexError, TypeError):
        return None


def existing_results(nwbfile: Any) -> list[str]:
    """Names of the objects of this package already in the results module of an open file."""
    if RESULTS_MODULE not in nwbfile.processing:
        return []
    from .ndx import LatentFactors, LFADSModelProvenance, MuscleActivation

    ours = (MuscleActivation, LatentFactors, LFADSModelProvenance)
    return sorted(n for n, o in nwbfile.processing[RESULTS_MODULE].data_interfaces.items() if isinstance(o, ours))


def _names_to_write(results: SessionResults) -> list[str]:
    names = [e.method for e in results.estimates]
    if results.factors is not None:
        names.append(FACTORS_NAME)
    if results.provenance is not None:
        names.append(PROVENANCE_NAME)
    return names


def add_results(nwbfile: Any, results: SessionResults, link_source: bool = True) -> None:
    """Add MuscleActivation per method, LatentFactors and provenance to an in-memory NWBFile."""
    from hdmf.common import DynamicTableRegion

    from .ndx import LatentFactors, LFADSModelProvenance, MuscleActivation

    if RESULTS_MODULE in nwbfile.processing:
        module = nwbfile.processing[RESULTS_MODULE]
    else:
        module = nwbfile.create_processing_module(
            RESULTS_MODULE, "Processed electrophysiology: muscle activation estimated from EMG (nwb-lfads-emg)."
        )
    source = _resolve(nwbfile, results.source_series_path) if link_source else None
    provenance = None
    if results.provenance is not None:
        provenance = LFADSModelProvenance(name=PROVENANCE_NAME, **results.provenance)
        module.add(provenance)

    use_electrodes = (
        results.electrode_indices is not None and source is not None and nwbfile.electrodes is not None
    )
    timing_holder: list[Any] = []

    def timing() -> dict[str, Any]:
        """rate + starting_time, or the input's timestamps (stored once, linked by the other series)."""
        if results.timestamps is None:
            return {"rate": float(results.rate), "starting_time": float(results.starting_time)}
        return {"timestamps": timing_holder[0] if timing_holder else np.asarray(results.timestamps, dtype=np.float64)}

    for estimate in results.estimates:
        kwargs: dict[str, Any] = {}
        if use_electrodes:
            kwargs["electrodes"] = DynamicTableRegion(
                name="electrodes",
                data=list(results.electrode_indices),
                description="Electrode (muscle) of each column of data.",
                table=nwbfile.electrodes,
            )
        kwargs["muscle_names"] = list(results.muscles)
        if source is not None:
            kwargs["source_series"] = source
        if estimate.uncertainty is not None:
            kwargs["uncertainty"] = _compressed(estimate.uncertainty)
        if estimate.method == "AutoLFADS" and provenance is not None:
            kwargs["model_provenance"] = provenance
        series = MuscleActivation(
            name=estimate.method,
            description=METHOD_DESCRIPTIONS.get(estimate.method, f"Muscle activation estimated by {estimate.method}.")
            + f" Source: {results.source_series_path}. Columns: {', '.join(results.muscles)}.",
            data=_compressed(estimate.data),
            unit="a.u.",
            **timing(),
            method=estimate.method,
            method_parameters=json.dumps(estimate.parameters, default=str),
            comments="Units: rectified EMG normalised per muscle by the preprocessing scale (see provenance).",
            **kwargs,
        )
        module.add(series)
        timing_holder[:1] = timing_holder[:1] or [series]
    if results.factors is not None:
        kwargs = {}
        if results.inferred_inputs is not None:
            kwargs["inferred_inputs"] = _compressed(results.inferred_inputs)
        if source is not None:
            kwargs["source_series"] = source
        if provenance is not None:
            kwargs["model_provenance"] = provenance
        module.add(
            LatentFactors(
                name=FACTORS_NAME,
                description="Latent factors of the AutoLFADS model (row-normalised linear map of the generator state)"
                + (" and its inferred inputs (controller outputs)." if results.inferred_inputs is not None else "."),
                data=_compressed(results.factors),
                unit="a.u.",
                **timing(),
                **kwargs,
            )
        )


def validate_file(path: Path) -> None:
    """Raise WriteBackError unless pynwb (cached namespaces) and nwbinspector (CRITICAL+) accept the file."""
    import pynwb
    from nwbinspector import Importance, inspect_nwbfile, load_config

    errors = pynwb.validate(path=str(path), use_cached_namespaces=True)
    if isinstance(errors, tuple):  # older pynwb returned (errors, status)
        errors = errors[0]
    if errors:
        raise WriteBackError(f"{path}: written file fails NWB validation: {errors[0]}")
    for message in inspect_nwbfile(str(path), config=load_config("dandi")):
        if message.importance.value >= Importance.CRITICAL.value:
            raise WriteBackError(
                f"{path}: {message.location or message.object_name}: nwbinspector {message.importance.name}: "
                f"{message.message}"
            )


def refuse_existing_output(destination: str | Path, overwrite: bool) -> None:
    """Raise WriteBackError when an output file exists and replacing it was not asked for."""
    if Path(destination).exists() and not overwrite:
        raise WriteBackError(f"{destination}: output file exists; pass --overwrite (overwrite=True) to replace it")


def _temp_beside(destination: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{destination.stem}.tmp-", suffix=".nwb", dir=destination.parent)
    os.close(fd)
    return Path(name)


def _delete_groups(path: Path, names: list[str]) -> None:
    """Remove earlier results (on the temporary copy only) so they can be written again."""
    with h5py.File(path, "r+") as f:
        group = f.get(f"processing/{RESULTS_MODULE}")
        for name in names:
            if group is not None and name in group:
                del group[name]


def _check_overwrite(location: Any, names: list[str], existing: list[str], overwrite: bool) -> list[str]:
    clash = sorted(set(names) & set(existing))
    if clash and not overwrite:
        raise WriteBackError(
            f"{location}: processing/{RESULTS_MODULE}: already holds results ({', '.join(clash)}); "
            "pass --overwrite (overwrite=True) to replace them"
        )
    return clash


def _commit(temp: Path, destination: Path, validate: bool) -> Path:
    """Validate the temporary file and atomically move it onto the destination; remove it on failure."""
    try:
        if validate:
            validate_file(temp)
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return destination


def write_into_copy(
    source: Path,
    results: SessionResults,
    destination: Path,
    overwrite: bool = False,
    validate: bool = True,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Copy a local NWB file, add the results, validate, and atomically replace `destination`.

    `destination` may be `source` itself (in-place annotation). `before_commit` is a hook called
    with the temporary path just before validation (used by tests to interrupt the writer).
    """
    from pynwb import NWBHDF5IO

    source, destination = Path(source), Path(destination)
    if destination != source:
        refuse_existing_output(destination, overwrite)
    names = _names_to_write(results)
    try:
        with NWBHDF5IO(str(source), "r") as io:
            existing = existing_results(io.read())
    except WriteBackError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py/pynwb errors become one line
        raise WriteBackError(f"{source}: cannot open for annotation: {exc}") from None
    clash = _check_overwrite(source, names, existing, overwrite)

    destination.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(destination)
    try:
        shutil.copyfile(source, temp)
        if clash:
            _delete_groups(temp, clash)
        with NWBHDF5IO(str(temp), "a") as io:
            nwbfile = io.read()
            add_results(nwbfile, results)
            io.write(nwbfile)
        if before_commit is not None:
            before_commit(temp)
    except WriteBackError:
        temp.unlink(missing_ok=True)
        raise
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise WriteBackError(f"{destination}: writing results failed, original untouched: {exc}") from None
    return _commit(temp, destination, validate)


def _copy_session(src: Any, source_location: str) -> Any:
    """A new NWBFile keeping the session's identity, subject, spikes and behaviour (no raw EMG)."""
    from pynwb import NWBFile, TimeSeries
    from pynwb.file import Subject
    from pynwb.misc import Units

    meta = {
        key: getattr(src, key)
        for key in ("experimenter", "lab", "institution", "session_id", "experiment_description", "keywords",
                    "related_publications", "protocol", "notes")
        if getattr(src, key, None) is not None
    }
    for key in ("experimenter", "keywords", "related_publications"):
        if key in meta:
            meta[key] = [str(v) for v in np.asarray(meta[key][:]).ravel()]
    nwbfile = NWBFile(
        session_description=src.session_description,
        identifier=str(uuid.uuid4()),
        session_start_time=src.session_start_time,
        source_script=f"nwb-lfads-emg: derived from {source_location} (identifier {src.identifier})",
        source_script_file_name="nwb-lfads-emg",
        **meta,
    )
    if src.subject is not None:
        fields = ("subject_id", "species", "sex", "age", "description", "genotype", "strain", "weight",
                  "date_of_birth")
        nwbfile.subject = Subject(**{k: getattr(src.subject, k) for k in fields if getattr(src.subject, k, None)})
    if src.units is not None and len(src.units) > 0:
        units = Units(
            name="units",
            description=f"Units copied from {source_location}.",
            resolution=src.units.resolution if getattr(src.units, "resolution", None) else None,
        )
        for i in range(len(src.units)):
            units.add_unit(spike_times=np.asarray(src.units.get_unit_spike_times(i)))
        nwbfile.units = units
    for module_name in ("behavior", "ground_truth"):
        if module_name not in src.processing:
            continue
        old = src.processing[module_name]
        module = nwbfile.create_processing_module(module_name, old.description)
        for name, obj in old.data_interfaces.items():
            if not isinstance(obj, TimeSeries):
                continue
            timing = (
                {"rate": obj.rate, "starting_time": obj.starting_time}
                if obj.rate is not None
                else {"timestamps": np.asarray(obj.timestamps[:])}
            )
            module.add(
                TimeSeries(name=name, description=obj.description, data=np.asarray(obj.data[:]), unit=obj.unit,
                           conversion=obj.conversion, offset=getattr(obj, "offset", 0.0), **timing)
            )
    return nwbfile


def write_new_file(
    src_nwbfile: Any,
    source_location: str,
    results: SessionResults,
    destination: Path,
    overwrite: bool = False,
    validate: bool = True,
) -> Path:
    """Write a new, shareable NWB file holding the session's metadata, spikes, behaviour and the results.

    Used for read-only sources (DANDI assets, URLs): the raw EMG stays where it is, so the estimates
    name their muscles and record the source series path and URL in their provenance.
    """
    from pynwb import NWBHDF5IO

    destination = Path(destination)
    refuse_existing_output(destination, overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(destination)
    try:
        nwbfile = _copy_session(src_nwbfile, source_location)
        add_results(nwbfile, results, link_source=False)
        with NWBHDF5IO(str(temp), "w") as io:
            io.write(nwbfile)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit, WriteBackError)):
            raise
        raise WriteBackError(f"{destination}: writing results failed: {exc}") from None
    return _commit(temp, destination, validate)
