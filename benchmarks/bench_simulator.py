"""Time the simulator on a 10-minute, 16-muscle session at 2 kHz (generation and NWB write)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nwb_lfads_emg.simulate import SimulationConfig, simulate_session, write_session_nwb


def main() -> None:
    """Print seconds to simulate and to write each layout, and the file sizes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--muscles", type=int, default=16)
    args = parser.parse_args()
    t0 = time.perf_counter()
    session = simulate_session(SimulationConfig(n_muscles=args.muscles, duration_s=60 * args.minutes))
    t_sim = time.perf_counter() - t0
    print(f"simulate {args.minutes:g} min x {args.muscles} muscles @ 2 kHz: {t_sim:.1f} s "
          f"(raw float32 {session.emg.nbytes / 1e6:.0f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("electrical", "per_muscle"):
            t0 = time.perf_counter()
            path = write_session_nwb(session, Path(tmp) / f"{layout}.nwb", layout=layout)
            print(f"write {layout:10s}: {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
