"""Refuse early, in one line, naming the flag: destinations and settings are checked before any data is
read (the source here is not even an NWB file, so a later check would report that instead)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import h5py
import pytest
from safety_helpers import tiny_nwb

from nwb_lfads_emg.cli import main


@pytest.fixture
def junk(tmp_path) -> Path:
    """A source that fails as soon as anything reads it."""
    path = tmp_path / "session.nwb"
    path.write_text("not an NWB file")
    return path


def refused(capsys, argv: list[str], *expected: str) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder no one may write: a read-only tmpfs as root (root ignores mode bits), else mode 0555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("running as root and cannot mount a read-only file system")
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_out_destinations_are_checked_before_reading(capsys, junk, tmp_path, read_only_dir):
    run = ["run", junk, "--max-epochs", "1", "--run-dir", tmp_path / "run", "--quiet"]
    refused(capsys, [*run, "--out", read_only_dir / "out.nwb"], "--out", "not writable")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(capsys, [*run, "--out", a_file / "out.nwb"], "--out", "is a file, not a folder")
    folder = tmp_path / "existing"
    folder.mkdir()
    refused(capsys, [*run, "--out", folder, "--overwrite"], "--out", "is a folder")
    existing = tmp_path / "done.nwb"
    existing.write_text("x")
    refused(capsys, [*run, "--out", existing], "output file exists", "--overwrite")
    refused(capsys, ["annotate", junk, "--run-dir", tmp_path / "none", "--out", a_file / "o.nwb"], "--out")
    assert not (tmp_path / "run").exists()


def test_in_place_read_only_file_and_run_dir_are_checked_before_reading(capsys, junk, tmp_path):
    junk.chmod(0o444)
    refused(capsys, ["run", junk, "--in-place", "--max-epochs", "1", "--run-dir", tmp_path / "run"],
            str(junk), "read-only", "--out")
    junk.chmod(0o644)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(capsys, ["run", junk, "--out", tmp_path / "o.nwb", "--run-dir", a_file], "--run-dir", "is a file")
    refused(capsys, ["fit", junk, "--run-dir", a_file / "sub"], "--run-dir", "is a file")
    assert not (tmp_path / "run").exists() and not (tmp_path / "o.nwb").exists()


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_max_epochs_below_one_is_refused(capsys, junk, tmp_path, epochs):
    refused(capsys, ["run", junk, "--out", tmp_path / "o.nwb", "--max-epochs", epochs, "--run-dir", tmp_path / "r"],
            f"--max-epochs {epochs}", "at least 1")
    refused(capsys, ["fit", junk, "--max-epochs", epochs, "--run-dir", tmp_path / "r"], f"--max-epochs {epochs}")
    refused(capsys, ["demo", "--out", tmp_path / "demo", "--max-epochs", epochs], f"--max-epochs {epochs}")
    assert not (tmp_path / "r").exists() and not (tmp_path / "demo").exists()


def test_evaluate_and_demo_destinations(capsys, junk, tmp_path):
    report = tmp_path / "report.html"
    report.write_text("x")
    refused(capsys, ["evaluate", junk, "--report", report], "--report", "is a file")
    refused(capsys, ["evaluate", junk], str(junk), "not an NWB file")
    refused(capsys, ["demo", "--out", report], "--out", "is a file")
    assert report.read_text() == "x"


def test_sampling_rate_zero_is_one_line(capsys, tmp_path):
    path = tiny_nwb(tmp_path / "rate0.nwb")
    with h5py.File(path, "r+") as f:
        f["acquisition/EMG/starting_time"].attrs["rate"] = 0.0
    assert main(["inspect", str(path)]) == 0  # listed, with the rate shown as unknown
    assert "acquisition/EMG" in capsys.readouterr().out
    refused(capsys, ["run", path, "--out", tmp_path / "o.nwb", "--max-epochs", "1", "--run-dir", tmp_path / "r"],
            str(path), "acquisition/EMG", "sampling rate is 0.0 Hz", "--emg")
    assert not (tmp_path / "o.nwb").exists()


def test_too_little_free_space_is_refused_before_reading(capsys, tmp_path):
    """`--out` on a 1 MB file system, for a source of 2 MB: refused up front (the run dir does not even exist)."""
    small = tmp_path / "small_fs"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        source = tmp_path / "big.nwb"
        source.write_bytes(b"\0" * 2_000_000)
        refused(capsys, ["annotate", source, "--run-dir", tmp_path / "none", "--out", small / "out.nwb"],
                "--out", "MB free")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
