"""Command-line interface: argument parsing only; each command calls the public Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import NwbLfadsEmgError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .sources import inspect_source

    print(inspect_source(args.source, cache_dir=args.cache_dir))
    return 0


def _job(args: argparse.Namespace) -> Any:
    from .pipeline import JobConfig
    from .preprocess import PreprocessConfig

    return JobConfig(
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        max_epochs=args.max_epochs,
        pbt=args.pbt,
        population=args.population,
        ray_address=args.ray_address,
        gpus_per_trial=args.gpus_per_trial,
        lowpass_cutoff_hz=args.lowpass_hz,
        bin_ms=args.bin_ms,
        segment_ms=args.segment_ms,
        preprocess=PreprocessConfig(),
        progress=not args.quiet,
    )


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    stem = Path(str(args.source).rstrip("/").split("/")[-1]).stem or "run"
    return Path("runs") / stem


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run

    out = run(args.source, _run_dir(args), out=args.out, in_place=args.in_place, emg=args.emg,
              overwrite=args.overwrite, cache_dir=args.cache_dir, job=_job(args))
    print(f"wrote {out}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .pipeline import choose_job_time_scales, fit, read

    job = _job(args)
    choose_job_time_scales(args.source, args.emg, args.cache_dir, job)
    emg_input, _ = read(args.source, args.emg, args.cache_dir, job.preprocess, job.chunk_s)
    result = fit(emg_input, args.run_dir, job)
    print(f"trained model in {args.run_dir} (best validation loss {result.best_val_loss:.4f})")
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from .pipeline import annotate

    out = annotate(args.source, args.run_dir, out=args.out, in_place=args.in_place, emg=args.emg,
                   overwrite=args.overwrite, cache_dir=args.cache_dir)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_file, summarize

    table = evaluate_file(args.file, behavior=args.behavior, report_dir=args.report)
    print("mean R^2 per method and analysis:")
    print(summarize(table).round(3).to_string())
    if args.report:
        print(f"report in {args.report}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(Path(args.out), max_epochs=args.max_epochs, seed=args.seed, progress=not args.quiet)
    print(f"demo report: {report}")
    return 0


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="local NWB path, DANDI reference (dandi://..., DANDI:..., archive URL) or https URL")
    p.add_argument("--emg", default=None, metavar="SERIES",
                   help="EMG series path or name (see `inspect`); needed when a file holds several")
    p.add_argument("--cache-dir", default=None, help="on-disk cache for streamed bytes")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", default=None, metavar="OUT.nwb", help="write a new annotated file here")
    where.add_argument("--in-place", action="store_true",
                       help="annotate the local file itself (temp file, validate, atomic replace)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results / an existing --out file")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="auto", choices=["auto", "demo", "default", "paper"],
                   help="model preset; auto (default): sizes, bins, segments and epochs from the data and device")
    p.add_argument("--pbt", action="store_true", help="AutoLFADS: population-based training on Ray Tune")
    p.add_argument("--population", type=int, default=4, help="PBT population size")
    p.add_argument("--ray-address", default=None, help="attach to this Ray cluster (default: $RAY_ADDRESS or local)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share of each PBT trial (default: 1/population, at most 4 per GPU, when CUDA is used)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=None, help="override the preset's epoch limit")
    p.add_argument("--bin-ms", type=float, default=None,
                   help="bin width of the model input (ms); default: from the data (auto preset), else 5")
    p.add_argument("--segment-ms", type=float, default=None,
                   help="length of the training segments (ms); default: from the data (auto preset), else the preset's")
    p.add_argument("--lowpass-hz", type=float, default=None,
                   help="fixed cutoff of the low-pass baseline (Hz); default: chosen per session from the EMG")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """Build the `nwb-lfads-emg` argument parser with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="nwb-lfads-emg",
        description="Estimate muscle activation from EMG in NWB/DANDI sessions with AutoLFADS.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "inspect",
        help="list EMG-like series, units and behaviour in a file or DANDI asset",
        description="List every series that could be EMG, the Units table and behavioural series.",
        epilog="example: nwb-lfads-emg inspect dandi://DANDI/000941@draft/sub-MonkeyL/sub-MonkeyL_ses-x.nwb",
    )
    p.add_argument("source", help="local NWB path, DANDI reference or https URL")
    p.add_argument("--cache-dir", default=None, help="on-disk cache for streamed bytes")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "run", help="preprocess, train, infer, compute baselines and write everything back",
        description="The whole job on one EMG series: preprocess, train (single model or AutoLFADS/PBT), "
        "infer, compute the low-pass and Bayesian-filter baselines, write MuscleActivation/LatentFactors/"
        "provenance back into NWB.",
        epilog="example: nwb-lfads-emg run session.nwb --emg EMG --out session_annotated.nwb --preset demo",
    )
    _add_source_args(p)
    _add_output_args(p)
    _add_training_args(p)
    p.add_argument("--run-dir", default=None, help="where checkpoints and the model go (default runs/<name>)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "fit", help="train a model on one session (first half of `run`)",
        description="Preprocess and train; the model, its settings and metrics go into --run-dir.",
        epilog="example: nwb-lfads-emg fit session.nwb --emg EMG --run-dir runs/rat1 --preset default --pbt",
    )
    _add_source_args(p)
    _add_training_args(p)
    p.add_argument("--run-dir", required=True, help="where checkpoints and the model go")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "annotate", help="apply a trained model to a session and write the results back",
        description="Infer with the model in --run-dir (same muscles), compute the baselines, write back.",
        epilog="example: nwb-lfads-emg annotate other_session.nwb --run-dir runs/rat1 --out other_annotated.nwb",
    )
    _add_source_args(p)
    _add_output_args(p)
    p.add_argument("--run-dir", required=True, help="run directory of a trained model")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser(
        "evaluate", help="compare every activation estimate in a file",
        description="Decode behaviour from every MuscleActivation in the file (lagged ridge, blocked CV), "
        "R^2 against ground truth where present, spikes -> estimate; table and figures.",
        epilog="example: nwb-lfads-emg evaluate session_annotated.nwb --report report/",
    )
    p.add_argument("file", help="an NWB file holding MuscleActivation objects")
    p.add_argument("--behavior", default=None, help="behaviour series to decode (default: all in processing/behavior)")
    p.add_argument("--report", default=None, metavar="DIR", help="write table (CSV/JSON) and figures (PNG, HTML)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "demo", help="simulate a session and run the whole job on it (a few minutes on a CPU)",
        description="Simulates an EMG session with known activation, runs the job with the demo preset, "
        "and writes the annotated NWB file and an HTML report.",
        epilog="example: nwb-lfads-emg demo --out demo_output",
    )
    p.add_argument("--out", default="demo_output", help="output folder")
    p.add_argument("--max-epochs", type=int, default=None, help="override the demo preset's epoch limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nwb-lfads-emg` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    try:
        return int(args.func(args) or 0)
    except NwbLfadsEmgError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
