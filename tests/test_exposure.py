"""What the project starts listens on loopback only (read from the kernel's socket tables, not from flags), and
nothing it loads can run code: every torch file is read with ``weights_only=True``, every NumPy file without
pickles, and no module unpickles anything."""

from __future__ import annotations

import ast
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eva02at.core.tracking import server_answers
from tests.processes import in_session, wait_until
from tests.project_fixtures import empty_mlflow_store
from tests.ray_cluster import start_cluster, stop_cluster

ROOT = Path(__file__).resolve().parents[1]
LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in state LISTEN that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(entry) for entry in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # the process ended, or one fd closed while reading
            continue
        inodes |= {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and inode in inodes:
                found.add(_address(local))
    return found


def _address(local: str) -> tuple[str, int]:
    """``0100007F:1F90`` (IPv4) or 32 hex digits (IPv6), each 32-bit word little-endian, as (address, port)."""
    hex_address, hex_port = local.split(":")
    words = [bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)]
    return str(ipaddress.ip_address(b"".join(words))), int(hex_port, 16)


def test_the_addresses_of_the_socket_table_are_read_right():
    assert _address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _address("00000000:0050") == ("0.0.0.0", 80)
    assert _address("00000000000000000000000001000000:0016") == ("::1", 22)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8 and ::1, also written IPv4-mapped (``::ffff:127.0.0.1``, how an IPv6 socket bound to
    127.0.0.1 appears in /proc/net/tcp6)."""
    address = ipaddress.ip_address(host)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def test_loopback_includes_ipv4_mapped_loopback_only():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:7f00:1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("::ffff:c000:202")


@pytest.mark.slow
def test_the_test_ray_cluster_listens_on_loopback_only():
    cluster = start_cluster(num_cpus=1)
    try:
        sockets = listening(cluster.session_pids())
    finally:
        stop_cluster(cluster)
    assert sockets, "no listening socket found for the cluster"
    exposed = {(host, port) for host, port in sockets if not is_loopback(host)}
    assert exposed == set(), f"listening beyond loopback: {sorted(exposed)}"


@pytest.mark.slow
def test_the_readmes_mlflow_server_listens_on_loopback_only(tmp_path):
    """``mlflow server --host 127.0.0.1`` as the README starts it on one machine, with its web workers."""
    shutil.copy(empty_mlflow_store(), tmp_path / "mlflow.db")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    command += ["--default-artifact-root", str(tmp_path / "artifacts")]
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_until(lambda: server_answers(uri) or server.poll() is not None, "the MLflow server")
        assert server.poll() is None, "the MLflow server did not start"
        sockets = listening(in_session(server.pid))
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and its web workers
        server.wait()
    assert ("127.0.0.1", port) in sockets
    assert {(host, p) for host, p in sockets if not is_loopback(host)} == set()


def calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def keyword(call: ast.Call, name: str):
    found = next((k.value for k in call.keywords if k.arg == name), None)
    return found.value if isinstance(found, ast.Constant) else found


def test_nothing_the_project_loads_can_run_code():
    sources = [p for folder in ("src", "stages", "flows", "rehearsal", "bench") for p in (ROOT / folder).rglob("*.py")]
    problems = []
    for path in sources:
        for call in calls(path):
            name = ast.unparse(call.func)
            if name == "torch.load" and keyword(call, "weights_only") is not True:
                problems.append(f"{path}:{call.lineno} torch.load without weights_only=True")
            if name == "np.load" and keyword(call, "allow_pickle") is not False:
                problems.append(f"{path}:{call.lineno} np.load without allow_pickle=False")
            if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads"):
                problems.append(f"{path}:{call.lineno} {name}")
    assert problems == []
