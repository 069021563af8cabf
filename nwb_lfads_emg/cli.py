"""Command-line interface: argument parsing only; each command calls the public Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import NwbLfadsEmgError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .sources import inspect_source

    print(inspect_source(args.source, cache_dir=args.cache_dir))
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nwb-lfads-emg` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
