"""The built-in demo: simulate a session with known activation, run the whole job, write a report."""

from __future__ import annotations

from pathlib import Path

from .files import check_output_dir
from .pipeline import JobConfig, check_job, run
from .simulate import SimulationConfig, simulate_session, write_session_nwb

# The regime of the accuracy claim (narrow, low EMG carrier band: see tests/test_lfads_accuracy.py).
DEMO_SIMULATION = SimulationConfig(emg_model="carrier", n_muscles=8, duration_s=60.0, emg_rate=2000.0, task="locomotion", seed=0,
                                   carrier_band_hz=(15.0, 50.0))


def run_demo(out_dir: str | Path = "demo_output", max_epochs: int | None = None, seed: int = 0,
             progress: bool = True, simulation: SimulationConfig | None = None) -> Path:
    """Simulate, annotate with the `demo` preset, evaluate; returns the path of the HTML report."""
    from .evaluate import evaluate_file, summarize

    out_dir = Path(out_dir)
    job = JobConfig(preset="demo", seed=seed, max_epochs=max_epochs, progress=progress)
    check_output_dir(out_dir, "--out")
    check_job(job)
    out_dir.mkdir(parents=True, exist_ok=True)
    session = simulate_session(simulation or DEMO_SIMULATION)
    source = write_session_nwb(session, out_dir / "session.nwb")
    annotated = run(source, out_dir / "run", out=out_dir / "session_annotated.nwb", overwrite=True,
                    job=job)
    report_dir = out_dir / "report"
    table = evaluate_file(annotated, report_dir=report_dir)
    if progress:
        print(summarize(table).round(3).to_string())
    return report_dir / "report.html"
