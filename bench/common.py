"""What the benchmarks share: the machine that ran them, device-synchronised timing, result output.

Benchmarks report medians over repeated measurements: the machines they run on are often shared, and a
median ignores the occasional step that another process slowed down.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch", "decord", "pyarrow", "pillow", "simplejpeg")


def cpu_model() -> str:
    """The CPU model as /proc/cpuinfo names it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """CPU, core count, accelerator, package versions and the date: the header of every result."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "device": "cpu",
    }
    if device is not None and device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock time covers the work itself (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 0) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, device-synchronised."""
    if repeats < 1:
        raise ValueError(f"need at least one timed call, got repeats={repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_json(result: Any, path: str) -> None:
    """``result`` as indented JSON to ``path``, or to standard output when ``path`` is ``-``."""
    text = json.dumps(result, indent=2, sort_keys=True)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")
