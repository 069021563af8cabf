"""A whole CLI run as a careless user and an attacker would try it: in place through a link on a file
without a Subject, owned by someone else; shared files free of local paths; SIGTERM mid-write; planted
pickles and symlinks in the run directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from pynwb import NWBHDF5IO
from safety_helpers import cli, env, leftovers, one_error_line, sha, string_values, tiny_nwb

from nwb_lfads_emg.errors import TrainingError
from nwb_lfads_emg.training import checkpoint as ckpt

OWNER = (1234, 2345) if os.geteuid() == 0 else (os.getuid(), os.getgid())


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """`run --in-place` through a link on a Subject-less session (mode 0640, another owner where we may)."""
    root = tmp_path_factory.mktemp("user")
    base = tiny_nwb(root / "pristine.nwb", subject=False)
    real = root / "data" / "session.nwb"
    real.parent.mkdir()
    shutil.copyfile(base, real)
    os.chmod(real, 0o640)
    os.chown(real, *OWNER)
    link = root / "link.nwb"
    link.symlink_to(real)
    proc = cli("run", link, "--emg", "EMG", "--in-place", "--max-epochs", "1", "--run-dir", root / "run", "--quiet")
    return {"proc": proc, "root": root, "base": base, "real": real, "link": link, "run_dir": root / "run"}


def test_in_place_run_through_a_link_on_a_file_without_subject(job):
    proc, real, link = job["proc"], job["real"], job["link"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert link.is_symlink() and link.resolve() == real.resolve()
    st = os.stat(real)
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == OWNER
    with NWBHDF5IO(str(real), "r") as io:
        nwb = io.read()
        assert nwb.subject is None
        assert {"AutoLFADS", "LowPass", "BayesianFilter"} <= set(nwb.processing["ecephys"].data_interfaces)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "would block a DANDI upload" in warnings[0] and "subject" in warnings[0].lower()
    assert leftovers(real.parent) == [] and leftovers(job["root"]) == []


def test_shared_file_holds_no_local_paths(job):
    real, root = job["real"], job["root"]
    assert job["proc"].returncode == 0, job["proc"].stderr
    texts = string_values(real)
    local = [t for t in texts if str(root) in t or os.path.realpath(root) in t or "/tmp/" in t]
    assert local == [], local[:3]
    with NWBHDF5IO(str(real), "r") as io:
        nwb = io.read()
        module = nwb.processing["ecephys"]
        params = json.loads(module["AutoLFADS"].method_parameters)
        assert params["trained_on"] == "link.nwb" and params["input_location"] == "link.nwb"
        assert params["trained_on_file_identifier"] == params["input_file_identifier"] == nwb.identifier
        assert json.loads(module["LowPass"].method_parameters)["input_location"] == "link.nwb"
        assert module["LFADSModelProvenance"].source_file_identifier == nwb.identifier


SIGNALLED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import nwb_lfads_emg.writeback as wb
    def hang(temp, **kwargs):  # stop where the validation would run, the temporary copy fully written
        Path(sys.argv[1]).write_text(str(temp))
        time.sleep(120)
    wb.validate_file = hang
    from nwb_lfads_emg.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_sigterm_during_cli_write_back_exits_cleanly(job, tmp_path):
    assert job["proc"].returncode == 0, job["proc"].stderr
    target = tmp_path / "session.nwb"
    shutil.copyfile(job["base"], target)
    before, marker = sha(target), tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", SIGNALLED, str(marker), "annotate", str(target), "--emg", "EMG",
                             "--run-dir", str(job["run_dir"]), "--in-place"], env=env(), stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "never reached the write-back"
    assert Path(marker.read_text()).exists()  # the full-size temporary copy is there now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in one_error_line(err)
    assert sha(target) == before and leftovers(tmp_path) == []


class _Planted:
    """A pickle that runs a command when loaded with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_in_the_run_dir_is_refused_not_run(job, tmp_path):
    assert job["proc"].returncode == 0, job["proc"].stderr
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"format": "nwb-lfads-emg-trainer/1", "x": _Planted(marker)}, run_dir / "checkpoints" / "epoch_000099.pt")
    proc = cli("fit", job["base"], "--emg", "EMG", "--max-epochs", "1", "--run-dir", run_dir, "--quiet")
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "epoch_000099.pt" in line and "refused" in line and "--run-dir" in line
    # the exported weights and the PBT trial states go through the same loader
    model_dir = tmp_path / "model"
    shutil.copytree(job["run_dir"], model_dir)
    torch.save({"format": "nwb-lfads-emg-weights/1", "x": _Planted(marker)}, model_dir / "model.pt")
    with pytest.raises(ckpt.UnsafeCheckpointError, match="model.pt: refused"):
        ckpt.read_weights(model_dir)
    pbt = pytest.importorskip("nwb_lfads_emg.training.pbt.trainable")
    state_dir = tmp_path / "pbt" / "member_01"
    state_dir.mkdir(parents=True)
    torch.save({"format": pbt.MEMBER_FORMAT, "trainer": _Planted(marker)}, state_dir / "gen_0001.pt")
    with pytest.raises(ckpt.UnsafeCheckpointError):
        pbt.load_member_state(state_dir / "gen_0001.pt")
    blob = (state_dir / "gen_0001.pt").read_bytes()  # the same state as a worker receives it through Ray
    with pytest.raises(ckpt.UnsafeCheckpointError):
        pbt.train_member({"kind": "single", "config": {}, "seed": 0}, [[1.0]], blob, {}, 1, 1, 1, None, "cpu", 1)
    assert not marker.exists()
    # a PBT search's record is resumed only from a folder no one else may write
    (tmp_path / "shared").mkdir(mode=0o777)
    os.chmod(tmp_path / "shared", 0o777)
    with pytest.raises(TrainingError, match="writable by others"):
        ckpt.refuse_shared_dir(tmp_path / "shared", "the PBT search")


def test_run_dir_temporary_files_do_not_follow_planted_links(tmp_path):
    from nwb_lfads_emg.training.trainer import _write_metrics_csv

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv.tmp").symlink_to(victim)  # the names used to be predictable
    (run_dir / f"model.pt.tmp{os.getpid()}").symlink_to(victim)
    _write_metrics_csv(run_dir / "metrics.csv", [{"epoch": 1, "val_loss": 0.5}])
    ckpt.save_atomic({"w": torch.zeros(2)}, run_dir / "model.pt")
    assert victim.read_text() == "precious"
    assert (run_dir / "metrics.csv").read_text().splitlines()[0] == "epoch,val_loss"
    assert ckpt.load_checkpoint(run_dir / "model.pt")["w"].shape == (2,)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == sorted(["metrics.csv", "metrics.csv.tmp", f"model.pt.tmp{os.getpid()}", "model.pt"]), names
