"""Fetch the HDF5 chunks a window needs with a few concurrent HTTP range requests, into remfile's cache.

h5py reads a streamed dataset one chunk at a time through remfile, so a window costs one round
trip after another. Before such a read, :class:`Prefetcher` asks HDF5 where the covering chunks
lie (``get_chunk_info_by_coord``; the byte span for contiguous datasets), turns them into
remfile's cache blocks (keyed ``url|block size|block index``, the same blocks its own loader
fills), coalesces neighbouring blocks into ranges, fetches the missing ranges with a small thread
pool (one :class:`RetryingSession` per thread, the same timeout and retries), and stores them in
remfile's memory cache and disk cache, so h5py's reads that follow are served locally.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h5py

from .remote import RetryingSession, StreamFile

#: Default number of concurrent range requests.
DEFAULT_WORKERS = 4
#: Smallest range one request asks for when a window is split between the workers.
DEFAULT_MIN_PART_BYTES = 1024 * 1024
#: Largest range one request asks for (bounds what one retry has to fetch again).
DEFAULT_MAX_PART_BYTES = 16 * 1024 * 1024
#: Windows whose covering chunks exceed this many bytes are read the old way (request by request),
#: so a whole-recording read never pins a second copy of the recording in memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def chunk_byte_ranges(dataset: Any, i0: int, i1: int, columns: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """(file offset, size) of the stored HDF5 chunks of ``dataset`` that rows [i0, i1) (and ``columns``) touch.

    Contiguous datasets give the byte span of those rows; compact, virtual, external or
    non-HDF5 datasets give [] (nothing to prefetch).
    """
    if not isinstance(dataset, h5py.Dataset) or i1 <= i0 or dataset.ndim == 0:
        return []
    dcpl = dataset.id.get_create_plist()
    layout = dcpl.get_layout()
    if dcpl.get_external_count() > 0:
        return []
    shape = dataset.shape
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dataset.id.get_offset()
        if offset is None:  # never written: HDF5 answers with fill values, no bytes to fetch
            return []
        row_bytes = dataset.dtype.itemsize * math.prod(shape[1:])
        return [(offset + i0 * row_bytes, (i1 - i0) * row_bytes)]
    if layout != h5py.h5d.CHUNKED:
        return []
    chunks = dataset.chunks
    rows = range(i0 // chunks[0], (i1 - 1) // chunks[0] + 1)
    if dataset.ndim == 1:
        cols: Iterable[int] = [0]
    elif columns is None or dataset.ndim > 2:
        cols = range(math.ceil(shape[1] / chunks[1]))
    else:
        cols = sorted({c // chunks[1] for c in columns})
    tail = (0,) * (dataset.ndim - 2)
    out = []
    for r in rows:
        for c in cols:
            coord = (r * chunks[0],) if dataset.ndim == 1 else (r * chunks[0], c * chunks[1], *tail)
            info = dataset.id.get_chunk_info_by_coord(coord)
            if info.byte_offset is not None and info.size > 0:  # unallocated chunks hold fill values
                out.append((int(info.byte_offset), int(info.size)))
    return out


def block_runs(blocks: Iterable[int], part_blocks: int) -> list[tuple[int, int]]:
    """Group block indices into (first, count) runs of consecutive blocks, each at most ``part_blocks`` long."""
    runs: list[tuple[int, int]] = []
    for b in sorted(set(blocks)):
        if runs and runs[-1][0] + runs[-1][1] == b and runs[-1][1] < part_blocks:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs


class PrefetchError(OSError):
    """A range request of a prefetch failed after its retries (the reason is also the session's last_error)."""


class Prefetcher:
    """Concurrent, ordered range fetching of the cache blocks under HDF5 chunks, for one StreamFile.

    ``prefetch`` returns when every request has landed, before h5py reads: waiting inside h5py's
    read would hold h5py's global lock, which a garbage collection in a pool thread may need (a
    deadlock). Fetched blocks stay in remfile's memory cache, outside remfile's own eviction list, until the
    next prefetch no longer needs them (or ``close``): the read of a window cannot evict them
    halfway. Counters: ``requests``, ``bytes_fetched``.
    """

    def __init__(self, rf: StreamFile, url: str, session: RetryingSession, *, workers: int = DEFAULT_WORKERS,
                 max_bytes: int = DEFAULT_MAX_BYTES, min_part_bytes: int = DEFAULT_MIN_PART_BYTES) -> None:
        self.rf = rf
        self.url = url
        self.session = session
        self.workers = max(1, int(workers))
        self.max_bytes = int(max_bytes)
        self.block = int(rf._min_chunk_size)
        self.max_part_blocks = max(1, DEFAULT_MAX_PART_BYTES // self.block)
        self.min_part_blocks = min(self.max_part_blocks, max(1, int(min_part_bytes) // self.block))
        self._disk = rf._disk_cache
        self._pinned: set[int] = set()
        self._local = threading.local()
        self._sessions: list[RetryingSession] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.requests = 0
        self.bytes_fetched = 0

    def _key(self, index: int) -> str:
        return f"{self.url}|{self.block}|{index}"  # remfile's disk-cache key (remfile.RemFile._key_for_disk_cache)

    def prefetch(self, datasets: Sequence[Any], i0: int, i1: int, columns: Sequence[int] | None = None) -> int:
        """Fetch the chunks of rows [i0, i1) of every dataset into the cache; returns the bytes fetched."""
        ranges = [r for d in datasets for r in chunk_byte_ranges(d, i0, i1, columns)]
        return self.prefetch_ranges(ranges)

    def prefetch_ranges(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Fetch the file bytes of ``ranges`` ((offset, size) pairs) into remfile's caches, concurrently."""
        needed: set[int] = set()
        for offset, size in ranges:
            end = min(offset + size, self.rf.length)
            if end > offset:
                needed.update(range(offset // self.block, (end - 1) // self.block + 1))
        if len(needed) * self.block > self.max_bytes:
            return 0
        chunks = self.rf._chunks
        missing = []
        with self._lock:
            for b in self._pinned - needed:  # release what the previous window pinned and this one does not need
                chunks.pop(b, None)
            self._pinned &= needed
            for b in sorted(needed):
                if b in chunks:
                    continue
                cached = self._disk.get(self._key(b)) if self._disk is not None else None
                if cached:
                    chunks[b] = cached
                    self._pinned.add(b)
                else:
                    missing.append(b)
        if not missing:
            return 0
        per_part = math.ceil(len(missing) / self.workers)  # one request per worker, within the part limits
        runs = block_runs(missing, min(self.max_part_blocks, max(self.min_part_blocks, per_part)))
        if len(runs) == 1:
            return self._fetch(runs[0])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="nwb-prefetch")
        futures = [self._pool.submit(self._fetch, run) for run in runs]  # in file order, served first come first
        for future in futures:  # wait for all before raising the first error: no request outlives the call
            future.exception()
        return sum(future.result() for future in futures)

    def _thread_session(self) -> RetryingSession:
        s = getattr(self._local, "session", None)
        if s is None:
            main = self.session
            s = RetryingSession(timeout=main.timeout, retries=main.retries, backoff=main.backoff)
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def _fail(self, problem: str) -> PrefetchError:
        self.session.last_error = problem  # what the reader's one-line error reports
        return PrefetchError(problem)

    def _fetch(self, run: tuple[int, int]) -> int:
        first, count = run
        start = first * self.block
        end = min((first + count) * self.block, self.rf.length) - 1
        session = self._thread_session()
        response = session.get(self.url, headers={"Range": f"bytes={start}-{end}"})
        with self._lock:
            self.requests += 1
        if response.status_code == 408 and session.last_error:
            raise self._fail(session.last_error)
        if response.status_code != 206:
            raise self._fail(f"HTTP {response.status_code} {response.reason} for bytes {start}-{end}")
        data = memoryview(response.content)  # blocks are views of it: StreamFile.readinto copies once
        if len(data) != end - start + 1:
            raise self._fail(f"the server sent {len(data)} bytes for the {end - start + 1} of range {start}-{end}")
        blocks = [data[k * self.block:(k + 1) * self.block] for k in range(count)]
        if self._disk is not None:
            for k, piece in enumerate(blocks):
                self._disk.set(self._key(first + k), piece)
        with self._lock:
            for k, piece in enumerate(blocks):
                self.rf._chunks[first + k] = piece
                self._pinned.add(first + k)
            self.bytes_fetched += len(data)
        return len(data)

    def close(self) -> None:
        """Stop the pool, close the per-thread sessions and drop the pinned blocks."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for s in self._sessions:
            s.close()
        self._sessions.clear()
        with self._lock:
            for b in self._pinned:
                self.rf._chunks.pop(b, None)
            self._pinned.clear()
