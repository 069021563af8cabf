"""One colour per method in every figure of the report (traces, bars, spectra and the analyses)."""

from __future__ import annotations

import zlib

METHOD_COLORS: dict[str, str] = {
    "truth": "#000000",
    "rectified": "#b0b0b0",
    "AutoLFADS": "#1f77b4",
    "LFADS": "#1f77b4",
    "LowPassOracle": "#8c564b",  # before "LowPass": the prefix rule below must not give it LowPass's orange
    "LowPass": "#ff7f0e",
    "BayesianFilter": "#2ca02c",
}
"""Fixed colours of the methods the package writes; any other name gets one from `_SPARE` by its hash."""

_SPARE = ("#d62728", "#9467bd", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f", "#aec7e8")


def method_color(name: str) -> str:
    """The colour of a method: fixed for known names (also as a prefix, e.g. `LowPass_5hz`), else stable
    by name (the same in every figure and every run)."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    for known, color in METHOD_COLORS.items():
        if name.lower().startswith(known.lower()) and known not in ("truth", "rectified"):
            return color
    return _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def envelope_color(i: int, n: int) -> str:
    """Shades of purple for a family of low-pass envelopes (light = smooth, dark = wide band)."""
    import matplotlib

    return matplotlib.colors.to_hex(matplotlib.colormaps["Purples"](0.35 + 0.6 * i / max(1, n - 1)))
