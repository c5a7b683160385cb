"""A real, throwaway Ray cluster on loopback for tests, and shard decoders that let a test kill a worker.

The cluster is one head node started with ``ray start --block`` in a session of its own and a short temporary
folder (Ray's unix socket paths must stay under about 107 characters). Stopping it sends SIGTERM to that
``ray start``, which shuts the node down; whatever of the session is still alive afterwards (it should be
nothing) is killed by process id. Ray's ``ray stop`` is not used: it stops every Ray process of the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from eva02at.core.atomic import write_text
from eva02at.data.extract import ShardChain, ShardResult, decode_chain
from tests.processes import alive, in_session

ROOT = Path(__file__).resolve().parents[1]
# Ray rewrites a loopback --node-ip-address to the machine's routable address, and binds GCS, raylet and agents
# there, unless multi-node clusters are off: then every listener of the head (and the node address drivers and
# workers use) is 127.0.0.1. Set before Ray is imported anywhere in this process, since Ray reads it at import;
# drivers and workers inherit it through worker_env().
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
READY = "Ray runtime started."  # what `ray start` prints once the head node accepts drivers
START_DEADLINE_S = 600  # a failure bound for a very busy machine, not a timing the test relies on
STOP_DEADLINE_S = 120


@dataclass
class LocalCluster:
    address: str  # host:port of the head, for a driver on this node
    client_address: str  # ray://host:port, for a Ray Client driver
    process: subprocess.Popen
    temp_dir: Path

    def session_pids(self) -> list[int]:
        """Live processes of the cluster's session (the head, its services and the task workers)."""
        return in_session(self.process.pid)


def worker_env() -> dict[str, str]:
    """This environment, with this checkout importable (``eva02at`` and ``tests``) by drivers and workers."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PYTHONPATH": path, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def start_cluster(num_cpus: int = 2) -> LocalCluster:
    """Start a one-node cluster and return once it accepts drivers."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port, client_port, agent_port, dashboard_port = _free_ports(4)
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus),
        "--temp-dir", str(temp_dir), "--include-dashboard", "false", "--disable-usage-stats",
        "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_port),
        "--dashboard-port", str(dashboard_port), "--min-worker-port", "0", "--max-worker-port", "0",
    ]  # fmt: skip
    # The head's Ray Client server forks a server per ray:// connection; with gRPC's fork handlers on, that child
    # now and then aborts at birth (ev_epoll1_linux.cc "Check failed: next_worker->state == KICKED") under load
    env = worker_env() | {"GRPC_ENABLE_FORK_SUPPORT": "0"}
    log = temp_dir / "ray-start.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=temp_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    cluster = LocalCluster(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", process, temp_dir)
    deadline = time.monotonic() + START_DEADLINE_S
    while READY not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            output = log.read_text()  # before stopping: that removes the folder
            stop_cluster(cluster)
            raise RuntimeError(f"ray start did not come up:\n{output[-3000:]}")
        time.sleep(0.2)
    return cluster


def stop_cluster(cluster: LocalCluster) -> list[int]:
    """Stop the cluster and remove its folder; return the pids that had to be killed (none, normally)."""
    if cluster.process.poll() is None:
        cluster.process.send_signal(signal.SIGTERM)
        try:
            cluster.process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            cluster.process.kill()
            cluster.process.wait()
    leftovers = wait_until_dead(cluster.session_pids())  # the node's processes finish their own shutdown
    for pid in leftovers:
        _kill(pid)
    wait_until_dead(leftovers)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    return leftovers


def wait_until_dead(pids: list[int], deadline_s: float = STOP_DEADLINE_S) -> list[int]:
    """Wait for ``pids`` to exit; return those still alive after ``deadline_s`` (a failure bound)."""
    deadline = time.monotonic() + deadline_s
    while (running := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


def wait_for_files(folder: Path, pattern: str, count: int, deadline_s: float = START_DEADLINE_S) -> list[Path]:
    """Wait until ``count`` files matching ``pattern`` exist in ``folder``."""
    deadline = time.monotonic() + deadline_s
    while len(found := sorted(folder.glob(pattern))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder}: {len(found)} of {count} {pattern} files")
        time.sleep(0.1)
    return found


class BlockFirstAttempt:
    """Decode shard chains as usual, except the first attempt at a chain holding one of ``shards`` (all when
    None): that attempt writes its process id to ``<marker_dir>/<shard>.pid`` and waits forever, for the test to
    kill it or its driver."""

    def __init__(self, marker_dir: Path, shards: set[str] | None = None):
        self.marker_dir, self.shards = str(marker_dir), shards

    def __call__(self, chain: ShardChain) -> list[ShardResult]:
        for task in chain:
            marker = Path(self.marker_dir, f"{task.name}.pid")
            if (self.shards is None or task.name in self.shards) and not marker.exists():
                write_text(marker, str(os.getpid()))
                threading.Event().wait()
        return decode_chain(chain)


class KillsItself:
    """Decode shard chains as usual, except that every attempt at a chain holding ``shard`` SIGKILLs its own
    worker process."""

    def __init__(self, shard: str):
        self.shard = shard

    def __call__(self, chain: ShardChain) -> list[ShardResult]:
        if any(task.name == self.shard for task in chain):
            os.kill(os.getpid(), signal.SIGKILL)
        return decode_chain(chain)


def kill_when_marked(marker: Path) -> threading.Thread:
    """Start a thread that SIGKILLs the process whose id appears in ``marker``."""

    def kill() -> None:
        (path,) = wait_for_files(marker.parent, marker.name, 1)
        os.kill(int(path.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stamped(name: str, seconds: float) -> tuple[str, float, float]:
    """A task that says when it ran: (name, start, end) on this node's clock, ``seconds`` apart."""
    start = time.time()
    time.sleep(seconds)
    return name, start, time.time()
