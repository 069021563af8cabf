"""Figures (PNG) and a simple HTML page for the comparison of activation estimates."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.signal as sps  # noqa: E402

from .analyses import summary_of  # noqa: E402
from .colors import method_color  # noqa: E402
from .metrics import save_table, summarize  # noqa: E402


def _unit_range(x: np.ndarray) -> np.ndarray:
    lo, hi = np.nanpercentile(x, 0.5), np.nanpercentile(x, 99.5)
    return (x - lo) / (hi - lo) if hi > lo else x - lo


def plot_traces(
    out_path: str | Path,
    rate: float,
    estimates: Mapping[str, np.ndarray],
    rectified: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    muscle_names: Sequence[str] | None = None,
    start_s: float | None = None,
    duration_s: float = 3.0,
    max_channels: int = 4,
) -> Path:
    """Example traces (a few seconds, a few muscles): rectified EMG, every estimate and the truth.

    Each trace is scaled to its own 0.5-99.5 percentile range so that shapes can be compared.
    """
    first = next(iter(estimates.values())) if estimates else rectified
    if first is None:
        raise ValueError("plot_traces: nothing to plot")
    n, n_ch = np.atleast_2d(np.asarray(first).T).T.shape
    n_win = min(n, int(duration_s * rate))
    i0 = int(max(0, (start_s * rate) if start_s is not None else (n - n_win) // 2))
    sl = slice(i0, i0 + n_win)
    t = (np.arange(n)[sl]) / rate
    chans = list(range(min(n_ch, max_channels)))
    names = list(muscle_names) if muscle_names is not None else [f"ch{i}" for i in range(n_ch)]
    fig, axes = plt.subplots(len(chans), 1, figsize=(10, 1.8 * len(chans) + 0.6), sharex=True, squeeze=False)
    for ax, c in zip(axes[:, 0], chans, strict=False):
        if rectified is not None:
            r = np.atleast_2d(np.asarray(rectified).T).T[sl, c]
            ax.plot(t, _unit_range(r), color=method_color("rectified"), lw=0.6, label="rectified")
        for name, e in estimates.items():
            ax.plot(t, _unit_range(np.atleast_2d(np.asarray(e).T).T[sl, c]), lw=1.0, label=name,
                    color=method_color(str(name)))
        if truth is not None:
            ax.plot(t, _unit_range(np.atleast_2d(np.asarray(truth).T).T[sl, c]), "k--", lw=1.0, label="truth")
        ax.set_ylabel(names[c] if c < len(names) else f"ch{c}")
        ax.set_ylim(-0.1, 1.3)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("time (s, from the first bin)")
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_r2_bars(table: pd.DataFrame, out_path: str | Path) -> Path:
    """Bars of R^2 per method and target, one panel per analysis."""
    analyses = list(dict.fromkeys(table["analysis"])) if not table.empty else []
    fig, axes = plt.subplots(len(analyses) or 1, 1, figsize=(10, 2.6 * max(1, len(analyses))), squeeze=False)
    for ax, an in zip(axes[:, 0], analyses, strict=False):
        sub = table[table["analysis"] == an]
        piv = sub.pivot_table(index="target", columns="method", values="r2", sort=False)
        piv.loc["mean"] = piv.mean(axis=0)
        piv.plot.bar(ax=ax, width=0.8, legend=False, color=[method_color(str(m)) for m in piv.columns])
        ax.set_title(an, fontsize=9)
        ax.set_ylabel("R$^2$")
        lo = float(np.nanmin(piv.values)) if piv.size else 0.0
        ax.set_ylim(min(0.0, lo), 1.0)
        ax.tick_params(axis="x", labelrotation=0, labelsize=7)
        ax.set_xlabel("")
    if analyses:
        axes[0, 0].legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_spectra(
    out_path: str | Path,
    rate: float,
    estimates: Mapping[str, np.ndarray],
    rectified: np.ndarray | None = None,
    truth: np.ndarray | None = None,
) -> Path:
    """Welch power spectra of each estimate (channels z-scored, then averaged), log-log."""
    series: dict[str, np.ndarray] = {}
    if rectified is not None:
        series["rectified"] = np.asarray(rectified)
    series.update({k: np.asarray(v) for k, v in estimates.items()})
    if truth is not None:
        series["truth"] = np.asarray(truth)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, x in series.items():
        x = np.atleast_2d(x.T).T.astype(np.float64)
        sd = x.std(axis=0)
        sd[sd == 0] = 1.0
        z = (x - x.mean(axis=0)) / sd
        f, p = sps.welch(z, fs=rate, nperseg=min(z.shape[0], int(4 * rate)), axis=0)
        style = "--" if name == "truth" else "-"
        ax.loglog(f[1:], p[1:].mean(axis=1), style, color=method_color(str(name)), lw=1.0, label=name)
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("power (z-scored units$^2$/Hz)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_html(out_dir: str | Path, table: pd.DataFrame, figures: Sequence[Path], title: str = "Evaluation",
               sections: Sequence[Any] = ()) -> Path:
    """A single HTML page: the summary and full tables, the PNGs (by relative path) and one section per
    analysis (title, what to look for, figure, summary table, links to its CSVs)."""
    out = Path(out_dir)
    summary = summarize(table)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        "<h2>Mean R<sup>2</sup> per method and analysis</h2>",
        summary.to_html(float_format=lambda v: f"{v:.3f}") if not summary.empty else "<p>no results</p>",
    ]
    for fig in figures:
        parts.append(f"<h2>{html.escape(Path(fig).stem.replace('_', ' '))}</h2>")
        parts.append(f"<img src='{html.escape(Path(fig).name)}' style='max-width:100%'>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        parts.append(f"<p><b>What to look for:</b> {html.escape(sec.look_for)}</p>")
        if sec.figure is not None:
            parts.append(f"<img src='{html.escape(Path(sec.figure).name)}' style='max-width:100%'>")
        small = summary_of(sec.name, sec.tables[sec.name])
        if sec.name == "phase_response":
            parts.append("<p>Median effective bandwidth (Hz, -3 dB) over muscles, per phase of the cycle:</p>")
        parts.append(small.to_html(index=sec.name == "phase_response"))
        links = ", ".join(f"<a href='{html.escape(k)}.csv'>{html.escape(k)}.csv</a>" for k in sec.tables)
        parts.append(f"<p>Full tables: {links}</p>")
    parts.append("<h2>All results</h2>")
    parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4f}"))
    parts.append("</body></html>")
    page = out / "report.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def make_report(
    out_dir: str | Path,
    table: pd.DataFrame,
    rate: float,
    estimates: Mapping[str, np.ndarray],
    rectified: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    muscle_names: Sequence[str] | None = None,
    title: str = "Activation estimates: evaluation",
    sections: Sequence[Any] = (),
) -> dict[str, Path]:
    """Write table (CSV, JSON), figures (traces, R^2 bars, spectra) and report.html into `out_dir`;
    `sections` (from `analyses.run_analyses`) add one section each."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, js = save_table(table, out)
    figs = [plot_traces(out / "traces.png", rate, estimates, rectified, truth, muscle_names)]
    if not table.empty:
        figs.append(plot_r2_bars(table, out / "r2_bars.png"))
    figs.append(plot_spectra(out / "spectra.png", rate, estimates, rectified, truth))
    page = write_html(out, table, figs, title, sections)
    paths = {"csv": csv, "json": js, "html": page}
    paths.update({p.stem: p for p in figs})
    paths.update({sec.name: sec.figure for sec in sections if sec.figure is not None})
    return paths
