"""Write activation estimates, latent factors and provenance back into NWB, never corrupting a file.

Every write goes to a temporary file beside the destination, is validated (pynwb against the cached
namespaces, nwbinspector at CRITICAL and above), and only then atomically replaces the destination
with `os.replace`. A failure or a kill at any moment leaves the original file as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import ndx  # noqa: F401 - registers the extension before any NWBHDF5IO is created
from .errors import NwbLfadsEmgError, WriteBackError
from .files import (
    PARTIAL_SUFFIX,
    PARTIAL_TAG,
    FileStamp,
    check_free_space,
    check_output_file,
    check_writable_file,
    copy_permissions,
    fsync_dir,
    is_no_space,
    refuse_if_changed,
    remove_stale_partials,
    signals_interrupt,
    target_lock,
    temp_beside,
)
from .store import OpenStores, StoredArray, dataset_options

log = logging.getLogger("nwb_lfads_emg")

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


def _compressed(data: np.ndarray | StoredArray, stores: OpenStores | None = None) -> Any:
    """Chunked, gzip-compressed dataset for large arrays (nwbinspector's best practice). An array in an
    estimate store (already laid out so) is copied by HDF5 chunk by chunk, never loaded."""
    from hdmf.backends.hdf5 import H5DataIO

    if isinstance(data, StoredArray):
        if stores is None:
            raise WriteBackError(f"{data.path}: an estimate on disk needs the write-back's open stores")
        return H5DataIO(stores.dataset(data), link_data=False)
    data = np.ascontiguousarray(data, dtype=np.float32)
    return H5DataIO(data, **dataset_options(data.shape))


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


def add_results(nwbfile: Any, results: SessionResults, link_source: bool = True,
                stores: OpenStores | None = None) -> None:
    """Add MuscleActivation per method, LatentFactors and provenance to an in-memory NWBFile (arrays in
    estimate stores are read through `stores`, which must stay open until the file is written)."""
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
            kwargs["uncertainty"] = _compressed(estimate.uncertainty, stores)
        if estimate.method == "AutoLFADS" and provenance is not None:
            kwargs["model_provenance"] = provenance
        series = MuscleActivation(
            name=estimate.method,
            description=METHOD_DESCRIPTIONS.get(estimate.method, f"Muscle activation estimated by {estimate.method}.")
            + f" Source: {results.source_series_path}. Columns: {', '.join(results.muscles)}.",
            data=_compressed(estimate.data, stores),
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
            kwargs["inferred_inputs"] = _compressed(results.inferred_inputs, stores)
        if source is not None:
            kwargs["source_series"] = source
        if provenance is not None:
            kwargs["model_provenance"] = provenance
        module.add(
            LatentFactors(
                name=FACTORS_NAME,
                description="Latent factors of the AutoLFADS model (row-normalised linear map of the generator state)"
                + (" and its inferred inputs (controller outputs)." if results.inferred_inputs is not None else "."),
                data=_compressed(results.factors, stores),
                unit="a.u.",
                **timing(),
                **kwargs,
            )
        )


def _is_ours(message: Any, names: list[str]) -> bool:
    """True when an nwbinspector message is about one of the objects this package wrote."""
    location = str(getattr(message, "location", "") or "").rstrip("/")
    module = f"/processing/{RESULTS_MODULE}"
    if any(location == f"{module}/{n}" or location.startswith(f"{module}/{n}/") for n in names):
        return True
    return location in ("", module) and str(getattr(message, "object_name", "")) in names


def validate_file(path: Path, ours: list[str] | None = None, display: str | Path | None = None,
                  input_path: Path | None = None) -> list[str]:
    """Raise WriteBackError unless pynwb (cached namespaces) and nwbinspector (CRITICAL+) accept the file.

    With `ours` (names of the objects just written) only issues in those objects, or schema errors the
    input did not already have, are errors; the input's own issues are returned as warnings.
    """
    import pynwb
    from nwbinspector import Importance, inspect_nwbfile, load_config

    shown = display or path
    warnings: list[str] = []
    errors = pynwb.validate(path=str(path), use_cached_namespaces=True)
    if isinstance(errors, tuple):  # older pynwb returned (errors, status)
        errors = errors[0]
    if errors and input_path is not None:
        before = pynwb.validate(path=str(input_path), use_cached_namespaces=True)
        before = {str(e) for e in (before[0] if isinstance(before, tuple) else before)}
        warnings += [f"NWB schema: {e}" for e in errors if str(e) in before]
        errors = [e for e in errors if str(e) not in before]
    if errors:
        raise WriteBackError(f"{shown}: written file fails NWB validation: {errors[0]}")
    # CRITICAL checks only (the others were filtered out below anyway), and no second schema validation:
    # the same guarantee, without the time (and the reads) of every best-practice check
    for message in inspect_nwbfile(str(path), config=load_config("dandi"), importance_threshold=Importance.CRITICAL,
                                   skip_validate=True):
        if message.importance.value < Importance.CRITICAL.value:
            continue
        where = message.location or message.object_name
        if ours is None or _is_ours(message, ours):
            raise WriteBackError(f"{shown}: {where}: nwbinspector {message.importance.name}: {message.message}")
        warnings.append(f"{where}: {message.check_function_name}: {message.message}")
    return warnings


def _warn_input_issues(display: Path, issues: list[str]) -> None:
    """Tell the user (one line) about the input's own issues that would block a DANDI upload."""
    if issues:
        shown = "; ".join(issues[:3]) + (f"; and {len(issues) - 3} more" if len(issues) > 3 else "")
        log.warning(f"{display}: the input file already had {len(issues)} issue(s) that would block a DANDI "
                    f"upload (nwbinspector CRITICAL; left as they were, the results were added): {shown}")


def refuse_existing_output(destination: str | Path, overwrite: bool) -> None:
    """Raise WriteBackError when an output file exists and replacing it was not asked for."""
    if os.path.lexists(destination) and not overwrite:
        raise WriteBackError(f"{destination}: output file exists; pass --overwrite (overwrite=True) to replace it")


def _partial_beside(target: Path) -> Path:
    """A new, private, clearly named temporary file beside the target (removed by the next run if left)."""
    fd, path = temp_beside(target, PARTIAL_TAG, PARTIAL_SUFFIX)
    os.close(fd)
    return path


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


def results_nbytes(results: SessionResults) -> int:
    """Uncompressed size of the arrays in `results` (an upper bound of what the write-back adds)."""
    arrays = [results.factors, results.inferred_inputs]
    for e in results.estimates:
        arrays += [e.data, e.uncertainty]
    return sum(int(np.prod(np.shape(a), dtype=np.int64)) * 4 for a in arrays if a is not None)


def _scrub(text: str, temp: Path, target: Path) -> str:
    """An error message that names the user's file, never the temporary copy."""
    return str(text).replace(str(temp), str(target)).replace(temp.name, target.name)


def _failed(exc: BaseException, temp: Path, target: Path, what: str) -> BaseException:
    """The one-line error for a failure while the temporary copy was being written or committed."""
    if isinstance(exc, NwbLfadsEmgError):
        return type(exc)(_scrub(str(exc), temp, target))
    space = is_no_space(exc)
    if space:
        return WriteBackError(f"{target}: {space} in {target.parent} while writing the results; {what}, and the "
                              "temporary copy was removed; free some space or write elsewhere with --out")
    return WriteBackError(f"{target}: writing results failed, {what}: {_scrub(str(exc), temp, target)}")


def _die_with_parent() -> None:
    """Linux: have the kernel kill this (child) process when its parent dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _write_isolated(work: Callable[[], None], temp: Path, target: Path, what: str) -> None:
    """Run the HDF5 write `work` in a forked child, so that a file HDF5 cannot write (a full disk, a
    size limit) ends in one error line here instead of HDF5's error cascade and a crash at exit."""
    if not hasattr(os, "fork"):
        work()
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, report one line on failure, never unwind through HDF5's close
        code = 0
        try:
            os.close(read_end)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            _die_with_parent()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            work()
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            code = 1
            with contextlib.suppress(BaseException):
                os.write(write_end, str(_failed(exc, temp, target, what)).encode()[:60000])
        os._exit(code)
    os.close(write_end)
    chunks = []
    try:
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop the writer before cleaning up
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_end)
    if os.waitstatus_to_exitcode(status) != 0:
        message = b"".join(chunks).decode(errors="replace").strip()
        if not message:
            code = os.waitstatus_to_exitcode(status)
            reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            space = is_no_space(OSError(errno.ENOSPC, "")) if _nearly_full(target.parent) else None
            message = f"{target}: writing results failed, {what}: " + (space or f"the writer ended with {reason}")
        raise WriteBackError(message)


def _nearly_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


def _commit(temp: Path, target: Path, like: Path | None, stamp: FileStamp | None, source: Path | None) -> Path:
    """Give the temporary file its permissions, flush it, and atomically rename it onto the target."""
    copy_permissions(temp, like)
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if source is not None:
        refuse_if_changed(source, stamp)
    os.replace(temp, target)
    fsync_dir(target.parent)
    return target


def write_into_copy(
    source: Path,
    results: SessionResults,
    destination: Path,
    overwrite: bool = False,
    validate: bool = True,
    before_commit: Callable[[Path], None] | None = None,
    expect: FileStamp | None = None,
) -> Path:
    """Copy a local NWB file, add the results, validate, and atomically replace `destination`.

    `destination` may be `source` itself (in-place annotation; a link is followed and kept). The
    target is locked for the call, a file changed since `expect` (its stamp when it was read) is never
    replaced, and the permissions of the replaced file are kept. `before_commit` is a hook called with
    the temporary path just before validation (used by tests to interrupt the writer).
    """
    from pynwb import NWBHDF5IO

    source, destination = Path(source), Path(destination)
    real_source = Path(os.path.realpath(source))
    in_place = Path(os.path.realpath(destination)) == real_source
    target = Path(os.path.realpath(destination))
    if in_place:
        check_writable_file(target, "--in-place")
    else:
        check_output_file(destination, "--out", overwrite)
    names = _names_to_write(results)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(target), signals_interrupt():
        remove_stale_partials(target)
        stamp = expect or FileStamp.of(real_source)
        refuse_if_changed(real_source, stamp)
        try:
            with NWBHDF5IO(str(real_source), "r") as io:
                existing = existing_results(io.read())
        except Exception as exc:  # noqa: BLE001 - h5py/pynwb errors become one line
            raise WriteBackError(f"{source}: cannot open for annotation: {exc}") from None
        clash = _check_overwrite(source, names, existing, overwrite)
        flag = "--in-place" if in_place else "--out"
        check_free_space(target.parent, stamp.size + results_nbytes(results), flag, "the annotated copy")
        like = real_source if in_place else (target if target.exists() else None)
        temp = _partial_beside(target)
        try:
            shutil.copyfile(real_source, temp)
            refuse_if_changed(real_source, stamp)

            def append() -> None:  # no `with`: a failed write must not be flushed again on the way out
                if clash:
                    _delete_groups(temp, clash)
                stores = OpenStores()
                io = NWBHDF5IO(str(temp), "a")
                nwbfile = io.read()
                add_results(nwbfile, results, stores=stores)
                io.write(nwbfile)
                io.close()
                stores.close()

            _write_isolated(append, temp, target, "original untouched")
            if before_commit is not None:
                before_commit(temp)
            issues = validate_file(temp, ours=names, display=target, input_path=real_source) if validate else []
            _commit(temp, target, like, stamp, real_source if in_place else None)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _failed(exc, temp, target, "original untouched") from None
    _warn_input_issues(target, issues)
    return target


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
    check_output_file(destination, "--out", overwrite)
    target = Path(os.path.realpath(destination))
    names = _names_to_write(results)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(target), signals_interrupt():
        remove_stale_partials(target)
        check_free_space(target.parent, results_nbytes(results), "--out", "the new file")
        like = target if target.exists() else None
        temp = _partial_beside(target)
        try:
            nwbfile = _copy_session(src_nwbfile, source_location)

            def create() -> None:  # the results are added in the writer (child) process: stores open there only
                stores = OpenStores()
                add_results(nwbfile, results, link_source=False, stores=stores)
                io = NWBHDF5IO(str(temp), "w")
                io.write(nwbfile)
                io.close()
                stores.close()

            _write_isolated(create, temp, target, "nothing was written")
            issues = validate_file(temp, ours=names, display=target) if validate else []
            _commit(temp, target, like, None, None)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _failed(exc, temp, target, "nothing was written") from None
    _warn_input_issues(target, issues)
    return target
