"""Fetch the HDF5 chunks a window needs with a few concurrent HTTP range requests, into remfile's cache.

h5py reads a streamed dataset one chunk at a time through remfile, so a window costs one round
trip after another. Before such a read, :class:`Prefetcher` asks HDF5 where the covering chunks
lie (``get_chunk_info_by_coord``; the byte span for contiguous datasets), turns them into
remfile's cache blocks (keyed ``url|block size|block index``, the same blocks its own loader
fills), coalesces neighbouring blocks into ranges, fetches the missing ranges with a small thread
pool (one :class:`RetryingSession` per thread, the same timeout and retries), and stores them in
remfile's memory cache and disk cache, so h5py's reads that follow are served locally.

Datasets stored without filters (uncompressed chunks, or contiguous) or with only deflate (gzip) and
shuffle (NeuroConv's default) skip h5py's read altogether:
:meth:`Prefetcher.read` looks their chunks up (memoised per dataset for the reader's lifetime; an
``EMGReader`` reads its series' whole chunk index once when built, :meth:`Prefetcher.learn`, as HDF5
walks the index for every single look-up), starts the fetches while any look-ups go on (a look-up may
itself wait for a B-tree node), and
receives whole uncompressed chunks of full rows straight into the output array; partial,
column-tiled or compressed chunks land in their own buffer (compressed ones are inflated and
unshuffled in the fetch threads, honouring each chunk's filter mask) and are copied once their
request is done. Window-edge chunks are kept (decoded) for the next window. A :class:`ReadWatcher` given
to the read follows it (the reader checks each received piece for NaN/Inf in the fetch thread and builds
its DataArray while the bytes arrive). The block path above remains for other filters (fletcher32, blosc,
lzf, szip, scale-offset, n-bit...).
"""

from __future__ import annotations

import bisect
import math
import threading
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import h5py
import numpy as np

from .remote import RetryingSession, StreamFile

#: Default number of concurrent range requests to a server on this machine (2 measured best on loopback on a loaded
#: 2-core box, where the server shares the cores) ...
DEFAULT_WORKERS = 2
#: ... and to a server elsewhere, which caps each connection: at 100 MB/s per connection a 60 s window took 0.52x the
#: raw GET's time over 2 workers, 0.28x over 4 (`open_source(..., prefetch_workers=)` sets either).
FAR_WORKERS = 4
#: Smallest range one request asks for when a window is split between the workers.
DEFAULT_MIN_PART_BYTES = 1024 * 1024
#: Largest range one request asks for (bounds what one retry has to fetch again).
DEFAULT_MAX_PART_BYTES = 16 * 1024 * 1024
#: Windows whose covering chunks exceed this many bytes are read the old way (request by request),
#: so a whole-recording read never pins a second copy of the recording in memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Rows of a contiguous dataset handled as one piece (so its copy overlaps the later pieces' transfer).
CONTIGUOUS_PIECE_BYTES = 1024 * 1024
#: A window of unfiltered chunks from a server on this machine goes out as one range request per this many bytes (at
#: most ``workers`` at once): on loopback one request matches a raw GET, two concurrent connections cost ~+40%, as the
#: server shares the client's cores (bench_streaming.py).
SPAN_BYTES = 16 * 1024 * 1024
#: ... and from a server elsewhere, per this many: so a window of more goes out as ``workers`` concurrent requests, as a
#: far server caps each connection (S3: ~50-100 MB/s). At 100 MB/s per connection a 60 s window (15 MB) took 1.00x
#: the raw GET's time in one request, 0.52x split over 2 workers, 0.28x over 4 (bench_streaming.py --link-mbps).
FAR_SPAN_BYTES = 1024 * 1024
#: Bytes asked for beyond a span's chunks, for the B-tree nodes HDF5 wrote between them (~2.6 kB each, one per
#: 32-64 chunks): this per 32 chunks of the span, at most ``SPAN_SLACK_BYTES`` (unused slack is read and dropped).
SPAN_SLACK_PER_32 = 8 * 1024
SPAN_SLACK_BYTES = 64 * 1024
#: Once a span's range is known, the reader waits up to this long for its thread to send the request: else
#: the thread waits for the interpreter lock while the reader's look-ups run (up to 5 ms, sys.getswitchinterval).
HANDOVER_S = 0.02
#: A chunk placed between two located ones (a fresh window) is asked for up to this many bytes before (and after) where
#: it would lie if the B-tree nodes between them were spread evenly.
GUESS_LEAD_BYTES = 16 * 1024
#: Largest hole between two chunks (e.g. a B-tree node) still fetched within one request.
MAX_GAP_BYTES = 64 * 1024
#: Window-edge chunks (partly read) kept for the next window, which usually starts inside the last one.
EDGE_CHUNKS = 8
#: ... and at most this many bytes of them.
EDGE_BYTES = 32 * 1024 * 1024
#: Chunk look-ups remembered per dataset (beyond this the memo starts again: ~100 bytes each).
MAX_INDEX_ENTRIES = 200_000
#: A watcher of a read hears of the bytes received straight into the output every this many bytes, so that its
#: check of them overlaps the rest of the transfer rather than following it.
LANDED_STEP_BYTES = 1024 * 1024
#: Filters decoded here (in the fetch threads); any other filter in a pipeline leaves the dataset to h5py.
DEFLATE, SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE


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


def _unshuffle(data: Any, itemsize: int, into: memoryview | None = None) -> memoryview:
    """HDF5's shuffle undone: byte plane k back into byte k of every element (a tail of < itemsize bytes stays)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    n = raw.size // itemsize
    out = np.empty(raw.size, dtype=np.uint8) if into is None else np.frombuffer(into, dtype=np.uint8)
    if out.size != raw.size:
        raise ValueError(f"a compressed chunk decodes to {raw.size} bytes, not the chunk's {out.size}")
    planes, elements = raw[:n * itemsize].reshape(itemsize, n), out[:n * itemsize].reshape(n, itemsize)
    for k in range(itemsize):  # one contiguous plane at a time: ~5x faster than copying the transposed view
        elements[:, k] = planes[k]
    out[n * itemsize:] = raw[n * itemsize:]
    return memoryview(out)


def decode_chunk(data: memoryview, undo: Sequence[int], itemsize: int, expect: int,
                 into: memoryview | None = None) -> memoryview:
    """Undo a chunk's filters (``undo``: filter codes in decoding order, deflate and shuffle only) and check
    its decoded size; with ``into`` (``expect`` bytes), the decoded chunk is written there."""
    out: Any = data
    for k, code in enumerate(undo):
        last = into if k == len(undo) - 1 else None
        if code == DEFLATE:
            out = zlib.decompress(out)  # releases the GIL: decoding overlaps the other transfers
        elif itemsize > 1:
            out = _unshuffle(out, itemsize, last)
            if last is not None:
                return last
    view = memoryview(out).cast("B")
    if view.nbytes != expect:
        raise ValueError(f"a compressed chunk decodes to {view.nbytes} bytes, not the chunk's {expect}")
    if into is not None:
        into[:] = view
        return into
    return view


class _Layout:
    """Where rows of one dataset lie in the file: chunk shape, its filters (deflate/shuffle) and memoised chunk look-ups.

    A contiguous dataset is handled as pseudo-chunks of whole rows (``CONTIGUOUS_PIECE_BYTES`` each).
    """

    def __init__(self, dataset: Any, contiguous_offset: int | None, filters: Sequence[int] = ()) -> None:
        self.dataset = dataset
        self.name = str(dataset.name)  # (h5py asks HDF5 each time)
        self.filters = tuple(filters)  # pipeline order (as written); decoding runs it backwards
        self._undo: dict[int, tuple[int, ...]] = {}
        self.dtype = dataset.dtype
        self.shape = tuple(dataset.shape)
        self.width = self.shape[1] if len(self.shape) == 2 else 1
        row_bytes = self.dtype.itemsize * self.width
        self.contiguous_offset = contiguous_offset
        if contiguous_offset is not None:
            self.chunks = (max(1, CONTIGUOUS_PIECE_BYTES // row_bytes), *self.shape[1:])
        else:
            self.chunks = tuple(dataset.chunks)
        self.chunk_bytes = math.prod(self.chunks) * self.dtype.itemsize
        self.full_rows = len(self.shape) == 1 or self.chunks[1] == self.shape[1]  # a chunk's rows are whole rows
        self.index: dict[tuple[int, int], tuple[int, int, tuple[int, ...]] | None] = {}
        self.anchors: list[int] = []  # row chunks of column chunk 0 located so far (sorted): where guesses start from
        self.indexed = False  # the whole index read (``index_all``)

    def undo(self, mask: int) -> tuple[int, ...]:
        """Filters to undo, in decoding order, for a chunk with this filter mask (bit i set: filter i was skipped)."""
        found = self._undo.get(mask)
        if found is None:
            found = self._undo[mask] = tuple(f for i, f in reversed(list(enumerate(self.filters))) if not mask >> i & 1)
        return found

    def column_chunks(self, columns: Sequence[int] | None) -> list[int]:
        """Column-chunk numbers holding ``columns`` (all when None)."""
        if len(self.shape) == 1:
            return [0]
        if columns is None:
            return list(range(math.ceil(self.shape[1] / self.chunks[1])))
        return sorted({c // self.chunks[1] for c in columns})

    def index_all(self) -> None:
        """Every written chunk's look-up, memoised in one pass over HDF5's chunk index (``chunk_iter``)."""
        rows, cols = self.chunks[0], self.chunks[1] if len(self.chunks) == 2 else 1
        found: list[tuple[tuple[int, int], tuple[int, int, tuple[int, ...]] | None]] = []

        def visit(info: Any) -> None:
            where = None
            if info.byte_offset is not None and info.size > 0:
                where = (int(info.byte_offset), int(info.size), self.undo(int(info.filter_mask or 0)))
                if not where[2] and where[1] != self.chunk_bytes:
                    where = None  # not the plain layout this reader decodes: let h5py read it
            at = info.chunk_offset
            found.append(((int(at[0]) // rows, int(at[1]) // cols if len(at) == 2 else 0), where))

        self.dataset.id.chunk_iter(visit)
        self.index.clear()
        self.index.update(found)
        self.anchors = sorted(key[0] for key, where in found if where is not None and key[1] == 0)
        self.indexed = True

    def locate(self, r: int, c: int) -> tuple[int, int, tuple[int, ...]] | None:
        """(file offset, stored size, filters to undo) of chunk (row chunk r, column chunk c); None when never written."""
        found = self.index.get((r, c), False)
        if found is not False:
            return found
        rows = self.chunks[0]
        coord = (r * rows,) if len(self.shape) == 1 else (r * rows, c * self.chunks[1])
        info = self.dataset.id.get_chunk_info_by_coord(coord)
        found = None
        if info.byte_offset is not None and info.size > 0:
            found = (int(info.byte_offset), int(info.size), self.undo(int(info.filter_mask or 0)))
        if found is not None and not found[2] and found[1] != self.chunk_bytes:
            found = None  # not the plain layout this reader decodes: let h5py read it
        if len(self.index) >= MAX_INDEX_ENTRIES:
            self.index.clear()
            self.anchors.clear()
            self.indexed = False
        self.index[(r, c)] = found
        if found is not None and c == 0:
            bisect.insort(self.anchors, r)
        return found


def _direct_layout(dataset: Any) -> _Layout | None:
    """A :class:`_Layout` when ``dataset`` is 1-D/2-D plain numbers stored unfiltered (chunked or contiguous) or
    chunked with only deflate and shuffle filters, else None (fletcher32, blosc, lzf, szip, scale-offset...: h5py reads it)."""
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim not in (1, 2) or dataset.dtype.kind not in "iuf":
        return None
    if dataset.dtype.fields is not None or dataset.dtype.subdtype is not None:
        return None
    dcpl = dataset.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        return None
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dataset.id.get_offset()
        return None if offset is None else _Layout(dataset, int(offset))
    if layout != h5py.h5d.CHUNKED:
        return None
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    if any(f not in (DEFLATE, SHUFFLE) for f in filters):
        return None
    return _Layout(dataset, None, filters)


class _Piece:
    """One stored chunk of one requested dataset: its bytes, where they are received, where its rows go."""

    __slots__ = ("item", "offset", "size", "r0", "r1", "out0", "col_chunk", "sink", "keep", "undo", "itemsize",
                 "expect", "dest", "mark", "at")

    def __init__(self, item: int, offset: int, size: int, r0: int, r1: int, out0: int, col_chunk: int) -> None:
        self.item, self.offset, self.size, self.r0, self.r1 = item, offset, size, r0, r1
        self.out0, self.col_chunk = out0, col_chunk
        self.sink: memoryview = memoryview(b"")
        self.keep = False
        self.undo: tuple[int, ...] = ()  # filters the fetch thread undoes (the sink then holds the decoded chunk)
        self.itemsize = self.expect = 0
        self.dest: memoryview | None = None  # where the fetch thread decodes a whole chunk of full rows (no copy after)
        self.mark: str | None = None  # disk-cache key saying "this chunk (a guessable one) is in the disk cache"
        self.at = -1  # where ``sink`` (or ``dest``) starts in the output (bytes), -1 when it is a buffer of its own


class _Abandoned(Exception):
    """The reader gave up on a span (an error, or an unwritten chunk): its request stops."""


class _Span:
    """One range request's chunks, published one by one by the look-ups and taken in order by the receiving thread."""

    def __init__(self, start: int = -1, length: int = 0, out: memoryview | None = None,
                 watcher: ReadWatcher | None = None) -> None:
        self.start, self.length = start, length  # start -1: not placed yet (its first chunk not located)
        self.out = out  # the output (bytes) that pieces with ``at`` >= 0 are received into
        self.watcher = watcher  # told of those bytes as they land
        self.pieces: list[_Piece] = []
        self.taken = 0  # chunks received; the later ones lay elsewhere than guessed (fetched afterwards)
        self.received = 0
        self._done = self._abandoned = False
        self._cond = threading.Condition()
        self.asking = threading.Event()  # set by the fetch thread as it sends the request

    @property
    def count(self) -> int:
        return len(self.pieces)

    def place(self, start: int, length: int) -> None:
        with self._cond:
            self.start, self.length = start, length
            self._cond.notify_all()

    def wait_placed(self) -> bool:
        """Wait until the span's range is known (True) or it ends unplaced: nothing to fetch (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self.start >= 0 or self._done)
            if self._abandoned:
                raise _Abandoned
            return self.start >= 0

    def add(self, piece: _Piece) -> None:
        with self._cond:
            self.pieces.append(piece)
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def abandon(self) -> None:
        with self._cond:
            if not self._done:
                self._abandoned = True
            self._done = True
            self._cond.notify_all()

    def wait(self, k: int) -> _Piece | None:
        """The span's k-th chunk once it is located; None after the last one."""
        with self._cond:
            self._cond.wait_for(lambda: k < len(self.pieces) or self._done)
            if self._abandoned:
                raise _Abandoned
            return self.pieces[k] if k < len(self.pieces) else None

    def run(self, k: int, end: int) -> tuple[int, memoryview]:
        """(j, sink): chunks k..j-1, located so far, that lie back to back both in the file (within ``end``) and in the
        output, and the one view of the output that receives them all (one ``readinto`` rather than one per chunk)."""
        first = self.pieces[k]
        j, offset, at = k + 1, first.offset + first.size, first.at + first.size
        if first.at >= 0 and self.out is not None:
            with self._cond:
                pieces = self.pieces[k + 1:]
            for piece in pieces:
                if piece.offset != offset or piece.at != at or offset + piece.size > end:
                    break
                j, offset, at = j + 1, offset + piece.size, at + piece.size
        return j, first.sink if j == k + 1 else self.out[first.at:at]


def _slack(n_chunks: int) -> int:
    """Bytes asked for beyond a span of ``n_chunks`` chunks (room for the B-tree nodes among them)."""
    return min(SPAN_SLACK_BYTES, SPAN_SLACK_PER_32 * (n_chunks // 32 + 1))


def _between(layout: _Layout, r: int, k: int) -> tuple[int, int, int] | None:
    """Where chunk ``r`` (rows[k]) should start, from the located chunks around it (see ``Prefetcher._guess_start``)."""
    anchors = layout.anchors
    j = bisect.bisect_left(anchors, r)
    if j == 0:
        return None
    lo = anchors[j - 1]
    a = layout.index[(lo, 0)]
    assert a is not None
    if lo == r - 1:
        return (k, a[0] + a[1], 0)
    if j == len(anchors):
        return None
    hi = anchors[j]
    b = layout.index[(hi, 0)]
    assert b is not None
    low = a[0] + (r - lo) * layout.chunk_bytes  # no earlier (chunks in write order) ...
    high = b[0] - (hi - r) * layout.chunk_bytes  # ... and no later
    if high < low:
        return None  # not in write order: no guess
    expected = low + (high - low) * (r - lo) // (hi - lo)
    start = max(low, expected - GUESS_LEAD_BYTES)
    return (k, start, min(high, expected + GUESS_LEAD_BYTES) - start)


def _settle(futures: Sequence[Future]) -> None:
    """Wait for every future, ignoring their errors (the caller raises its own)."""
    for future in futures:
        future.exception()


class ReadWatcher(Protocol):
    """Told of a read's progress (:meth:`Prefetcher.read`), to do its own work on the output while the bytes arrive."""

    def begin(self, outs: list[np.ndarray]) -> None:
        """The output arrays, before any byte is received into them."""

    def landed(self, item: int, start: int, stop: int) -> None:
        """Bytes [start, stop) of ``outs[item]`` (flat, C order) hold their final values (called by a fetch thread)."""

    def meanwhile(self) -> None:
        """Every request is under way: called once, in the reading thread, before it waits for them."""


class PrefetchError(OSError):
    """A range request of a prefetch failed after its retries (the reason is also the session's last_error)."""


class Prefetcher:
    """Concurrent, ordered range fetching of HDF5 chunks for one StreamFile: ``read`` (unfiltered or
    deflate/shuffle data, decoded here) and ``prefetch`` (remfile's cache blocks under the chunks, for h5py to decompress).

    ``read`` waits for its requests outside h5py; ``prefetch`` returns when every request has landed, before h5py reads: waiting inside h5py's
    read would hold h5py's global lock, which a garbage collection in a pool thread may need (a
    deadlock). Fetched blocks stay in remfile's memory cache, outside remfile's own eviction list, until the
    next prefetch no longer needs them (or ``close``): the read of a window cannot evict them
    halfway. Counters: ``requests``, ``bytes_fetched``.
    """

    def __init__(self, rf: StreamFile, url: str, session: RetryingSession, *, workers: int | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, min_part_bytes: int = DEFAULT_MIN_PART_BYTES,
                 span_bytes: int | None = None) -> None:
        self.rf = rf
        self.url = url
        self.session = session
        self._workers_auto = workers is None  # chosen by :meth:`warm`, from where the server is
        self.workers = DEFAULT_WORKERS if workers is None else max(1, int(workers))
        self.max_bytes = int(max_bytes)
        self.block = int(rf._min_chunk_size)
        self.max_part_blocks = max(1, DEFAULT_MAX_PART_BYTES // self.block)
        self.min_part_blocks = min(self.max_part_blocks, max(1, int(min_part_bytes) // self.block))
        self._disk = rf._disk_cache
        self._pinned: set[int] = set()
        self._local = threading.local()
        self._sessions: list[RetryingSession] = []
        self._spare: list[RetryingSession] = []  # opened ahead, for the next thread that needs one
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._layouts: dict[Any, _Layout | None] = {}
        self._edges: dict[int, tuple[int, memoryview]] = {}  # file offset: (stored size, decoded chunk)
        self.min_part_bytes = int(min_part_bytes)
        self._span_auto = span_bytes is None  # chosen by :meth:`warm`, from where the server is
        self.span_bytes = SPAN_BYTES if span_bytes is None else max(1, int(span_bytes))
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

    def _layout(self, dataset: Any) -> _Layout | None:
        key = getattr(dataset, "name", None)
        if key not in self._layouts:
            self._layouts[key] = _direct_layout(dataset) if isinstance(key, str) else None
        return self._layouts[key]

    def learn(self, datasets: Sequence[Any]) -> None:
        """Read the chunk index of each chunked dataset ``read`` serves, in one pass (``chunk_iter``): HDF5 answers a
        single look-up by walking its index up to that chunk (~80 us in the middle of a 1 h recording of 1 s chunks,
        ~190 us at its end: 5-11 ms per 60 s window), and a window's range request can then go out at once. Without
        ``chunk_iter`` or past ``MAX_INDEX_ENTRIES`` chunks: the first and last chunk only (unfiltered full-row chunks),
        between which a window's first chunk is guessed (its own look-up still checks the guess)."""
        for d in datasets:
            layout = self._layout(d)
            if layout is None or layout.contiguous_offset is not None or not layout.shape[0]:
                continue
            if layout.indexed:
                continue  # (another reader of the same series)
            grid = [math.ceil(n / c) for n, c in zip(layout.shape, layout.chunks, strict=True)]
            if math.prod(grid) <= MAX_INDEX_ENTRIES and hasattr(layout.dataset.id, "chunk_iter"):
                layout.index_all()
            elif layout.full_rows and not layout.filters:
                layout.locate(0, 0)
                layout.locate(grid[0] - 1, 0)

    def read(self, datasets: Sequence[Any], i0: int, i1: int, columns: Sequence[int] | None = None,
             watcher: ReadWatcher | None = None) -> list[np.ndarray] | None:
        """Rows [i0, i1) of each dataset (of a 2-D one, ``columns`` in that order), decoded without h5py.

        Whole chunks of full rows are received straight into the output array; partial or tiled
        or compressed (deflate/shuffle, decoded in the fetch threads) chunks into their own buffer, then
        copied. ``watcher`` hears of the output arrays, of the bytes received straight into them, and when every
        request is under way (:class:`ReadWatcher`). None when a dataset has other filters,
        partly unwritten, not plain numbers or the window is over ``max_bytes``: then
        :meth:`prefetch` and h5py's own read serve it.
        """
        layouts = []
        for d in datasets:
            layout = self._layout(d)
            if layout is None:
                return None
            layouts.append(layout)
        n = max(0, i1 - i0)
        outs, selections = [], []
        for layout in layouts:
            if len(layout.shape) == 1:
                outs.append(np.empty(n, dtype=layout.dtype))
                selections.append(None)
                continue
            ncol = layout.shape[1]
            cols = None if columns is None or list(columns) == list(range(ncol)) else [int(c) for c in columns]
            outs.append(np.empty((n, ncol if cols is None else len(cols)), dtype=layout.dtype))
            selections.append(cols)
        if n == 0:
            return outs
        if watcher is not None:
            watcher.begin(outs)
        plans = []
        total = 0
        for layout, cols in zip(layouts, selections, strict=True):
            rows = range(i0 // layout.chunks[0], (i1 - 1) // layout.chunks[0] + 1)
            if layout.contiguous_offset is not None:  # pieces start at the window: only its rows are fetched
                rows = range(math.ceil((i1 - i0) / layout.chunks[0]))
            col_chunks = layout.column_chunks(cols)
            plans.append((rows, col_chunks))
            total += len(rows) * len(col_chunks) * layout.chunk_bytes
        if total > self.max_bytes:
            return None
        layout = layouts[0]
        if (len(layouts) == 1 and layout.contiguous_offset is None and not layout.filters and layout.full_rows
                and (outs[0].ndim == 1 or selections[0] is None)):
            return self._read_spans(layout, outs[0], i0, i1, plans[0][0], watcher)
        part_bytes = min(DEFAULT_MAX_PART_BYTES, max(self.min_part_bytes, math.ceil(total / self.workers)))
        part: list[_Piece] = []
        parts: list[list[_Piece]] = []
        futures: list[tuple[Future, list[_Piece]]] = []
        copies: list[_Piece] = []  # pieces whose bytes go through a buffer of their own
        try:
            for item, (layout, (rows, col_chunks)) in enumerate(zip(layouts, plans, strict=True)):
                out = outs[item]
                straight = layout.full_rows and (out.ndim == 1 or selections[item] is None)
                flat = memoryview(out.reshape(-1)).cast("B") if straight else None
                row_bytes = layout.dtype.itemsize * (layout.shape[1] if len(layout.shape) == 2 else 1)
                height = layout.chunks[0]
                for r in rows:
                    if layout.contiguous_offset is not None:
                        a, b = i0 + r * height, min(i1, i0 + (r + 1) * height)
                        whole = True
                    else:
                        a, b = max(i0, r * height), min(i1, (r + 1) * height)
                        whole = b - a == height
                    for c in col_chunks:
                        if layout.contiguous_offset is not None:
                            where: tuple[int, int, tuple[int, ...]] | None = (
                                layout.contiguous_offset + a * row_bytes, (b - a) * row_bytes, ())
                            first_row = a
                        else:
                            where = layout.locate(r, c)  # may wait for a B-tree node while earlier parts stream
                            first_row = r * height
                        if where is None:
                            _settle([f for f, _ in futures])
                            return None
                        offset, size, undo = where
                        piece = _Piece(item, offset, size, a - first_row, b - first_row, a - i0, c)
                        if (self._disk is not None and c == 0 and layout.contiguous_offset is None and layout.full_rows
                                and not layout.filters):
                            piece.mark = self._mark_key(layout, r)  # a chunk the span path may guess
                        piece.undo, piece.itemsize, piece.expect = undo, layout.dtype.itemsize, layout.chunk_bytes
                        held = self._held(offset, size)
                        if held is not None:
                            piece.sink, decoded = held
                            if undo and not decoded:
                                piece.sink = decode_chunk(piece.sink, undo, piece.itemsize, piece.expect)
                            copies.append(piece)
                            continue
                        if flat is not None and whole:  # its rows' place in the output, received or decoded into
                            piece.at = (a - i0) * row_bytes
                            place = flat[piece.at:(b - i0) * row_bytes]
                            if undo:
                                piece.sink, piece.dest = memoryview(bytearray(size)), place
                            else:
                                piece.sink = place
                        else:
                            piece.sink = memoryview(bytearray(size))
                            piece.keep = not whole  # a window edge: the next window likely needs it
                            copies.append(piece)
                        if part and (offset < part[-1].offset + part[-1].size
                                     or offset - (part[-1].offset + part[-1].size) > MAX_GAP_BYTES):
                            parts.append(part)
                            part = []
                        part.append(piece)
                        if part[-1].offset + part[-1].size - part[0].offset >= part_bytes:
                            parts.append(part)
                            part = []
                        futures += [self._submit_part(x, watcher) for x in parts]  # stream while the look-ups go on
                        parts = []
            if part:
                parts.append(part)
            futures += [self._submit_part(x, watcher) for x in parts]
            if watcher is not None:
                watcher.meanwhile()
            for future, pieces in futures:
                future.result()
                for piece in pieces:
                    if piece.keep:
                        self._hold(piece.offset, piece.size, piece.sink)
            for piece in copies:
                self._copy(piece, layouts[piece.item], outs[piece.item], selections[piece.item])
        except BaseException:
            _settle([f for f, _ in futures])  # no request outlives the call
            raise
        return outs

    def _read_spans(self, layout: _Layout, out: np.ndarray, i0: int, i1: int, rows: range,
                    watcher: ReadWatcher | None = None) -> list[np.ndarray] | None:
        """Rows [i0, i1) of an unfiltered dataset of full-row chunks: each span of file-adjacent chunks is asked for
        in ONE range request as soon as its first chunk is located (or guessed from the memoised chunk before it),
        guessing its length (its chunks back to back, plus ``_slack``); while it streams into the output, the
        look-ups of the later chunks go on
        (a B-tree node on the way is fetched alongside by h5py), and the receiving thread places each chunk's
        bytes once its look-up is published (telling ``watcher`` every ``LANDED_STEP_BYTES``). Chunks elsewhere than
        guessed are fetched afterwards."""
        flat = memoryview(out.reshape(-1)).cast("B")
        row_bytes = layout.chunk_bytes // layout.chunks[0]
        height = layout.chunks[0]
        n_spans = max(1, min(self.workers, math.ceil(len(rows) * layout.chunk_bytes / self.span_bytes)))
        per_span = math.ceil(len(rows) / n_spans)
        spans: list[tuple[Future, _Span]] = []
        later: list[tuple[Future, list[_Piece]]] = []
        span: _Span | None = None
        copies: list[_Piece] = []
        ahead = _Span(out=flat, watcher=watcher)  # its thread opens a connection while the first look-up goes on
        spans.append((self._submit(self._fetch_span, ahead), ahead))
        guessed = self._guess_start(layout, rows)  # the next window of a pass: no wait for a new B-tree leaf
        if guessed is not None:
            k, start, lead = guessed
            n = min(per_span, len(rows) - k)
            ahead.place(start, min(n * layout.chunk_bytes + _slack(n) + lead, self.rf.length - start))
            ahead.asking.wait(HANDOVER_S)
        dropped: list[tuple[Future, _Span]] = []
        try:
            for k, r in enumerate(rows):
                a, b = max(i0, r * height), min(i1, (r + 1) * height)
                where = layout.locate(r, 0)
                if where is None:
                    return None  # unwritten chunk: h5py answers with fill values (finally: spans abandoned)
                offset, size, _ = where
                piece = _Piece(0, offset, size, a - r * height, b - r * height, a - i0, 0)
                if self._disk is not None:
                    piece.mark = self._mark_key(layout, r)
                held = self._held(offset, size)
                if held is not None:
                    piece.sink = held[0]
                    copies.append(piece)
                    continue
                if b - a == height:
                    piece.at = (a - i0) * row_bytes
                    piece.sink = flat[piece.at:(b - i0) * row_bytes]
                else:
                    piece.sink = memoryview(bytearray(size))
                    piece.keep = True  # a window edge: the next window likely needs it
                    copies.append(piece)
                if span is None and guessed is not None:
                    if ahead.start <= offset <= ahead.start + SPAN_SLACK_BYTES:
                        span = ahead  # guessed right (or short of a B-tree node, skipped)
                    else:  # elsewhere: stop that request, ask for the right place
                        ahead.abandon()
                        dropped.append(spans.pop(0))
                        ahead = _Span(out=flat, watcher=watcher)
                if span is None or span.count >= per_span:
                    if span is not None:
                        span.finish()
                    n = min(per_span, len(rows) - k)
                    planned, slack = n * layout.chunk_bytes, 0 if n == 1 else _slack(n)
                    if span is None and spans and spans[0][1] is ahead:
                        span = ahead
                    else:
                        span = _Span(out=flat, watcher=watcher)
                        spans.append((self._submit(self._fetch_span, span), span))
                    span.place(offset, min(planned + slack, self.rf.length - offset))
                    span.asking.wait(HANDOVER_S)
                span.add(piece)
            ahead.finish()  # (unplaced when every chunk was held: no request)
            if span is not None:
                span.finish()
            if watcher is not None:
                watcher.meanwhile()
            leftovers: list[_Piece] = []
            for future, sp in spans:
                future.result()
                leftovers += sp.pieces[sp.taken:]
            parts: list[list[_Piece]] = []
            for piece in sorted(leftovers, key=lambda x: x.offset):  # not where the guess put them: asked for now
                if parts and 0 <= piece.offset - (parts[-1][-1].offset + parts[-1][-1].size) <= MAX_GAP_BYTES:
                    parts[-1].append(piece)
                else:
                    parts.append([piece])
            later = [self._submit_part(x, watcher) for x in parts]
            for future, _ in later:
                future.result()
            for _, sp in spans:
                for piece in sp.pieces:
                    if piece.keep:
                        self._hold(piece.offset, piece.size, piece.sink)
            for piece in copies:
                self._copy(piece, layout, out, None)
        finally:
            for _, sp in spans:
                sp.abandon()  # a span still waiting for look-ups stops (its connection is closed)
            _settle([f for f, _ in spans + later + dropped])  # no request outlives the call
        return [out]

    def _guess_start(self, layout: _Layout, rows: range) -> tuple[int, int, int] | None:
        """(k, file offset, lead) of the window's first chunk to fetch (rows[k]) from the look-ups memoised so far:
        right after the chunk before it, else between the nearest located chunks before and after it (as HDF5
        appends chunks in order, with B-tree nodes among them), asked for ``lead`` bytes early. None if unknown."""
        for k, r in enumerate(rows):
            found = layout.index.get((r, 0), False)
            if found is False:
                if self._disk is not None and self._disk.get(self._mark_key(layout, r)):
                    return None  # in the disk cache (where exactly, its look-up tells): nothing to ask for ahead
                return _between(layout, r, k)
            if found is None or self._held(found[0], found[1]) is None:
                return (k, found[0], 0) if found else None
        return None

    def _submit(self, fn: Any, *args: Any) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="nwb-prefetch")
        return self._pool.submit(fn, *args)

    def _fetch_span(self, span: _Span) -> int:
        """One range request for ``span``: its chunks' bytes go into their sinks as their look-ups are published."""
        def skip(read_into: Any, n: int) -> None:
            while n > 0:
                m = min(n, scratch.nbytes)
                read_into(scratch[:m])
                n -= m

        def consume(read_into: Any) -> None:  # called again from the first byte by a retry
            at, end = span.start, span.start + span.length
            span.taken = 0
            while (piece := span.wait(span.taken)) is not None:
                if piece.offset < at or piece.offset + piece.size > end:
                    break  # not laid out as guessed: this chunk and the later ones are fetched afterwards
                skip(read_into, piece.offset - at)
                j, sink = span.run(span.taken, end)
                if span.watcher is None or piece.at < 0:
                    read_into(sink)
                else:  # straight into the output: the watcher hears of each step while the next one arrives
                    for step in range(0, sink.nbytes, LANDED_STEP_BYTES):
                        part = sink[step:step + LANDED_STEP_BYTES]
                        read_into(part)
                        span.watcher.landed(0, piece.at + step, piece.at + step + part.nbytes)
                at = piece.offset + sink.nbytes
                span.taken = j
            if span.wait(span.taken) is None and end - at <= MAX_GAP_BYTES:
                skip(read_into, end - at)  # unused slack: read, so the connection can be kept
                at = end
            span.received = at - span.start

        session = self._thread_session()
        session.connect(self.url)
        if not span.wait_placed():
            span.asking.set()
            return 0
        span.asking.set()
        scratch = memoryview(bytearray(max(1, min(MAX_GAP_BYTES, span.length))))
        try:
            session.fetch_range(self.url, span.start, consume, span.length)
        except OSError as exc:
            raise self._fail(str(exc)) from None
        self._received(span.pieces[:span.taken], span.received)
        return span.received

    def _held(self, offset: int, size: int) -> tuple[memoryview, bool] | None:
        """A chunk kept from an earlier window's edge (decoded: True), or its stored bytes from the disk cache (False)."""
        edge = self._edges.get(offset)
        if edge is not None and edge[0] == size:
            return edge[1], True
        if self._disk is not None:
            cached = self._disk.get(self._chunk_key(offset, size))
            if cached and len(cached) == size:
                return memoryview(cached), False
        return None

    def _hold(self, offset: int, size: int, data: memoryview) -> None:
        """Keep a window-edge chunk (decoded; at most ``EDGE_CHUNKS``, ``EDGE_BYTES``) for the next window."""
        self._edges.pop(offset, None)
        self._edges[offset] = (size, data)
        while len(self._edges) > EDGE_CHUNKS or sum(v[1].nbytes for v in self._edges.values()) > EDGE_BYTES:
            self._edges.pop(next(iter(self._edges)))

    def _received(self, pieces: Sequence[_Piece], nbytes: int) -> None:
        """After one request: its chunks (and their marks) into the disk cache, the request and its bytes counted."""
        if self._disk is not None:
            for piece in pieces:
                self._disk.set(self._chunk_key(piece.offset, piece.size), piece.sink)
                if piece.mark is not None:
                    self._disk.set(piece.mark, b"1")
        with self._lock:
            self.requests += 1
            self.bytes_fetched += nbytes

    def _mark_key(self, layout: _Layout, r: int) -> str:
        """Disk-cache key of the mark left beside row chunk ``r`` of ``layout``'s dataset (column chunk 0) when it is
        cached: a range request guessed for a chunk never located (this session) is sent only when it is unmarked."""
        return f"{self.url}|cached|{layout.name}|{r}"

    def _chunk_key(self, offset: int, size: int) -> str:
        return f"{self.url}|chunk|{offset}|{size}"

    def _submit_part(self, pieces: list[_Piece], watcher: ReadWatcher | None = None) -> tuple[Future, list[_Piece]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="nwb-prefetch")
        return self._pool.submit(self._fetch_part, list(pieces), watcher), list(pieces)

    def _fetch_part(self, pieces: list[_Piece], watcher: ReadWatcher | None = None) -> int:
        """One range request for a run of chunks, each received into its sink (gaps between them discarded); ``watcher``
        hears of those received (or decoded) straight into the output."""
        sinks: list[memoryview] = []
        end = pieces[0].offset
        for piece in pieces:
            if piece.offset > end:
                sinks.append(memoryview(bytearray(piece.offset - end)))  # e.g. a B-tree node between chunks
            sinks.append(piece.sink)
            end = piece.offset + piece.size
        try:
            self._thread_session().fetch_range(self.url, pieces[0].offset, sinks)
        except OSError as exc:
            raise self._fail(str(exc)) from None
        self._received(pieces, end - pieces[0].offset)
        for piece in pieces:  # decoded here, in the pool, while the other requests stream
            if piece.undo:
                piece.sink = decode_chunk(piece.sink, piece.undo, piece.itemsize, piece.expect, piece.dest)
            if watcher is not None and piece.at >= 0:
                watcher.landed(piece.item, piece.at, piece.at + (piece.sink if piece.dest is None else piece.dest).nbytes)
        return end - pieces[0].offset

    @staticmethod
    def _copy(piece: _Piece, layout: _Layout, out: np.ndarray, cols: list[int] | None) -> None:
        """Copy the rows (and columns) of one chunk held in its own buffer into ``out``."""
        values = np.frombuffer(piece.sink, dtype=layout.dtype, count=piece.sink.nbytes // layout.dtype.itemsize)
        rows = values.reshape(-1, *layout.chunks[1:])[piece.r0:piece.r1]
        stop = piece.out0 + piece.r1 - piece.r0
        if out.ndim == 1:
            out[piece.out0:stop] = rows
            return
        width = layout.chunks[1]
        c0 = piece.col_chunk * width
        w = min(width, layout.shape[1] - c0)
        if cols is None:
            out[piece.out0:stop, c0:c0 + w] = rows[:, :w]
        else:
            picks = [(k, c - c0) for k, c in enumerate(cols) if c0 <= c < c0 + w]
            out[piece.out0:stop, [k for k, _ in picks]] = rows[:, [j for _, j in picks]]

    def _fetch_run(self, run: tuple[int, int]) -> tuple[int, int, memoryview]:
        """Fetch blocks [first, first + count) in one range request into one buffer (and the disk cache)."""
        first, count = run
        start = first * self.block
        end = min((first + count) * self.block, self.rf.length)
        buffer = memoryview(bytearray(end - start))
        try:
            self._thread_session().fetch_range(self.url, start, [buffer])
        except OSError as exc:
            raise self._fail(str(exc)) from None
        if self._disk is not None:
            for k in range(count):
                self._disk.set(self._key(first + k), buffer[k * self.block:(k + 1) * self.block])
        with self._lock:
            self.requests += 1
            self.bytes_fetched += buffer.nbytes
        return first, count, buffer

    def _new_session(self) -> RetryingSession:
        main = self.session
        s = RetryingSession(timeout=main.timeout, retries=main.retries, backoff=main.backoff)
        s._lean_hosts = dict(main._lean_hosts)  # (the proxy look-up done once, by the opening session)
        with self._lock:
            self._sessions.append(s)
        return s

    def _thread_session(self) -> RetryingSession:
        s = getattr(self._local, "session", None)
        if s is None:
            with self._lock:
                s = self._spare.pop() if self._spare else None
            self._local.session = s = s or self._new_session()
        return s

    def warm(self) -> None:
        """Start one fetch thread and open its connection now (when the file is opened), so that the first
        window's request does not wait for them (measured: 6-9 ms on a loaded 2-core box). Unless given, the span
        size and the workers follow where the connection leads: ``SPAN_BYTES`` and ``DEFAULT_WORKERS`` to this
        machine, ``FAR_SPAN_BYTES`` and ``FAR_WORKERS`` elsewhere."""
        s = self._new_session()
        s.connect(self.url)
        local = s.peer_is_local(self.url)
        if self._span_auto:
            self.span_bytes = SPAN_BYTES if local else FAR_SPAN_BYTES
        if self._workers_auto:
            self.workers = DEFAULT_WORKERS if local else FAR_WORKERS
        with self._lock:
            self._spare.append(s)
        self._submit(self._thread_session).result()

    def _fail(self, problem: str) -> PrefetchError:
        self.session.last_error = problem  # what the reader's one-line error reports
        return PrefetchError(problem)

    def _fetch(self, run: tuple[int, int]) -> int:
        """Fetch a run of blocks for h5py's read: pinned in remfile's memory cache until the next prefetch."""
        first, count, buffer = self._fetch_run(run)
        with self._lock:
            for k in range(count):
                self.rf._chunks[first + k] = buffer[k * self.block:(k + 1) * self.block]
                self._pinned.add(first + k)
        return buffer.nbytes

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
