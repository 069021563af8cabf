"""`open_source`: one entry point for local paths, DANDI references and plain https URLs."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import h5py

from ..errors import NwbLfadsEmgError, SourceError, describe, one_line
from .local import hdf5_problem, looks_like_zarr_url, open_local_hdf5, zarr_refusal

if TYPE_CHECKING:
    from .prefetch import ReadWatcher


class OpenedSource:
    """An open NWB file (read lazily); use as a context manager or call ``close()``."""

    def __init__(
        self,
        nwbfile: Any,
        location: str,
        *,
        io: Any,
        h5file: h5py.File,
        dandi_url: str | None = None,
        remote_file: Any = None,
        session: Any = None,
        cache_dir: Path | None = None,
        dandi_asset: Any = None,
        prefetcher: Any = None,
    ) -> None:
        self.nwbfile = nwbfile
        self.location = location
        self.dandi_url = dandi_url
        self.dandi_asset = dandi_asset
        self.cache_dir = cache_dir
        self._io = io
        self._h5file = h5file
        self._remote_file = remote_file
        self._session = session
        self._prefetcher = prefetcher

    @property
    def is_remote(self) -> bool:
        """True when the bytes are streamed over HTTP."""
        return self._remote_file is not None

    @property
    def h5file(self) -> h5py.File:
        """The underlying h5py file."""
        return self._h5file

    def stream_problem(self) -> str | None:
        """The last network failure seen while streaming, if any."""
        return getattr(self._session, "last_error", None)

    def prefetch_rows(self, datasets: Sequence[Any], i0: int, i1: int, columns: Sequence[int] | None = None) -> None:
        """Streamed files: fetch the HDF5 chunks under rows [i0, i1) of ``datasets`` concurrently before h5py reads them."""
        if self._prefetcher is not None:
            self._prefetcher.prefetch(datasets, i0, i1, columns)

    def learn_rows(self, datasets: Sequence[Any]) -> None:
        """Streamed files: read the HDF5 chunk index of ``datasets`` now, in one pass, so that a window's range request
        goes out without waiting for chunk look-ups (one B-tree walk each, and round trips on a fresh open)."""
        if self._prefetcher is not None:
            self._prefetcher.learn(datasets)

    def read_rows(self, datasets: Sequence[Any], i0: int, i1: int, columns: Sequence[int] | None = None,
                  watcher: ReadWatcher | None = None) -> list[Any] | None:
        """Streamed files: rows [i0, i1) of each dataset (``columns`` of a 2-D one) fetched concurrently and
        decoded without h5py's read (``watcher`` follows it as it arrives); None when that does not apply (local
        file, other filters...)."""
        if self._prefetcher is None:
            return None
        return self._prefetcher.read(datasets, i0, i1, columns, watcher)

    def close(self) -> None:
        """Close the NWB reader, the HDF5 file and any network session."""
        for closer in (
            getattr(self._io, "close", None),
            getattr(self._h5file, "close", None),
            getattr(self._prefetcher, "close", None),
            getattr(self._session, "close", None),
        ):
            if closer is None:
                continue
            try:
                closer()
            except Exception:  # closing must not hide the error that brought us here
                pass

    def __enter__(self) -> OpenedSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenedSource({self.location!r}, dandi_url={self.dandi_url!r})"


def _read_nwb(h5file: h5py.File, location: str) -> tuple[Any, Any]:
    from pynwb import NWBHDF5IO

    if "nwb_version" not in h5file.attrs and "general" not in h5file:
        raise SourceError(describe(location, None, "an HDF5 file but not NWB (no nwb_version attribute)"))
    io = NWBHDF5IO(file=h5file, mode="r", load_namespaces=True)
    try:
        return io, io.read()
    except NwbLfadsEmgError:
        raise
    except Exception as exc:
        try:
            io.close()
        except Exception:
            pass
        text = one_line(exc, 240)
        if isinstance(exc, OSError):
            text = hdf5_problem(exc)
        raise SourceError(describe(location, None, f"pynwb cannot read this NWB file ({text})")) from None


def open_source(
    source: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | bool | None = None,
    *,
    dandi_instance: str | None = None,
    timeout: float = 20.0,
    retries: int = 3,
    prefetch_workers: int | None = None,
) -> OpenedSource:
    """Open a local NWB path, a DANDI reference or an https URL of an NWB file, lazily.

    Remote bytes are read with HTTP range requests (remfile) through an on-disk cache
    (``cache_dir``; None -> default directory, False -> none). ``dandi_instance`` (or
    $DANDI_INSTANCE) picks the DANDI instance by name or API URL. ``prefetch_workers``: concurrent
    range requests that fetch a window's chunks ahead of h5py (None -> by where the server is: 2 on this machine,
    4 elsewhere; 0 -> none).
    """
    from .dandi import looks_like_dandi, resolve_asset
    text = os.fspath(source)
    if looks_like_dandi(text):
        asset = resolve_asset(text, instance=dandi_instance)
        if looks_like_zarr_url(asset.path) or looks_like_zarr_url(asset.content_url):
            raise SourceError(describe(text, asset.path, zarr_refusal("a Zarr asset")))
        return _open_url(asset.content_url, cache_dir, timeout, retries, dandi_asset=asset,
                         label=f"{text} ({asset.path})", prefetch_workers=prefetch_workers)
    if re.match(r"^https?://", text):
        if looks_like_zarr_url(text):
            raise SourceError(describe(text, None, zarr_refusal("a .zarr URL")))
        return _open_url(text, cache_dir, timeout, retries, label=text, prefetch_workers=prefetch_workers)
    h5file = open_local_hdf5(text)
    try:
        io, nwbfile = _read_nwb(h5file, text)
    except BaseException:
        h5file.close()
        raise
    return OpenedSource(nwbfile, text, io=io, h5file=h5file)


def _open_url(url: str, cache_dir: Any, timeout: float, retries: int, *, label: str,
              dandi_asset: Any = None, prefetch_workers: int | None = None) -> OpenedSource:
    from .prefetch import Prefetcher
    from .remote import open_remote_file, resolve_cache_dir

    cache = resolve_cache_dir(cache_dir)
    rf, session = open_remote_file(url, cache, timeout=timeout, retries=retries)
    try:
        h5file = h5py.File(rf, "r")
    except OSError as exc:
        session.close()
        problem = session.last_error or hdf5_problem(exc)
        raise SourceError(describe(label, None, problem)) from None
    except Exception as exc:
        session.close()
        problem = session.last_error or one_line(exc)
        raise SourceError(describe(label, None, f"cannot stream the file ({problem})")) from None
    try:
        io, nwbfile = _read_nwb(h5file, label)
    except BaseException:
        h5file.close()
        session.close()
        raise
    workers = None if prefetch_workers is None else int(prefetch_workers)
    prefetcher = Prefetcher(rf, url, session, workers=workers) if workers is None or workers > 0 else None
    if prefetcher is not None:
        prefetcher.warm()
    return OpenedSource(
        nwbfile,
        url,
        io=io,
        h5file=h5file,
        dandi_url=dandi_asset.dandi_url if dandi_asset is not None else None,
        remote_file=rf,
        session=session,
        cache_dir=cache,
        dandi_asset=dandi_asset,
        prefetcher=prefetcher,
    )
