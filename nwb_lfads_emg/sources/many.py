"""Several sources at once: a dandiset (or a local folder) with `--match GLOB` becomes its matching assets."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from ..errors import SourceError, describe
from .dandi import (
    _DANDI_SCHEME,
    _INSTANCE_COLON,
    _VERSION,
    _request_failure,
    configured_instance,
    looks_like_dandi,
    normalize_reference,
)


def expand_sources(sources: Sequence[str], match: str | None = None) -> list[str]:
    """Each source as given, except that with `match` a dandiset (or a local folder) becomes the .nwb
    assets (files) whose path matches the glob, in path order; asset references are streamed."""
    out: list[str] = []
    for source in sources:
        source = str(source)
        if match is None:
            out.append(source)
        elif looks_like_dandi(source):
            out.extend(dandiset_assets(source, match))
        elif Path(source).is_dir():
            found = sorted(str(p) for p in Path(source).rglob("*.nwb") if fnmatch.fnmatch(
                p.relative_to(source).as_posix(), match))
            if not found:
                raise SourceError(describe(source, None, f"no .nwb file in this folder matches --match {match!r}"))
            out.extend(found)
        else:
            out.append(source)
    if len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})
        raise SourceError(describe(dup[0], None, "given more than once (each session once, please)"))
    return out


def dandiset_assets(reference: str, match: str) -> list[str]:
    """API references of the .nwb assets of a dandiset (version as given, else draft) matching `match`."""
    from dandi.dandiapi import DandiAPIClient
    from dandi.dandiarchive import parse_dandi_url
    from dandi.exceptions import UnknownURLError

    parsed = _dandiset_reference(reference)
    try:
        parsed = parsed or parse_dandi_url(normalize_reference(reference))
    except UnknownURLError:
        raise SourceError(describe(reference, None, "not a DANDI reference dandi can parse")) from None
    except Exception as exc:  # noqa: BLE001 - network trouble while dandi asks the server
        raise SourceError(describe(reference, None, f"cannot reach the DANDI instance ({_request_failure(exc)})")) from None
    if parsed.dandiset_id is None:
        raise SourceError(describe(reference, None, "names no dandiset (--match selects assets of a dandiset)"))
    client = DandiAPIClient(dandi_instance=parsed.instance)
    try:
        dandiset = client.get_dandiset(parsed.dandiset_id, parsed.version_id or "draft")
        prefix = (getattr(parsed, "path", None) or "").strip("/")
        paths = sorted(a.path for a in dandiset.get_assets() if a.path.endswith(".nwb") and a.path.startswith(prefix)
                       and fnmatch.fnmatch(a.path, match))
        version = dandiset.version_id
    except Exception as exc:  # noqa: BLE001 - one line, whatever the client raised
        raise SourceError(describe(reference, None, f"cannot list the dandiset's assets ({_request_failure(exc)})")) from None
    finally:
        client.session.close()
    if not paths:
        raise SourceError(describe(reference, None, f"no .nwb asset matches --match {match!r}"))
    api = parsed.instance.api.rstrip("/")
    return [f"{api}/dandisets/{parsed.dandiset_id}/versions/{version}/assets/?path={quote(p, safe='/')}"
            for p in paths]


def _dandiset_reference(reference: str):  # -> a parsed-URL-like object, or None
    """`dandi://NAME/ID[@VERSION][/PREFIX]` or `NAME:ID[/VERSION]` without an asset: id, version, instance."""
    from types import SimpleNamespace

    from dandi.consts import known_instances

    m = _DANDI_SCHEME.match(reference.strip())
    if m:
        name, ident, version, path = m.group("name"), m.group("id"), m.group("version"), m.group("path") or ""
    else:
        m = _INSTANCE_COLON.match(reference.strip())
        if not m:
            return None
        rest = (m.group("rest") or "").strip("/")
        name, ident = m.group("name"), m.group("id")
        version, path = (rest, "") if _VERSION.match(rest or "-") else (None, rest)
    override = configured_instance()
    if override is not None and name.lower() in ("dandi", override.name.lower()):
        instance = override
    elif name.lower() in known_instances:
        instance = known_instances[name.lower()]
    else:
        raise SourceError(describe(reference, None, f"unknown DANDI instance {name!r}"))
    return SimpleNamespace(instance=instance, dandiset_id=ident, version_id=version, path=path)


__all__ = ["expand_sources", "dandiset_assets"]
