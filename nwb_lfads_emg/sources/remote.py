"""Stream a remote NWB (HDF5) file over HTTP range requests with remfile, plus an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import remfile
import requests

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
    """

    def __init__(self, timeout: float = 20.0, retries: int = 3, backoff: float = 0.2) -> None:
        super().__init__()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.last_error: str | None = None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        problem = "no attempt made"
        for attempt in range(self.retries + 1):
            try:
                response = super().request(method, url, *args, **kwargs)
            except requests.Timeout:
                problem = f"timed out after {self.timeout:g} s"
            except requests.ConnectionError as exc:
                refused = "Connection refused" in str(exc) or "Errno 111" in str(exc)
                problem = f"connection failed ({'connection refused' if refused else one_line(exc, 160)})"
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
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


def open_remote_file(
    url: str,
    cache_dir: Path | None,
    *,
    timeout: float = 20.0,
    retries: int = 3,
    min_chunk_size: int = 128 * 1024,
    max_memory_cache: int = 64 * 1024 * 1024,
) -> tuple[remfile.File, RetryingSession]:
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
    rf = remfile.File(
        url,
        disk_cache=disk_cache,
        _size=size,
        _min_chunk_size=min_chunk_size,
        _max_cache_size=max_memory_cache,
        _max_chunk_size=4 * 1024 * 1024,
    )
    rf.session = session
    return rf, session
