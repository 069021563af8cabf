"""AutoLFADS through `ray_address` on a real two-node Ray cluster on loopback.

The fixture starts a head node (`ray start --head --block` on 127.0.0.1, its own temp dir and port)
and a second node joining it (its own temp dir), each in its own process group. A small search is
run through the cluster address; its members must have run on both nodes, reading the training data
from Ray's object store and sending their states back through it. Afterwards both nodes are stopped by signalling only the processes started
here (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_pbt_local import tiny_config, tiny_data, tiny_space

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGTERM the `ray start --block` process (it stops its node), then SIGKILL what is left of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def two_node_cluster():
    """(address, {node ids}) of a head plus one worker node on 127.0.0.1, stopped afterwards."""
    import ray

    if not Path(RAY).is_file():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    # short temp dirs: Ray's unix socket paths must stay under ~100 characters
    dirs = [tempfile.mkdtemp(prefix="rayh", dir="/tmp"), tempfile.mkdtemp(prefix="rayw", dir="/tmp")]
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        head_log = open(Path(dirs[0]) / "start.log", "w")  # noqa: SIM115 - closed in the finaliser
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", f"--temp-dir={dirs[0]}", "--include-dashboard=false",
             f"--dashboard-agent-listen-port={_free_port()}", *common],
            env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert procs[0].poll() is None, (Path(dirs[0]) / "start.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head node did not come up within 60 s"
            time.sleep(0.5)
        worker_log = open(Path(dirs[1]) / "start.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [RAY, "start", f"--address=127.0.0.1:{port}", f"--temp-dir={dirs[1]}",
             f"--dashboard-agent-listen-port={_free_port()}", *common],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True))
        address = f"127.0.0.1:{port}"
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            deadline = time.monotonic() + 90
            while True:
                alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
                if len(alive) >= 2:
                    break
                assert procs[1].poll() is None, (Path(dirs[1]) / "start.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the second Ray node did not join within 90 s"
                time.sleep(0.5)
        finally:
            ray.shutdown()
        yield address, alive
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(procs):  # the worker first, while the head can still acknowledge its drain
            _stop(p)
        for p in procs:
            assert not _group_alive(p.pid), "Ray processes of the test cluster survived"
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_pbt_spreads_members_over_both_nodes(two_node_cluster, tmp_path, monkeypatch):
    from nwb_lfads_emg.training.pbt import fit_pbt

    address, nodes = two_node_cluster
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    data = tiny_data(n_bins=1500)
    res = fit_pbt(data, tiny_config(), tmp_path / "run", population=4, ray_address=address,
                  cpus_per_trial=1.0, max_generations=2, perturbation_interval=2, seed=1, progress=False,
                  search_space=tiny_space(), patience_generations=10)
    hist = res.pbt_history
    used = set().union(*(set(t["nodes"]) for t in hist["trials"].values()))
    assert used == nodes, f"members ran on {used}, the cluster has {nodes}"
    assert hist["ray"] == f"Ray cluster at {address}"
    assert all(t["iterations"] == [1, 2, 3, 4] and t["status"] == "ok" for t in hist["trials"].values())
    # a member's state crossed nodes through Ray: the driver saved it, another worker continued from it
    log = {(e["generation"], e["member"]): e for e in hist["generation_log"]}
    assert all(log[(2, m)]["loaded_sha256"] for m in hist["trials"])
    for step in hist["policy_log"][0]["replaced"]:
        assert log[(2, step["target"])]["loaded_sha256"] == log[(1, step["source"])]["state_sha256"]
    assert (tmp_path / "run" / "best" / "model.pt").is_file()
    best_last = min(t["val_loss_smoothed"][-1] for t in hist["trials"].values())
    assert res.best_val_loss <= best_last + 1e-6 * abs(best_last)
    import ray

    assert not ray.is_initialized()  # fit_pbt detached from the cluster it attached to
