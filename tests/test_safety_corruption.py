"""Property: whatever is wrong with an NWB file (truncated, flipped bytes, deleted groups, wrong dtypes,
absurd attributes), `inspect` and `run` end in success with a valid output or one `error:` line: never
a traceback, a crash, a hang, or a changed input.

Each command runs in its own process, forked from one worker that has imported the CLI once (so an
example costs the command's work, not an interpreter start), with a timeout.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safety_helpers import env, sha, tiny_nwb

WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, tempfile, time, traceback
    from nwb_lfads_emg.cli import main  # imports no torch/pynwb: each child imports what it uses
    for line in sys.stdin:
        request = json.loads(line)
        fd, out_path = tempfile.mkstemp()
        pid = os.fork()
        if pid == 0:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 1
            try:
                code = main(request["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        os.close(fd)
        deadline, status = time.time() + request["timeout"], None
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        rc = status if status == "timeout" else os.waitstatus_to_exitcode(status)
        with open(out_path, errors="replace") as fh:
            output = fh.read()
        os.unlink(out_path)
        print(json.dumps({"rc": rc, "output": output}), flush=True)
    """
)

GROUPS = ["acquisition/EMG", "acquisition/EMG/data", "acquisition/EMG/electrodes", "acquisition/EMG/starting_time",
          "general/extracellular_ephys/electrodes", "general/extracellular_ephys/electrodes/location",
          "general/extracellular_ephys", "general/devices", "processing/behavior", "units", "units/spike_times_index",
          "specifications", "identifier", "session_start_time", "general"]
DATASETS = ["acquisition/EMG/data", "acquisition/EMG/starting_time", "acquisition/EMG/electrodes",
            "general/extracellular_ephys/electrodes/location", "general/extracellular_ephys/electrodes/id",
            "units/spike_times", "processing/behavior/joint_angles/data", "session_start_time", "identifier"]
ATTRS = [("acquisition/EMG/starting_time", "rate"), ("acquisition/EMG/data", "conversion"),
         ("acquisition/EMG/data", "unit"), ("acquisition/EMG", "neurodata_type"), ("acquisition/EMG", "namespace"),
         ("acquisition/EMG/data", "offset"), ("processing/behavior/joint_angles/starting_time", "rate"),
         ("", "nwb_version")]
VALUES = [0.0, -1.0, math.nan, math.inf, 1e308, "junk", "", 7]
KINDS = ["text", "int", "empty", "3d", "huge_scalar"]

corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.995)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(1, 255)), min_size=1,
                                         max_size=40)),
    st.tuples(st.just("delete"), st.sampled_from(GROUPS)),
    st.tuples(st.just("dtype"), st.sampled_from(DATASETS), st.sampled_from(KINDS)),
    st.tuples(st.just("attr"), st.sampled_from(ATTRS), st.sampled_from(VALUES)),
)


def corrupt(path: Path, how: tuple) -> None:
    """Damage a copy of the file in one of the ways a bad converter, disk or transfer would."""
    kind = how[0]
    if kind == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(int(path.stat().st_size * how[1]))
    elif kind == "flip":
        data = bytearray(path.read_bytes())
        for where, mask in how[1]:
            data[int(where * len(data))] ^= mask
        path.write_bytes(bytes(data))
    else:
        with h5py.File(path, "r+") as f:
            if kind == "delete":
                if how[1] in f:
                    del f[how[1]]
            elif kind == "dtype":
                name, what = how[1], how[2]
                if name in f:
                    attrs = dict(f[name].attrs)
                    del f[name]
                    new = {"text": np.array([b"oops"] * 3), "int": np.arange(5, dtype=np.int8),
                           "empty": np.zeros((0,)), "3d": np.ones((2, 2, 2), dtype=np.float32),
                           "huge_scalar": np.float64(1e300)}[what]
                    ds = f.create_dataset(name, data=new)
                    ds.attrs.update(attrs)
            else:
                (obj, attr), value = how[1], how[2]
                if obj == "" or obj in f:
                    (f[obj] if obj else f).attrs[attr] = value


@pytest.fixture(scope="module")
def worker():
    proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env())

    def call(*argv: object, timeout: float = 60) -> dict:
        proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "timeout": timeout}) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    yield call
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return tiny_nwb(tmp_path_factory.mktemp("pristine") / "session.nwb")


def check_outcome(result: dict, what: str) -> None:
    assert result["rc"] != "timeout", f"{what}: hung"
    out = result["output"]
    assert "Traceback" not in out and "Exception ignored" not in out, f"{what}:\n{out}"
    assert result["rc"] in (0, 2), f"{what}: exit {result['rc']}\n{out}"
    if result["rc"] == 2:
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, f"{what}:\n{out}"


RUNS = {"done": 0}


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(how=corruptions)
def test_corrupted_files_end_in_success_or_one_line(how, worker, pristine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    path = folder / "session.nwb"
    shutil.copyfile(pristine, path)
    corrupt(path, how)
    before = sha(path)
    result = worker("inspect", path, timeout=60)
    check_outcome(result, f"inspect after {how}")
    assert sha(path) == before, f"inspect changed the input ({how})"
    if result["rc"] == 0 and how[0] != "truncate" and RUNS["done"] < 2:  # a few whole runs too
        RUNS["done"] += 1
        out = folder / "out.nwb"
        result = worker("run", path, "--emg", "EMG", "--out", out, "--max-epochs", "1", "--quiet",
                        "--run-dir", folder / "run", timeout=240)
        check_outcome(result, f"run after {how}")
        assert sha(path) == before, f"run changed the input ({how})"
        if result["rc"] == 0:
            from pynwb import NWBHDF5IO

            with NWBHDF5IO(str(out), "r") as io:  # validated by the write-back; opens and holds the results
                assert "AutoLFADS" in io.read().processing["ecephys"].data_interfaces
        else:
            assert not out.exists()
        assert not [p for p in folder.iterdir() if "nwb-lfads-emg" in p.name]
