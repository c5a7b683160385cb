"""Two ``dvc repro`` at once on one project: DVC refuses the second with its lock message naming the first,
the first completes normally, nothing half-written is kept and no process is left behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

STAGE = """\
stages:
  shout:
    cmd: {python} shout.py
    deps: [shout.py, in.txt]
    outs: [out.txt]
"""
# says that it runs (with its pid), then waits for the test's go-ahead before it writes its output
SCRIPT = """\
import os
import time
from pathlib import Path

Path({started!r}).write_text(str(os.getpid()))
while not Path({go!r}).exists():
    time.sleep(0.05)
Path("out.txt").write_text(Path("in.txt").read_text().upper())
"""


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def processes_in(folder: Path) -> list[psutil.Process]:
    """Processes whose working directory is ``folder`` (those this user may inspect)."""
    found = []
    for process in psutil.process_iter(["cwd"]):
        if process.info["cwd"] and Path(process.info["cwd"]) == folder:
            found.append(process)
    return found


def test_a_second_repro_is_refused_while_the_first_runs(tmp_path):
    project, started, go = tmp_path / "project", tmp_path / "started", tmp_path / "go"
    project.mkdir()
    subprocess.run(dvc("init", "--no-scm", "-q"), cwd=project, check=True)
    (project / "dvc.yaml").write_text(STAGE.format(python=sys.executable))
    (project / "shout.py").write_text(SCRIPT.format(started=str(started), go=str(go)))
    (project / "in.txt").write_text("hello\n")

    first = subprocess.Popen(dvc("repro"), cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not started.exists():  # the first is inside its stage's command
        assert first.poll() is None, first.communicate()[0]
        time.sleep(0.1)
    second = subprocess.run(dvc("repro"), cwd=project, capture_output=True, text=True)
    refusal = second.stdout + second.stderr
    assert second.returncode != 0
    assert "out.txt' is busy, it is being blocked by" in refusal and f"(PID {first.pid})" in refusal, refusal
    assert not (project / "out.txt").exists() and not (project / "dvc.lock").exists()  # nothing half-done

    go.touch()
    output, _ = first.communicate()
    assert first.returncode == 0, output
    assert (project / "out.txt").read_text() == "HELLO\n"
    recorded = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["shout"]["outs"][0]["md5"]
    assert recorded == hashlib.md5((project / "out.txt").read_bytes()).hexdigest()
    status = subprocess.run(dvc("status", "--json"), cwd=project, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
    held = json.loads((project / ".dvc" / "tmp" / "rwlock").read_text())  # DVC's locks on deps and outs
    assert not any(held.values()), held
    assert not psutil.pid_exists(int(started.read_text())) and processes_in(project) == []
