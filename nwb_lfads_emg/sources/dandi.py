"""Resolve DANDI references (dandi://, DANDI:..., archive and API URLs) to a blob URL with dandi's client."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote

from ..errors import SourceError, describe

_INSTANCE_COLON = re.compile(r"^(?P<name>[A-Za-z][-\w.]*):(?P<id>\d{6})(?P<rest>/.*)?$")
_DANDI_SCHEME = re.compile(r"^dandi://(?P<name>[-\w.]+)/(?P<id>\d{6})(@(?P<version>[^/]+))?(/(?P<path>.*))?$")
_VERSION = re.compile(r"^(draft|\d+\.\d+\.\d+)$")


@dataclass
class DandiAsset:
    """A resolved DANDI asset: where it lives and the URL its bytes are streamed from."""

    reference: str
    api_url: str
    dandiset_id: str | None
    version_id: str | None
    path: str
    asset_id: str
    content_url: str

    @property
    def dandi_url(self) -> str:
        """A canonical reference to the asset: its API URL (asset by id in a dandiset version)."""
        if self.dandiset_id is None:
            return f"{self.api_url.rstrip('/')}/assets/{self.asset_id}/"
        return (
            f"{self.api_url.rstrip('/')}/dandisets/{self.dandiset_id}/versions/{self.version_id}"
            f"/assets/{self.asset_id}/"
        )


def looks_like_dandi(source: str) -> bool:
    """True when ``source`` is a DANDI reference rather than a local path or a plain file URL."""
    if source.startswith("dandi://") or _INSTANCE_COLON.match(source):
        return True
    if source.startswith(("http://", "https://")):
        return bool(re.search(r"/dandisets?/\d{6}|/assets/[^/]+(/download)?/?$|dandiarchive\.org", source))
    return False


def configured_instance(instance: str | None = None):  # -> dandi.consts.DandiInstance | None
    """The instance set by the caller or by $DANDI_INSTANCE (a known name or an API URL), else None."""
    from dandi.consts import DandiInstance, known_instances

    value = instance or os.environ.get("DANDI_INSTANCE")
    if not value:
        return None
    if value.lower().startswith(("http://", "https://")):
        api = value.rstrip("/")
        if not api.endswith("/api"):
            api += "/api"
        return DandiInstance(name=api, gui=None, api=api)
    if value.lower() not in known_instances:
        raise SourceError(
            describe("DANDI_INSTANCE", value, "unknown DANDI instance; known: " + ", ".join(sorted(known_instances)))
        )
    return known_instances[value.lower()]


def normalize_reference(reference: str, instance: str | None = None) -> str:
    """Bring a reference into a form ``dandi.dandiarchive.parse_dandi_url`` parses.

    ``INSTANCE:ID/path`` (with a path, which dandi only accepts as ``dandi://``) becomes
    ``dandi://INSTANCE/ID/path``; when an instance is configured (argument or $DANDI_INSTANCE),
    ``dandi://`` references to the default instance are pointed at that instance's API URL.
    """
    ref = reference.strip()
    m = _INSTANCE_COLON.match(ref)
    if m and m.group("rest") and not _VERSION.match(m.group("rest").strip("/")):
        rest = m.group("rest").lstrip("/")
        first, _, tail = rest.partition("/")
        if _VERSION.match(first):
            ref = f"dandi://{m.group('name')}/{m.group('id')}@{first}/{tail}"
        else:
            ref = f"dandi://{m.group('name')}/{m.group('id')}/{rest}"
    elif m:
        ref = f"dandi://{m.group('name')}/{m.group('id')}" + (
            f"@{m.group('rest').strip('/')}" if m.group("rest") else ""
        )
    override = configured_instance(instance)
    m = _DANDI_SCHEME.match(ref)
    if m and override is not None and m.group("name").lower() in ("dandi", override.name.lower()):
        api = override.api.rstrip("/")
        version = m.group("version")
        path = m.group("path") or ""
        if version:
            return f"{api}/dandisets/{m.group('id')}/versions/{version}/assets/?path={quote(path, safe='/')}"
        # dandi's API-URL form needs a version; keep the path in the (web) files?location form
        return f"{api}/dandiset/{m.group('id')}/files?location={quote(path, safe='/')}" if path else (
            f"{api}/dandisets/{m.group('id')}/"
        )
    return ref


def resolve_asset(reference: str, instance: str | None = None) -> DandiAsset:
    """Find the single NWB asset a reference names and its content (blob) URL, via DandiAPIClient."""
    from dandi.dandiapi import DandiAPIClient
    from dandi.dandiarchive import (
        AssetFolderURL,
        AssetIDURL,
        AssetItemURL,
        AssetPathPrefixURL,
        BaseAssetIDURL,
        parse_dandi_url,
    )
    from dandi.exceptions import NotFoundError, UnknownURLError

    normalized = normalize_reference(reference, instance)
    try:
        parsed = parse_dandi_url(normalized)
    except UnknownURLError:
        raise SourceError(describe(reference, None, "not a DANDI reference dandi can parse")) from None
    except Exception as exc:  # network trouble while dandi asks the server for its info
        raise SourceError(describe(reference, None, f"cannot reach the DANDI instance ({_request_failure(exc)})")) from None

    client = DandiAPIClient(dandi_instance=parsed.instance)
    try:
        if isinstance(parsed, BaseAssetIDURL):
            asset = client.get_asset(parsed.asset_id)
            dandiset_id = getattr(asset, "dandiset_id", None)
            version_id = getattr(asset, "version_id", None)
        else:
            if parsed.dandiset_id is None:
                raise SourceError(describe(reference, None, "names no dandiset"))
            dandiset = client.get_dandiset(parsed.dandiset_id, parsed.version_id)
            if isinstance(parsed, AssetIDURL):
                asset = dandiset.get_asset(parsed.asset_id)
            elif isinstance(parsed, AssetItemURL):
                asset = dandiset.get_asset_by_path(parsed.path)
            elif isinstance(parsed, (AssetFolderURL, AssetPathPrefixURL)):
                asset = _single_nwb(reference, dandiset, parsed.path)
            else:
                raise SourceError(
                    describe(reference, None, "names a whole dandiset; give the path of one .nwb asset")
                )
            dandiset_id, version_id = dandiset.identifier, dandiset.version_id
        content_url = asset.get_content_url(follow_redirects=1, strip_query=True)
    except SourceError:
        raise
    except NotFoundError as exc:
        raise SourceError(describe(reference, None, f"not found on {parsed.instance.api}: {_request_failure(exc)}")) from None
    except Exception as exc:
        raise SourceError(describe(reference, None, f"DANDI API request failed: {_request_failure(exc)}")) from None
    finally:
        client.session.close()
    return DandiAsset(
        reference=reference,
        api_url=parsed.instance.api,
        dandiset_id=None if dandiset_id is None else str(dandiset_id),
        version_id=None if version_id is None else str(version_id),
        path=asset.path,
        asset_id=asset.identifier,
        content_url=content_url,
    )


def _single_nwb(reference: str, dandiset, path: str):
    """The asset at ``path`` or, for a folder or prefix, its only .nwb asset."""
    from dandi.exceptions import NotFoundError

    exact = path.rstrip("/")
    try:
        return dandiset.get_asset_by_path(exact)
    except NotFoundError:
        pass
    found = [a for a in dandiset.get_assets_with_path_prefix(path) if a.path.endswith(".nwb")]
    if len(found) == 1:
        return found[0]
    if not found:
        raise SourceError(describe(reference, exact, "no asset at this path (and no .nwb asset under it)"))
    names = ", ".join(a.path for a in found[:10]) + (" ..." if len(found) > 10 else "")
    raise SourceError(describe(reference, path, f"{len(found)} .nwb assets under this path; pick one of: {names}"))


def _request_failure(exc: BaseException) -> str:
    """A short reason for a failed request: unreachable host, refused connection or time-out, else the message."""
    text = " ".join(str(exc).split())
    host = re.search(r"host='([^']+)'", text)
    port = re.search(r"port=(\d+)", text)
    where = f" {host.group(1)}" if host else ""
    if "NameResolutionError" in text or "Failed to resolve" in text or "Name or service not known" in text:
        return f"cannot resolve{where} (offline, or a wrong DANDI_INSTANCE?)"
    if "Connection refused" in text or "Errno 111" in text:
        return f"connection refused by{where}" + (f":{port.group(1)}" if host and port else "")
    if "timed out" in text.lower() or "Timeout" in type(exc).__name__:
        return f"no answer from{where} (timed out)"
    if "Could not retrieve server info" in text:
        return text.split(",")[0][:200]
    return text[:300] or type(exc).__name__
