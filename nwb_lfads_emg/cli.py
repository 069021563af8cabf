"""Command-line interface: argument parsing only; each command calls the public Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import NwbLfadsEmgError
from .files import Interrupted, signals_interrupt


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .sources import inspect_source

    print(inspect_source(args.source, cache_dir=args.cache_dir))
    return 0


# --flag -> PBTSettings field (a flag given on the command line wins over --pbt-config)
_PBT_FLAGS = {"population": "population", "ray_address": "ray_address", "gpus_per_trial": "gpus_per_trial",
              "cpus_per_trial": "cpus_per_trial", "pbt_interval": "interval", "pbt_burn_in": "burn_in",
              "pbt_patience": "patience_generations", "pbt_min_improvement": "min_improvement",
              "pbt_quantile": "quantile_fraction", "pbt_storage": "storage_path",
              "pbt_shared_data": "shared_data_path"}


def _pbt_settings(args: argparse.Namespace) -> Any:
    from .pipeline import read_pbt_settings

    values: dict[str, Any] = {}
    for flag, name in _PBT_FLAGS.items():
        if getattr(args, flag) is not None:
            values[name] = getattr(args, flag)
    if args.pbt_restart:
        values["resume"] = False
    if args.pbt_random_start:
        values["start_from_config"] = False
    return read_pbt_settings(args.pbt_config, values)


def _job(args: argparse.Namespace) -> Any:
    from .pipeline import JobConfig
    from .preprocess import PreprocessConfig

    return JobConfig(
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        max_epochs=args.max_epochs,
        pbt=args.pbt,
        pbt_settings=_pbt_settings(args),
        lowpass_cutoff_hz=args.lowpass_hz,
        bin_ms=args.bin_ms,
        segment_ms=args.segment_ms,
        preprocess=PreprocessConfig(input=args.input),
        progress=not args.quiet,
        irregular=args.irregular,
        on_nonfinite=args.on_nonfinite,
        drop_dead=args.drop_dead,
    )


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    stem = Path(str(args.source[0]).rstrip("/").split("/")[-1]).stem or "run"
    return Path("runs") / stem


def _cmd_run(args: argparse.Namespace) -> int:
    from .sessions import run_sources

    for out in run_sources(args.source, _run_dir(args), out=args.out, in_place=args.in_place, emg=args.emg,
                           overwrite=args.overwrite, cache_dir=args.cache_dir, job=_job(args), match=args.match):
        print(f"wrote {out}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .sessions import fit_sources

    result = fit_sources(args.source, args.run_dir, args.emg, args.cache_dir, _job(args), match=args.match)
    print(f"trained model in {args.run_dir} (best validation loss {result.best_val_loss:.4f})")
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from .sessions import annotate_any

    out = annotate_any(args.source, args.run_dir, out=args.out, in_place=args.in_place, emg=args.emg,
                   overwrite=args.overwrite, cache_dir=args.cache_dir, adapt=args.adapt,
                   adapt_epochs=args.max_epochs)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .analyses import summary_of
    from .evaluate import evaluate_file, summarize

    table = evaluate_file(args.file, behavior=args.behavior, report_dir=args.report, cycles=args.cycles,
                          cycles_from=args.cycles_from, holds=args.holds, phase_bins=args.phase_bins,
                          progress=not args.quiet)
    print("mean R^2 per method and analysis:")
    print(summarize(table).round(3).to_string())
    for name, records in table.attrs.get("analyses", {}).items():
        print(f"\n{name}:")
        print(summary_of(name, records).to_string())
    if args.report:
        print(f"report in {args.report}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(Path(args.out), max_epochs=args.max_epochs, seed=args.seed, progress=not args.quiet)
    print(f"demo report: {report}")
    return 0


def _add_source_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        p.add_argument("source", nargs="+", help="local NWB paths, DANDI references or https URLs; several train one "
                       "stitched model (a read-in/read-out per session)")
        p.add_argument("--match", default=None, metavar="GLOB",
                       help="a SOURCE that is a dandiset (or a folder) stands for its .nwb assets whose path matches GLOB")
    else:
        p.add_argument("source", help="local NWB path, DANDI reference (dandi://..., DANDI:..., archive URL) or https URL")
    p.add_argument("--emg", default=None, metavar="SERIES",
                   help="EMG series (see `inspect`): a path or name, a glob ('TimeSeriesEMG*') or a comma-separated "
                   "list of 1-D per-muscle series; any numeric (time, channels) series may be named; needed when "
                   "a file holds several candidates")
    p.add_argument("--cache-dir", default=None, help="on-disk cache for streamed bytes")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", default=None, metavar="OUT.nwb",
                       help="write a new annotated file here (with several sources: a folder, one file each)")
    where.add_argument("--in-place", action="store_true",
                       help="annotate the local file itself (temp file, validate, atomic replace)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results / an existing --out file")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="auto", choices=["auto", "demo", "default", "paper"],
                   help="model preset; auto (default): sizes, bins, segments and epochs from the data and device")
    p.add_argument("--pbt", action="store_true", help="AutoLFADS: population-based training on Ray (one or several sources)")
    p.add_argument("--population", type=int, default=None, help="PBT population size (default: 4-6 on CPU, one per core; 20 on CUDA)")
    p.add_argument("--ray-address", default=None, help="attach to this Ray cluster (default: $RAY_ADDRESS or local)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share of each PBT member (default: 1/population, at most 10 per GPU, when CUDA is used)")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs (and torch threads) per PBT member (default 1)")
    p.add_argument("--pbt-interval", type=int, default=None,
                   help="epochs per PBT generation, between selections (default max-epochs/4, at most 25)")
    p.add_argument("--pbt-burn-in", type=int, default=None, help="epochs before the first selection (default: one interval)")
    p.add_argument("--pbt-patience", type=int, default=None,
                   help="stop after this many generations without improvement (default 4)")
    p.add_argument("--pbt-min-improvement", type=float, default=None,
                   help="smallest improvement of the best loss that counts (default 5e-4)")
    p.add_argument("--pbt-quantile", type=float, default=None,
                   help="truncation selection: the worst fraction copies the best fraction after each generation (default 0.25)")
    p.add_argument("--pbt-storage", default=None, metavar="PATH",
                   help="local folder for the population's states (default RUN_DIR; states reach it through Ray)")
    p.add_argument("--pbt-shared-data", default=None, metavar="PATH",
                   help="a path every node sees, for the training data (default: Ray's object store)")
    p.add_argument("--pbt-restart", action="store_true", help="start the search afresh instead of resuming it")
    p.add_argument("--pbt-random-start", action="store_true",
                   help="draw every member from the search space (default: member 0 trains the preset and is never replaced)")
    p.add_argument("--pbt-config", default=None, metavar="FILE.json",
                   help="PBT settings as JSON (the fields of pipeline.PBTSettings, e.g. search_space); flags win")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=None, help="override the preset's epoch limit")
    p.add_argument("--bin-ms", type=float, default=None,
                   help="bin width of the model input (ms); default: from the data (auto preset), else 5, or the "
                   "native sample interval of input sampled below 200 Hz")
    p.add_argument("--segment-ms", type=float, default=None,
                   help="length of the training segments (ms); default: from the data (auto preset), else the preset's")
    p.add_argument("--input", default="auto", choices=["auto", "raw", "envelope"],
                   help="what the series holds: raw EMG (notch, high-pass, rectify, bin) or an envelope already "
                   "rectified and smoothed (binned as it is); auto decides from the rate, description and signs")
    p.add_argument("--irregular", default="raise", choices=["raise", "resample"],
                   help="irregular timestamps (not gaps between trials, which are handled): refuse, or "
                   "interpolate onto a uniform grid")
    p.add_argument("--on-nonfinite", default="raise", choices=["raise", "mask"],
                   help="NaN/Inf samples in the EMG: refuse, or set them to 0")
    p.add_argument("--drop-dead", action="store_true", help="leave constant (dead) channels out instead of refusing")
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
        "provenance back into NWB. Several sources: one stitched model, every session annotated.",
        epilog="example: nwb-lfads-emg run session.nwb --emg EMG --out session_annotated.nwb --preset demo",
    )
    _add_source_args(p, many=True)
    _add_output_args(p)
    _add_training_args(p)
    p.add_argument("--run-dir", default=None, help="where checkpoints and the model go (default runs/<name>)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "fit", help="train a model on one session, or one stitched model on several (first half of `run`)",
        description="Preprocess and train; the model, its settings and metrics go into --run-dir. Several "
        "sources (or a dandiset with --match) train one model with a read-in/read-out per session.",
        epilog="example: nwb-lfads-emg fit dandi://DANDI/000999@draft --match 'sub-rat1/*.nwb' --emg EMG "
        "--run-dir runs/rat1",
    )
    _add_source_args(p, many=True)
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
    p.add_argument("--adapt", action="store_true",
                   help="a session a stitched model never saw: fit its read-in/read-out and its own copy of the "
                        "encoders and controller first (the shared generator, the dynamics, frozen)")
    p.add_argument("--max-epochs", type=int, default=None, help="with --adapt: epoch limit of the adaptation")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser(
        "evaluate", help="compare every activation estimate in a file",
        description="Decode behaviour from every MuscleActivation in the file (lagged ridge, blocked CV), "
        "R^2 against ground truth where present, spikes -> estimate; table and figures.",
        epilog="examples: nwb-lfads-emg evaluate session_annotated.nwb --report report/ --cycles gait_cycles; "
        "nwb-lfads-emg evaluate iso_annotated.nwb --behavior force --holds holds --report report/",
    )
    p.add_argument("file", help="an NWB file holding MuscleActivation objects")
    p.add_argument("--behavior", default=None, help="behaviour series to decode (default: all in processing/behavior)")
    p.add_argument("--report", default=None, metavar="DIR", help="write table (CSV/JSON) and figures (PNG, HTML)")
    cyc = p.add_mutually_exclusive_group()
    cyc.add_argument("--cycles", default=None, metavar="NAME",
                     help="TimeIntervals table of behavioural cycles (e.g. gait_cycles, trials): phase-resolved "
                     "frequency response")
    cyc.add_argument("--cycles-from", default=None, metavar="SERIES",
                     help="derive cycles from the Hilbert phase of this behaviour series (e.g. a joint angle)")
    p.add_argument("--phase-bins", type=int, default=10, help="phase bins per cycle (default 10)")
    p.add_argument("--holds", default=None, metavar="NAME",
                   help="TimeIntervals table of isometric holds: oscillations, coherence with the --behavior "
                   "force and band ablation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
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
    _show_warnings()
    from .sources.logs import route_logs

    route_logs(debug)
    try:
        with signals_interrupt():
            return int(args.func(args) or 0)
    except NwbLfadsEmgError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"error: stopped by {exc}; temporary files were removed, the input file is unchanged",
              file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def run_as_typed(*args: object, expect: int = 0) -> int:
    """Run `nwb-lfads-emg ARGS` as if typed in a terminal (echoed first); stop unless it exits with `expect`.

    For notebooks and scripts (the tutorials): the command is shown, so it can be copied to a shell.
    """
    words = [str(a) for a in args]
    print("$ nwb-lfads-emg " + " ".join(words))
    code = main(words)
    if code != expect:
        raise SystemExit(f"nwb-lfads-emg {words[0]} exited with {code}, expected {expect}")
    return code


def _show_warnings() -> None:
    """Print the package's warnings (e.g. the input's own DANDI issues) as one `warning: ...` line each."""
    import logging

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}"

    class CurrentStderr(logging.StreamHandler):  # whatever sys.stderr is when a warning is emitted
        @property
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, value: Any) -> None:
            pass

    logger = logging.getLogger("nwb_lfads_emg")
    if not any(getattr(h, "_nwb_lfads_emg", False) for h in logger.handlers):
        handler = CurrentStderr()
        handler.setFormatter(OneLine())
        handler.setLevel(logging.WARNING)
        handler._nwb_lfads_emg = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
