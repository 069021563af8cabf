"""After (and during) a search: the population's history from the recorded results, the winner's
lineage, a text summary and the progress plot."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..search_space import HyperParam
from .trainable import METRIC, _fmt, _member_of, member_name


def _r(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.7g}") if math.isfinite(v) else None
    return v


def _clean(obj: Any) -> Any:
    """JSON-safe copy: floats rounded to 7 digits, non-finite ones as null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _r(obj)


# ---------------------------------------------------------------------------- history
def build_history(state: dict[str, Any], space: Mapping[str, HyperParam], interval: int) -> dict[str, Any]:
    """JSON-serialisable record from the population's record: per member its metric per epoch,
    hyper-parameter segments and nodes; every exploit; the selection policy's own log."""
    trials: dict[str, Any] = {}
    exploits: list[dict[str, Any]] = []
    for name, rows in state["rows"].items():
        segments: list[dict[str, Any]] = []
        prev_hp: dict[str, Any] | None = None
        for row in rows:
            it = int(row["training_iteration"])
            hp = {k: _r(v) for k, v in (row.get("hp") or {}).items() if k in space}
            if row.get("exploited_from"):
                exploits.append({"trial": name, "source": row["exploited_from"], "iteration": it - 1,
                                 "hp_before": prev_hp, "hp_after": hp})
            if not segments or hp != segments[-1]["hp"] or row.get("exploited_from"):
                segments.append({"start": it, "end": it, "hp": hp, "exploited_from": row.get("exploited_from") or None})
            else:
                segments[-1]["end"] = it
            prev_hp = hp
        member = next((m for m in state["members"] if member_name(m["member"]) == name), {})
        trials[name] = {
            "member": _member_of(name),
            "iterations": [int(r["training_iteration"]) for r in rows],
            METRIC: [_r(r.get(METRIC)) for r in rows],
            "val_loss": [_r(r.get("val_loss")) for r in rows],
            "hp_segments": segments,
            "initial_hp": segments[0]["hp"] if segments else {},
            "final_hp": segments[-1]["hp"] if segments else {},
            "nodes": sorted({str(r.get("node_id", "")) for r in rows if r.get("node_id")}),
            "status": "diverged" if member.get("diverged") else "ok",
        }
        if any(r.get("val_loss_per_session") for r in rows):  # a stitched model: the pooled loss's parts
            trials[name]["val_loss_per_session"] = [_clean(r.get("val_loss_per_session")) for r in rows]
    return {
        "metric": METRIC, "mode": "min", "population": len(state["members"]), "perturbation_interval": interval,
        "generations": int(state["completed"]), "search_space": {k: p.to_dict() for k, p in space.items()},
        "trials": trials, "exploits": exploits, "policy_log": _clean(state["policy_log"]),
        "generation_log": _clean(state["generation_log"]),
    }


def _lineage(history: dict[str, Any], trial: str, iteration: int) -> list[dict[str, Any]]:
    """The winner's hyper-parameter trajectory through the members it copied, oldest first."""
    out: list[dict[str, Any]] = []
    seen = 0
    while trial in history["trials"] and seen < 1000:
        seen += 1
        segs = [s for s in history["trials"][trial]["hp_segments"] if s["start"] <= iteration]
        src = None
        for s in reversed(segs):
            out.append({"trial": trial, "start": s["start"], "end": min(s["end"], iteration), "hp": s["hp"]})
            if s["exploited_from"]:
                src, iteration = s["exploited_from"], s["start"] - 1
                break
        if src is None:
            break
        trial = src
    return list(reversed(out))


# ---------------------------------------------------------------------------- summary and plot
def summary_table(history: dict[str, Any]) -> str:
    """A text table: one row per member with its final and best metric, exploits and nodes."""
    n_exploits: dict[str, int] = {}
    for e in history["exploits"]:
        n_exploits[e["trial"]] = n_exploits.get(e["trial"], 0) + 1
    winner = history.get("winner", {}).get("trial")
    lines = [f"AutoLFADS: {history['population']} members, {history['generations']} generations of "
             f"{history['perturbation_interval']} epochs, {len(history['exploits'])} exploit/explore steps "
             f"({history.get('stop_reason', '')})",
             f"population: {history.get('population_rule') or 'given'}; selection: worst "
             f"{history.get('quantile_fraction', 0.25):g} copy the best after each generation"
             + (f"; member {history['anchor']['member']} trains the preset and is never replaced"
                if history.get("anchor") else ""),
             f"{'member':>6} {'final ' + METRIC:>24} {'best':>10} {'exploits':>8} {'nodes':>5}"]
    for tid, t in sorted(history["trials"].items(), key=lambda kv: kv[1]["member"]):
        vals = [v for v in t[METRIC] if v is not None]
        mark = " *" if tid == winner else ""
        lines.append(f"{t['member']:>6} {vals[-1] if vals else float('nan'):>24.6f} "
                     f"{min(vals) if vals else float('nan'):>10.6f} {n_exploits.get(tid, 0):>8} "
                     f"{len(t['nodes']):>5}{mark}")
    if winner:
        w = history["winner"]
        lines.append(f"best: member {w['member']} at epoch {w['iteration']}, {METRIC} {w[METRIC]:.6f}; "
                     + ", ".join(f"{k}={_fmt(v)}" for k, v in w["hp"].items()))
    return "\n".join(lines)


def plot_history(history: dict[str, Any], path: str | Path) -> Path:
    """Metric per member over epochs (exploits drawn as jumps from the copied member) and the
    hyper-parameter trajectories; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = history["search_space"]
    n_hp = len(space)
    ncols = 4
    nrows = 1 + math.ceil(n_hp / ncols)
    fig = plt.figure(figsize=(14, 3.2 * nrows))
    gs = fig.add_gridspec(nrows, ncols)
    ax = fig.add_subplot(gs[0, :])
    cmap = plt.get_cmap("tab10")
    winner = history.get("winner", {}).get("trial")
    trials = history["trials"]
    colour = {tid: cmap(t["member"] % 10) for tid, t in trials.items()}
    for tid, t in trials.items():
        its, vals = t["iterations"], t[METRIC]
        # split the trace at exploits so a copied trajectory is drawn as a jump
        starts = [0] + [i for i in range(1, len(its)) if its[i] <= its[i - 1] or
                        (t["hp_segments"] and any(s["start"] == its[i] and s["exploited_from"]
                                                  for s in t["hp_segments"]))]
        bounds = starts + [len(its)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            ax.plot(its[a:b], vals[a:b], color=colour[tid], lw=2.5 if tid == winner else 1.2,
                    label=f"member {t['member']}" + (" (best)" if tid == winner else "") if a == 0 else None)
    for e in history["exploits"]:
        src = trials.get(e["source"])
        dst = trials.get(e["trial"])
        if not src or not dst:
            continue
        it = e["iteration"]
        if it in src["iterations"] and it + 1 in dst["iterations"]:
            y0 = src[METRIC][src["iterations"].index(it)]
            y1 = dst[METRIC][dst["iterations"].index(it + 1)]
            ax.plot([it, it + 1], [y0, y1], ls=":", color=colour[e["trial"]], lw=1)
            ax.plot([it], [y0], marker="o", ms=4, color=colour[e["trial"]])
    k = history["perturbation_interval"]
    for g in range(1, history["generations"] + 1):
        ax.axvline(g * k, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(f"epoch (generation lines every {k})")
    ax.set_ylabel(METRIC)
    ax.set_title(f"AutoLFADS population ({len(history['exploits'])} exploit/explore steps; dotted = copy)")
    ax.legend(fontsize=8, ncol=min(len(trials), 6))
    for j, (name, p) in enumerate(space.items()):
        axh = fig.add_subplot(gs[1 + j // ncols, j % ncols])
        for tid, t in trials.items():
            xs, ys = [], []
            for s in t["hp_segments"]:
                xs += [s["start"], s["end"]]
                ys += [s["hp"].get(name), s["hp"].get(name)]
            axh.plot(xs, ys, color=colour[tid], lw=2 if tid == winner else 1)
        if p.get("log"):
            axh.set_yscale("log")
        axh.set_title(name, fontsize=9)
        axh.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
