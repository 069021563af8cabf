"""Stream a remote NWB (HDF5) file over HTTP range requests with remfile, plus an on-disk cache."""

from __future__ import annotations

import functools
import hashlib
import http.client
import inspect
import ipaddress
import json
import os
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import remfile
import requests
import urllib3

from ..errors import SourceError, describe, one_line

#: Status codes worth retrying (throttling and transient server errors).
RETRY_STATUSES = (429, 500, 502, 503, 504)


def default_cache_dir() -> Path:
    """The on-disk cache used when none is given: $NWB_LFADS_EMG_CACHE_DIR or ~/.cache/nwb-lfads-emg."""
    env = os.environ.get("NWB_LFADS_EMG_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nwb-lfads-emg" / "http"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | bool | None) -> Path | None:
    """None -> the default directory; False or "" or "none" -> no cache; otherwise that directory."""
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    if cache_dir is False or str(cache_dir).strip().lower() in ("", "none", "off"):
        return None
    return Path(cache_dir).expanduser()


class RetryingSession(requests.Session):
    """A requests session with a timeout on every request and a bounded number of retries.

    When every attempt fails it answers with a synthetic 408 response (a client error, so remfile
    stops instead of running its own long back-off) and keeps the real cause in ``last_error``.
    Plain range GETs (remfile's block loads, the prefetch) go over a kept-alive ``http.client``
    connection instead of requests' stack (which costs ~3 ms of Python per request; a B-tree
    look-up is a chain of such requests), unless a proxy, client certificate or custom CA applies.
    """

    def __init__(self, timeout: float = 20.0, retries: int = 3, backoff: float = 0.2) -> None:
        super().__init__()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.last_error: str | None = None
        self._lean_hosts: dict[str, bool] = {}
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        headers = kwargs.get("headers") or {}
        if (method.upper() == "GET" and not args and not kwargs.get("stream") and "Range" in headers
                and set(kwargs) <= {"headers", "timeout", "allow_redirects", "params"} and not kwargs.get("params")
                and self._lean(url)):
            response = self._attempts(lambda: self._lean_get(url, headers, kwargs.get("timeout") or self.timeout), url)
            if not (response.is_redirect and kwargs.get("allow_redirects", True)):
                return response
        kwargs.setdefault("timeout", self.timeout)
        preload = not kwargs.get("stream")
        kwargs["stream"] = True

        def once() -> requests.Response:
            response = super(RetryingSession, self).request(method, url, *args, **kwargs)
            if preload and response.status_code not in RETRY_STATUSES:
                _read_body(response)
            return response

        return self._attempts(once, url)

    def _attempts(self, once: Any, url: str) -> requests.Response:
        """Run ``once`` up to retries + 1 times (retrying timeouts, dropped connections, RETRY_STATUSES)."""
        problem = "no attempt made"
        for attempt in range(self.retries + 1):
            try:
                response = once()
                if response.status_code not in RETRY_STATUSES:
                    return response
            except (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
                problem = f"timed out after {self.timeout:g} s"
            except requests.ConnectionError as exc:
                problem = f"connection failed ({_short(exc)})"
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:  # a body cut short
                problem = f"connection failed ({_short(exc)})"
            else:
                problem = f"HTTP {response.status_code} {response.reason}"
                response.close()
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        self.last_error = f"{problem}; gave up after {self.retries + 1} attempts"
        failed = requests.Response()
        failed.status_code = 408
        failed.reason = self.last_error
        failed.url = url
        failed._content = b""
        failed._content_consumed = True
        return failed

    def fetch_range(self, url: str, start: int, sinks: Sequence[memoryview] | Callable[[Callable[[memoryview], None]], None],
                    size: int | None = None) -> None:
        """Bytes from ``start`` of ``url`` read straight into ``sinks`` in turn (one range request, retried as any).

        ``sinks`` may instead be a consumer, called with a ``read_into(view)`` that fills ``view`` with the
        body's next bytes as they arrive (``size`` bytes in all; a consumer that stops early gets the connection
        closed, and one that a retry calls again starts from the body's first byte).
        Raises OSError with the reason (also kept in ``last_error``) when every attempt fails.
        """
        if size is None:
            size = sum(sink.nbytes for sink in sinks)  # type: ignore[union-attr]
        end = start + size - 1
        headers = {"Range": f"bytes={start}-{end}"}
        response = None
        if self._lean(url):
            response = self._attempts(lambda: self._lean_get(url, headers, self.timeout, sinks, size), url)
        if response is None or response.is_redirect:  # requests follows redirects; the lean path does not
            response = self.get(url, headers=headers, stream=False)
            if response.status_code == 206 and len(response.content) == size:
                _feed(_BodyReader(memoryview(response.content)), sinks)
        if response.status_code == 408 and self.last_error:
            raise OSError(self.last_error)
        if response.status_code != 206:
            raise OSError(f"HTTP {response.status_code} {response.reason} for bytes {start}-{end}")
        if response.headers.get("Content-Length") != str(size):
            raise OSError(f"the server sent {response.headers.get('Content-Length')} bytes for the "
                          f"{size} of range {start}-{end}")

    def connect(self, url: str) -> None:
        """Open the kept-alive connection to ``url``'s server ahead of a request (a failure is left to the request)."""
        if self._lean(url):
            conn = self._connection(urlsplit(url), self.timeout)
            if conn.sock is None:
                try:
                    conn.connect()
                except OSError:
                    conn.close()

    def peer_is_local(self, url: str) -> bool:
        """Whether the kept-alive connection to ``url``'s server leads to this machine: a loopback address, or the
        connection's own (False when there is none, as behind a proxy)."""
        conn = self._conns.get(_host_key(urlsplit(url)))
        try:
            peer, own = conn.sock.getpeername()[0], conn.sock.getsockname()[0]  # type: ignore[union-attr]
            return peer == own or ipaddress.ip_address(peer.split("%")[0]).is_loopback
        except (AttributeError, OSError, ValueError):
            return False

    def _lean(self, url: str) -> bool:
        """Whether plain http.client may serve ``url`` (no proxy, client certificate, auth or disabled TLS check applies)."""
        parts = urlsplit(url)
        key = _host_key(parts)
        ok = self._lean_hosts.get(key)
        if ok is None:
            env = requests.utils.get_environ_proxies(url) if self.trust_env else {}
            ok = (parts.scheme in ("http", "https") and not self.proxies and not env and self.verify is not False
                  and not self.cert and self.auth is None and "@" not in parts.netloc)
            self._lean_hosts[key] = ok
        return ok

    def _connection(self, parts: Any, timeout: float) -> http.client.HTTPConnection:
        key = _host_key(parts)
        conn = self._conns.get(key)
        if conn is None:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                   context=_ssl_context(self._ca_bundle()))
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            self._conns[key] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _ca_bundle(self) -> str:
        """The CA bundle requests would verify with: the session's, $REQUESTS_CA_BUNDLE, $CURL_CA_BUNDLE, certifi's."""
        if isinstance(self.verify, str):
            return self.verify
        env = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")) if self.trust_env else None
        if env:
            return env
        import certifi

        return certifi.where()

    def _lean_get(self, url: str, headers: dict, timeout: float, sinks: Any = None,
                  size: int | None = None) -> requests.Response:
        """One GET over the kept-alive connection; the body goes into ``sinks`` (a 206 of ``size`` bytes) or the response."""
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        sent = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", **headers}
        conn = self._connection(parts, timeout)
        try:
            for fresh in (conn.sock is None, True):
                try:
                    conn.request("GET", target, headers=sent)
                    raw = conn.getresponse()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    conn.close()  # a kept-alive connection the server had dropped: one more try on a new one
                    if fresh:
                        raise
            response = requests.Response()
            response.status_code = raw.status
            response.reason = raw.reason
            response.url = url
            response.headers = requests.structures.CaseInsensitiveDict(raw.getheaders())
            length = raw.getheader("Content-Length")
            if sinks is not None and raw.status == 206 and length == str(size):
                body = _BodyReader(raw)
                _feed(body, sinks)
                if body.got != size:  # the consumer stopped early: the rest is not worth reading
                    conn.close()
                response._content = b""
            else:
                response._content = raw.read()
            response._content_consumed = True
            if raw.will_close:
                conn.close()
            return response
        except BaseException:
            conn.close()  # never reuse a connection left mid-response
            raise

    def close(self) -> None:
        """Close the kept-alive connections and requests' pools."""
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        super().close()


_USER_AGENT = f"nwb-lfads-emg python-requests/{requests.__version__}"


@functools.lru_cache(maxsize=4)
def _host_key(parts: Any) -> str:
    """``scheme://host:port`` of a split URL: the key of a session's kept-alive connections and lean-path verdicts."""
    return f"{parts.scheme}://{parts.netloc}"


def _ssl_context(cafile: str) -> ssl.SSLContext:
    """The TLS context of the lean connections, verifying with ``cafile`` (or a directory of certificates)."""
    if os.path.isdir(cafile):
        return ssl.create_default_context(capath=cafile)
    return ssl.create_default_context(cafile=cafile)


class _BodyReader:
    """``read_into(view)``: fill ``view`` with a response body's next bytes (an http.client response or bytes)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.got = 0

    def read_into(self, view: memoryview) -> None:
        if isinstance(self.source, memoryview):
            if self.got + view.nbytes > self.source.nbytes:
                raise http.client.IncompleteRead(b"", view.nbytes)
            view[:] = self.source[self.got:self.got + view.nbytes]
            self.got += view.nbytes
            return
        done = 0
        while done < view.nbytes:
            n = self.source.readinto(view[done:])
            if not n:
                raise http.client.IncompleteRead(b"", view.nbytes - done)
            done += n
        self.got += done


def _feed(body: _BodyReader, sinks: Any) -> None:
    """Hand a body to its sinks: each memoryview filled in turn, or a consumer given ``read_into``."""
    if callable(sinks):
        sinks(body.read_into)
        return
    for sink in sinks:
        body.read_into(sink)


def _read_body(response: requests.Response) -> None:
    """Read the whole body in one call (requests' own ``.content`` loops over 10 kB pieces: 3-5x slower)."""
    try:
        response._content = response.raw.read(decode_content=True) or b""
    finally:
        response.raw.release_conn()
    response._content_consumed = True


def _short(exc: BaseException) -> str:
    """A failed connection's reason in a few words (a refused connection named as such)."""
    text = str(exc)
    return "connection refused" if "Connection refused" in text or "Errno 111" in text else one_line(exc, 160)


def probe_size(url: str, session: RetryingSession) -> int:
    """Size in bytes of a remote file, asked with a one-byte range request (which must answer 206)."""
    response = session.get(url, headers={"Range": "bytes=0-0"}, stream=True)
    try:
        if response.status_code == 408 and session.last_error:
            raise SourceError(describe(url, None, f"cannot reach the file: {session.last_error}"))
        if response.status_code == 404:
            raise SourceError(describe(url, None, "HTTP 404 Not Found (no file at this URL)"))
        if response.status_code == 200:
            raise SourceError(
                describe(url, None, "the server ignores HTTP Range requests (answered 200, not 206); "
                         "streaming would need the whole file")
            )
        if response.status_code != 206:
            raise SourceError(describe(url, None, f"HTTP {response.status_code} {response.reason}"))
        content_range = response.headers.get("Content-Range", "")
        try:
            return int(content_range.rsplit("/", 1)[1])
        except (IndexError, ValueError):
            raise SourceError(describe(url, None, f"bad Content-Range header {content_range!r}")) from None
    finally:
        response.close()


def _size_record(cache: Path, url: str) -> Path:
    return cache / "sizes" / (hashlib.sha1(url.encode()).hexdigest() + ".json")


_LOAD_TAKES_NEEDED = "chunks_needed" in inspect.signature(remfile.File._load_chunk).parameters


class StreamFile(remfile.File):
    """remfile.File plus ``readinto``, which h5py's file-object driver prefers to ``read``.

    It copies straight from the cached blocks into HDF5's buffer: one copy instead of read()'s
    slice, join and h5py's own copy, and it lets cached blocks be memoryviews of a larger fetch.
    """

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        size = max(0, min(out.nbytes, self.length - self._position))
        if size == 0:
            return 0
        block = self._min_chunk_size
        first, last = self._position // block, (self._position + size - 1) // block
        done = 0
        for index in range(first, last + 1):
            if _LOAD_TAKES_NEEDED:
                self._load_chunk(index, chunks_needed=last - index + 1)
            else:
                self._load_chunk(index)
            data = self._chunks[index]
            start = self._position + done - index * block
            n = min(len(data) - start, size - done)
            out[done:done + n] = memoryview(data)[start:start + n]
            done += n
        self._position += done
        self.trim_cache()
        return done

    def trim_cache(self) -> None:
        """remfile's eviction, made a bound: past the memory limit, keep only the newest half-limit of blocks.

        (remfile itself drops a fixed half-limit, so windows larger than that made its cache grow.)
        """
        if len(self._chunk_indices) > self._max_chunks_in_cache:
            drop = len(self._chunk_indices) - int(self._max_chunks_in_cache * 0.5)
            for index in self._chunk_indices[:drop]:
                self._chunks.pop(index, None)
            self._chunk_indices = self._chunk_indices[drop:]

    def read(self, size: int | None = None) -> bytes:  # type: ignore[override]
        """``size`` bytes from the current position, always as bytes (cached blocks may be memoryviews)."""
        if size is None:
            raise ValueError("StreamFile.read needs a size")
        buffer = bytearray(max(0, min(size, self.length - self._position)))
        return bytes(buffer[:self.readinto(buffer)])


def open_remote_file(
    url: str,
    cache_dir: Path | None,
    *,
    timeout: float = 20.0,
    retries: int = 3,
    min_chunk_size: int = 128 * 1024,
    max_memory_cache: int = 64 * 1024 * 1024,
) -> tuple[StreamFile, RetryingSession]:
    """Open ``url`` as a read-only file object backed by HTTP range requests (and ``cache_dir``)."""
    session = RetryingSession(timeout=timeout, retries=retries)
    size: int | None = None
    if cache_dir is not None:
        record = _size_record(cache_dir, url)
        if record.exists():
            try:
                size = int(json.loads(record.read_text())["size"])
            except (ValueError, KeyError, OSError):
                size = None
    if size is None:
        size = probe_size(url, session)
        if cache_dir is not None:
            record = _size_record(cache_dir, url)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"url": url, "size": size}))
    disk_cache = remfile.DiskCache(str(cache_dir / "blocks")) if cache_dir is not None else None
    rf = StreamFile(
        url,
        disk_cache=disk_cache,
        _size=size,
        _min_chunk_size=min_chunk_size,
        _max_cache_size=max_memory_cache,
        _max_chunk_size=4 * 1024 * 1024,
    )
    rf.session = session
    return rf, session
