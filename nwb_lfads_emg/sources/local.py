"""Open local NWB files with checks that turn HDF5 failures into one-line errors."""

from __future__ import annotations

from pathlib import Path

import h5py

from ..errors import SourceError, describe, one_line

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Files at the root of a Zarr store (v2 group/attributes, v3 metadata).
ZARR_MARKERS = (".zgroup", ".zattrs", "zarr.json")


def zarr_refusal(evidence: str) -> str:
    """The one-line reason Zarr-backed NWB is refused (hdmf-zarr is not a dependency)."""
    return (f"NWB stored as Zarr ({evidence}); nwb-lfads-emg reads HDF5 NWB only (reading Zarr would need "
            "hdmf-zarr, which it does not depend on); export the file to HDF5 with hdmf-zarr's NWBZarrIO.export")


def looks_like_zarr_url(url: str) -> bool:
    """True for a URL (or DANDI asset path) naming a Zarr store: a .zarr path or a store's metadata file."""
    import re

    base = url.split("?", 1)[0]
    return bool(re.search(r"\.zarr(/|$)|/(\.zgroup|\.zattrs|zarr\.json)$|dandiarchive[^/]*/zarr/", base))


def open_local_hdf5(path: str | Path) -> h5py.File:
    """Open a local file read-only as HDF5, refusing missing, non-HDF5 and truncated files clearly."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(describe(p, None, "no such file"))
    if p.is_dir():
        marker = next((m for m in ZARR_MARKERS if (p / m).exists()), None)
        if marker is not None:
            raise SourceError(describe(p, None, zarr_refusal(f"found {marker}")))
        raise SourceError(describe(p, None, "is a directory, not an NWB file"))
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head != _HDF5_SIGNATURE and not h5py.is_hdf5(str(p)):
        raise SourceError(describe(p, None, "not an HDF5/NWB file (no HDF5 signature)"))
    try:
        return h5py.File(str(p), "r")
    except OSError as exc:
        raise SourceError(describe(p, None, hdf5_problem(exc))) from None


def hdf5_problem(exc: BaseException) -> str:
    """A short description of why h5py could not open a file."""
    text = str(exc)
    if "truncated" in text or "eof" in text.lower():
        return "truncated HDF5 file (it ends before the data it declares; an incomplete download?)"
    if "signature" in text:
        return "not an HDF5/NWB file (no HDF5 signature)"
    return f"cannot be read as HDF5 ({one_line(exc)})"
