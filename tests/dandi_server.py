"""A local stand-in for the DANDI Archive: the REST API the dandi client uses plus a blob store
with real HTTP Range support (206), byte counting and failure injection (404, stalls, refusals).

Use ``DandiServer({"000941": {"sub-x/sub-x_ses-y.nwb": "/path/file.nwb"}})`` as a context manager,
or the ``dandi_server`` pytest fixture (a factory) after ``from dandi_server import dandi_server``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

_TS = "2026-01-01T00:00:00.000000Z"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default log
        pass

    # ------------------------------------------------------------------ plumbing
    def _json(self, obj: object, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _status(self, status: int, text: str = "") -> None:
        body = (text or f"{status}").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    # ------------------------------------------------------------------ routes
    def _route(self) -> None:
        srv = self.server.owner
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        with srv.lock:
            srv.requests.append((self.command, self.path, self.headers.get("Range")))
        if path in ("/server-info", "/api/info/", "/api/info"):
            return self._json(srv.server_info())
        m = re.fullmatch(r"/api/dandisets/(\d{6})/?", path)
        if m:
            return self._dandiset(m.group(1))
        m = re.fullmatch(r"/api/dandisets/(\d{6})/versions/([^/]+)/?", path)
        if m:
            ds = self._ds(m.group(1))
            return ds is not None and self._json(srv.version_info(m.group(1), m.group(2)))
        m = re.fullmatch(r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/?", path)
        if m:
            return self._assets(m.group(1), m.group(2), query)
        m = re.fullmatch(r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/([^/]+)/info/?", path)
        if m:
            return self._asset_info(m.group(1), m.group(3))
        m = re.fullmatch(r"/api/assets/([^/]+)/info/?", path)
        if m:
            entry = srv.by_id.get(m.group(1))
            return self._asset_info(entry[0] if entry else "", m.group(1))
        m = re.fullmatch(r"/api/dandisets/(\d{6})/versions/([^/]+)/assets/([^/]+)/?", path)
        if m:
            return self._asset_meta(m.group(1), m.group(3))
        m = re.fullmatch(r"/api/assets/([^/]+)/download/?", path)
        if m:
            if m.group(1) not in srv.by_id:
                return self._status(404, "no such asset")
            self.send_response(302)
            self.send_header("Location", f"{srv.base_url}/blobs/{m.group(1)}?X-Amz-Signature=fake&X-Amz-Expires=60")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        m = re.fullmatch(r"/blobs/([^/]+)", path)
        if m:
            return self._blob(m.group(1))
        m = re.fullmatch(r"/files/(.+)", path)
        if m:
            return self._blob(unquote(m.group(1)), by_name=True)
        return self._status(404, "not found")

    def _ds(self, dandiset_id: str) -> dict | None:
        ds = self.server.owner.dandisets.get(dandiset_id)
        if ds is None:
            self._json({"detail": "Not found."}, 404)
        return ds

    def _dandiset(self, dandiset_id: str) -> None:
        srv = self.server.owner
        if self._ds(dandiset_id) is None:
            return
        self._json({
            "identifier": dandiset_id, "created": _TS, "modified": _TS,
            "contact_person": "Test, Person", "embargo_status": "OPEN",
            "most_recent_published_version": None,
            "draft_version": srv.version_summary(dandiset_id, "draft"),
        })

    def _assets(self, dandiset_id: str, version: str, query: dict) -> None:
        srv = self.server.owner
        ds = self._ds(dandiset_id)
        if ds is None:
            return
        prefix = query.get("path", [""])[0]
        results = [srv.asset_record(dandiset_id, p) for p in sorted(ds) if p.startswith(prefix)]
        self._json({"count": len(results), "next": None, "previous": None, "results": results})

    def _asset_info(self, dandiset_id: str, asset_id: str) -> None:
        srv = self.server.owner
        entry = srv.by_id.get(asset_id)
        if entry is None or entry[0] != dandiset_id:
            return self._json({"detail": "Not found."}, 404)
        rec = srv.asset_record(dandiset_id, entry[1])
        rec["metadata"] = srv.asset_metadata(dandiset_id, asset_id)
        self._json(rec)

    def _asset_meta(self, dandiset_id: str, asset_id: str) -> None:
        srv = self.server.owner
        entry = srv.by_id.get(asset_id)
        if entry is None or entry[0] != dandiset_id:
            return self._json({"detail": "Not found."}, 404)
        self._json(srv.asset_metadata(dandiset_id, asset_id))

    def _blob(self, key: str, by_name: bool = False) -> None:
        srv = self.server.owner
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            if srv.latency:
                time.sleep(srv.latency)
            self._blob_body(key, by_name)
        finally:
            with srv.lock:
                srv.in_flight -= 1
                srv.idle.notify_all()

    def _blob_body(self, key: str, by_name: bool) -> None:
        srv = self.server.owner
        local = srv.files_by_name.get(key) if by_name else (srv.by_id.get(key) or (None, None, None))[2]
        fail = srv.take_failure(key)
        cut = None
        if fail is not None and fail[0] == "cut":
            cut, fail = int(fail[1]), None  # type: ignore[call-overload]
        if fail is not None:
            kind, value = fail
            if kind == "status":
                return self._status(int(value), "injected failure")
            if kind == "stall":
                time.sleep(float(value))
                try:
                    return self._status(503, "stalled")
                except OSError:
                    return None
        if local is None:
            return self._status(404, "no such blob")
        size = os.path.getsize(local)
        rng = self.headers.get("Range")
        start, end, status = 0, size - 1, 200
        if rng and srv.support_range:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m:
                return self._status(416, "bad range")
            if m.group(1):
                start = int(m.group(1))
                end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return None
        if cut is not None:  # the body cut short: the connection closes after ``cut`` bytes
            self.close_connection = True
            length = min(length, cut)
        rate = srv.link_bytes_per_s
        began = time.perf_counter()
        with open(local, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                if rate:  # paced: no byte leaves before its time on a link of this rate
                    time.sleep(max(0.0, (length - left) / rate - (time.perf_counter() - began)))
                piece = fh.read(min(left, 1 << 18 if rate else 1 << 20))
                if not piece:
                    break
                try:
                    self.wfile.write(piece)
                except OSError:  # the client hung up (e.g. a size probe that closes early)
                    break
                srv.count(len(piece))
                left -= len(piece)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: DandiServer


class DandiServer:
    """Serves {dandiset id: {asset path: local file}} on 127.0.0.1 like the DANDI Archive.

    ``bytes_served`` counts blob body bytes actually sent, ``max_in_flight`` the most blob requests
    served at once, ``latency`` delays every blob request, ``link_bytes_per_s`` paces each blob response (as a
    far server's per-connection throughput: S3 gives one connection ~50-100 MB/s); ``fail(asset_path, ...)`` injects
    failures for the next blob requests; ``support_range=False`` makes the blob store ignore Range.
    """

    def __init__(self, dandisets: dict[str, dict[str, str | os.PathLike[str]]], files: dict[str, str] | None = None) -> None:
        self.dandisets = {k: {p: str(f) for p, f in v.items()} for k, v in dandisets.items()}
        self.files_by_name = {k: str(v) for k, v in (files or {}).items()}
        self.by_id: dict[str, tuple[str, str, str]] = {}
        self.by_path: dict[tuple[str, str], str] = {}
        for ds, assets in self.dandisets.items():
            for p, f in assets.items():
                aid = hashlib.md5(f"{ds}/{p}".encode()).hexdigest()
                aid = f"{aid[:8]}-{aid[8:12]}-{aid[12:16]}-{aid[16:20]}-{aid[20:32]}"
                self.by_id[aid] = (ds, p, f)
                self.by_path[(ds, p)] = aid
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified when a blob request ends
        self.bytes_served = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self.support_range = True
        self.latency = 0.0  # seconds each blob request waits before answering (a long link's round trip)
        self.link_bytes_per_s = 0.0  # 0: as fast as loopback goes; else each response is paced to this rate
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: dict[str, list[tuple[str, object]]] = {}
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.base_url}/api"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ API payloads
    def server_info(self) -> dict:
        return {
            "schema_version": "0.6.4", "schema_url": "", "version": "0.4.0",
            "cli-minimal-version": "0.1.0", "cli-bad-versions": [],
            "services": {"api": {"url": self.api_url}, "webui": {"url": self.base_url}},
        }

    def version_summary(self, ds: str, version: str) -> dict:
        assets = self.dandisets[ds]
        return {"version": version, "name": f"Test dandiset {ds}", "asset_count": len(assets),
                "size": sum(os.path.getsize(f) for f in assets.values()), "created": _TS,
                "modified": _TS, "status": "Valid"}

    def version_info(self, ds: str, version: str) -> dict:
        out = self.version_summary(ds, version)
        out["dandiset"] = {"identifier": ds, "created": _TS, "modified": _TS,
                           "contact_person": "Test, Person", "embargo_status": "OPEN"}
        return out

    def asset_record(self, ds: str, path: str) -> dict:
        aid = self.by_path[(ds, path)]
        return {"asset_id": aid, "blob": hashlib.md5(aid.encode()).hexdigest(), "zarr": None, "path": path,
                "size": os.path.getsize(self.dandisets[ds][path]), "created": _TS, "modified": _TS}

    def asset_metadata(self, ds: str, asset_id: str) -> dict:
        path = self.by_id[asset_id][1]
        rec = self.asset_record(ds, path)
        return {
            "id": f"dandiasset:{asset_id}", "identifier": asset_id, "path": path,
            "contentSize": rec["size"], "encodingFormat": "application/x-nwb",
            "schemaKey": "Asset", "digest": {"dandi:dandi-etag": rec["blob"]},
            "contentUrl": [f"{self.base_url}/api/assets/{asset_id}/download/",
                           f"{self.base_url}/blobs/{asset_id}"],
        }

    # ------------------------------------------------------------------ test controls
    def count(self, n: int) -> None:
        with self.lock:
            self.bytes_served += n

    def reset_counts(self, settle_s: float = 10.0) -> None:
        """Zero the byte counter, the request log and the in-flight high-water mark, once the blob requests
        in flight have ended (up to ``settle_s``): a client may hold a response's last bytes before the
        server thread that sent them has counted them, and that count must not land after the reset."""
        with self.lock:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=settle_s)
            self.bytes_served = 0
            self.max_in_flight = self.in_flight
            self.requests.clear()

    def asset_id(self, dandiset_id: str, path: str) -> str:
        return self.by_path[(dandiset_id, path)]

    def blob_url(self, dandiset_id: str, path: str) -> str:
        """The plain https-style URL of an asset's blob (for tests of plain URLs)."""
        return f"{self.base_url}/blobs/{self.asset_id(dandiset_id, path)}"

    def fail(self, key: str, kind: str, value: object, times: int = 1) -> None:
        """Make the next ``times`` requests for blob ``key`` (asset id or file name) fail.

        kind "status": answer that HTTP status; kind "stall": wait ``value`` seconds first; kind "cut": send the
        headers of the whole answer but only its first ``value`` body bytes, then close the connection.
        """
        with self.lock:
            self._failures.setdefault(key, []).extend([(kind, value)] * times)

    def take_failure(self, key: str) -> tuple[str, object] | None:
        with self.lock:
            queue = self._failures.get(key)
            return queue.pop(0) if queue else None

    @property
    def range_requests(self) -> list[str]:
        return [r for _, p, r in self.requests if r and (p.startswith("/blobs/") or p.startswith("/files/"))]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DandiServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> DandiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def dandi_server(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Factory fixture: ``dandi_server({"000941": {path: file}})`` starts a server (stopped at teardown)
    and points dandi at it ($DANDI_INSTANCE = its API URL, $DANDI_NO_ET=1, no proxies)."""
    started: list[DandiServer] = []

    def make(dandisets: dict[str, dict[str, str | os.PathLike[str]]], files: dict[str, str] | None = None) -> DandiServer:
        srv = DandiServer(dandisets, files).start()
        started.append(srv)
        monkeypatch.setenv("DANDI_INSTANCE", srv.api_url)
        monkeypatch.setenv("DANDI_NO_ET", "1")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        return srv

    yield make
    for srv in started:
        srv.stop()


__all__ = ["DandiServer", "dandi_server", "Path"]
