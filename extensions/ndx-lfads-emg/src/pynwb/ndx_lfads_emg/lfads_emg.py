"""Python classes of the extension's three types, with the checks the schema language cannot express.

The classes extend those pynwb generates from the spec: shapes are checked when an object is
created in Python (not when it is read from a file), JSON fields accept dicts and are stored as text.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from hdmf.utils import docval, get_data_shape, get_docval, popargs
from pynwb import get_class, register_class

from . import NAMESPACE

__all__ = ["MuscleActivation", "LatentFactors", "LFADSModelProvenance", "JSON_FIELDS"]

# LFADSModelProvenance's text datasets that hold a JSON object (the spec says so for each).
JSON_FIELDS = ("config", "preprocessing", "training_metrics", "software_versions", "pbt_history")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

_MuscleActivationBase = get_class("MuscleActivation", NAMESPACE)
_LatentFactorsBase = get_class("LatentFactors", NAMESPACE)
_LFADSModelProvenanceBase = get_class("LFADSModelProvenance", NAMESPACE)


def _shape(value: Any) -> tuple | None:
    """Shape of an array-like, or None when it cannot be known without reading it."""
    if value is None:
        return None
    try:
        shape = get_data_shape(value)
    except Exception:  # noqa: BLE001 - iterators of unknown length
        return None
    return tuple(shape) if shape is not None else None


def _check_columns(name: str, data_shape: tuple | None, field: str, value: Any) -> None:
    """Raise ValueError if a per-column field does not have one entry per column of `data`."""
    if value is None or data_shape is None or len(data_shape) < 2 or data_shape[1] is None:
        return
    n = len(value)
    if n != data_shape[1]:
        raise ValueError(f"{name}: '{field}' has {n} entries but 'data' has {data_shape[1]} columns")


def _check_2d(name: str, data_shape: tuple | None, field: str = "data") -> None:
    """Raise ValueError if a dataset is known not to be 2-D (time, channels)."""
    if data_shape is not None and len(data_shape) != 2:
        raise ValueError(f"{name}: '{field}' must be 2-D (time, columns), got shape {data_shape}")


class MuscleActivation(_MuscleActivationBase):
    """Estimated activation per muscle (time, muscles), with its method, muscle identity and uncertainty."""

    @docval(*get_docval(_MuscleActivationBase.__init__))
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self._in_construct_mode:
            self._validate()

    def _validate(self) -> None:
        """Check shapes and that each column names its muscle."""
        shape = _shape(self.data)
        _check_2d(self.name, shape)
        if self.electrodes is None and self.muscle_names is None:
            raise ValueError(
                f"{self.name}: give 'electrodes' (rows of the electrodes table) and/or 'muscle_names' "
                "(one per column) so each column names its muscle"
            )
        _check_columns(self.name, shape, "muscle_names", self.muscle_names)
        _check_columns(self.name, shape, "electrodes", self.electrodes)
        unc = _shape(self.uncertainty)
        if unc is not None and shape is not None and unc != shape:
            raise ValueError(f"{self.name}: 'uncertainty' has shape {unc} but 'data' has shape {shape}")

    @property
    def muscles(self) -> list[str]:
        """Muscle of each column: `muscle_names`, else the electrodes' `location` (else their row ids)."""
        if self.muscle_names is not None:
            return [m.decode() if isinstance(m, bytes) else str(m) for m in self.muscle_names[:]]
        table = self.electrodes.table
        rows = list(self.electrodes.data[:])
        if "location" in table.colnames:
            return [str(table["location"][i]) for i in rows]
        return [str(table.id[i]) for i in rows]


class LatentFactors(_LatentFactorsBase):
    """LFADS latent factors (time, factors) with optional inferred inputs (time, inputs)."""

    @docval(*get_docval(_LatentFactorsBase.__init__))
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self._in_construct_mode:
            shape = _shape(self.data)
            _check_2d(self.name, shape)
            inputs = _shape(self.inferred_inputs)
            if inputs is not None:
                _check_2d(self.name, inputs, "inferred_inputs")
                if shape is not None and inputs[0] != shape[0]:
                    raise ValueError(
                        f"{self.name}: 'inferred_inputs' has {inputs[0]} time points but 'data' has {shape[0]}"
                    )


def _provenance_docval() -> list[dict]:
    """Constructor arguments of the generated class, widened to accept ints and dicts."""
    args = []
    for arg in get_docval(_LFADSModelProvenanceBase.__init__):
        arg = dict(arg)
        if arg["name"] == "random_seed":
            arg["type"] = (int, np.integer)
        elif arg["name"] in JSON_FIELDS:
            arg["type"] = (str, dict)
            arg["doc"] = arg["doc"] + " A dict is serialised with json.dumps."
        args.append(arg)
    return args


def _to_json(name: str, field: str, value: Any) -> str | None:
    """Serialise a dict to JSON text, or check that a string is the JSON text of an object."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: '{field}' is not valid JSON ({exc})") from None
    else:
        parsed, value = value, json.dumps(value, default=str)
    if not isinstance(parsed, dict):
        raise ValueError(f"{name}: '{field}' must be a JSON object (dict), got {type(parsed).__name__}")
    return value


class LFADSModelProvenance(_LFADSModelProvenanceBase):
    """How an LFADS/AutoLFADS estimate was made: source, preprocessing, config, metrics, seed, versions."""

    @docval(*_provenance_docval())
    def __init__(self, **kwargs: Any) -> None:
        construct = getattr(self, "_in_construct_mode", False)
        if not construct:
            name = kwargs["name"]
            for field in JSON_FIELDS:
                if field in kwargs:
                    kwargs[field] = _to_json(name, field, kwargs[field])
            seed = popargs("random_seed", kwargs)
            kwargs["random_seed"] = np.int64(seed)
            digest = kwargs["weights_sha256"]
            if not _SHA256.match(digest):
                raise ValueError(f"{name}: 'weights_sha256' must be 64 lower-case hex digits, got {digest!r}")
        super().__init__(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        """All fields, with the JSON text fields parsed into Python objects."""
        out: dict[str, Any] = {}
        for field in JSON_FIELDS:
            value = getattr(self, field)
            out[field] = None if value is None else json.loads(value)
        out["random_seed"] = int(self.random_seed)
        for field in ("weights_sha256", "source_file_identifier", "source_series_path", "source_url"):
            out[field] = getattr(self, field)
        return out


for _cls in (MuscleActivation, LatentFactors, LFADSModelProvenance):
    register_class(_cls.__name__, NAMESPACE, _cls)
