"""Driver CPU of the Ray shard loop against the number of tasks: the bounded window against waiting on all.

    python -m bench.ray_driver --json ray_driver.json                 # 350, 3,500 and 35,000 tasks
    python -m bench.ray_driver --tasks 350 3500 --baseline-max 3500   # smaller

A local Ray instance (2 CPUs) runs no-op tasks; what is measured is the driver process's CPU time
(``time.process_time``) from the first submission to the last result, and the wall time. ``window`` is
``eva02at.data.cluster.stream_results`` with twice the CPUs in flight; ``all_pending`` is the loop it replaces:
every task submitted at once, then ``ray.wait(pending, num_returns=1)`` over the whole pending list per result.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator

import ray

from bench.common import machine_info, median, write_json
from eva02at.data.cluster import stream_results

CPUS = 2


def noop(k: int) -> int:
    return k


def all_pending(task: Callable[..., int], calls: dict[str, tuple]) -> Iterator[int]:
    """The loop before the window (kept here as the baseline): quadratic in the number of tasks."""
    remote = ray.remote(num_cpus=1)(task)
    pending = [remote.options(name=name).remote(*args) for name, args in calls.items()]
    while pending:
        (ref,), pending = ray.wait(pending, num_returns=1)
        yield ray.get(ref)


LOOPS = {
    "window": lambda calls: stream_results(noop, calls, window=2 * CPUS),
    "all_pending": lambda calls: all_pending(noop, calls),
}


def measure(loop: str, tasks: int) -> tuple[float, float]:
    """(driver CPU s, wall s) of one run of ``loop`` over ``tasks`` no-op tasks."""
    calls = {f"t{k}": (k,) for k in range(tasks)}
    cpu, wall = time.process_time(), time.perf_counter()
    results = list(LOOPS[loop](calls))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if sorted(results) != list(range(tasks)):
        raise RuntimeError(f"{loop}: {tasks} tasks gave {len(results)} results")
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[350, 3500, 35000])
    parser.add_argument("--baseline-max", type=int, default=3500, help="largest count the quadratic loop runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs per count up to 3,500 tasks (one above)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    # A local instance on loopback: no token (a new local instance would write one to ~/.ray, which every later
    # `ray start` of this user then requires).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for tasks in args.tasks:
            loops = ["window", "all_pending"] if tasks <= args.baseline_max else ["window"]
            for loop in loops:
                runs = [measure(loop, tasks) for _ in range(args.repeats if tasks <= 3500 else 1)]
                row = {
                    "loop": loop,
                    "tasks": tasks,
                    "runs": len(runs),
                    "driver_cpu_s": median([c for c, _ in runs]),
                    "wall_s": median([w for _, w in runs]),
                }
                row["driver_cpu_ms_per_task"] = 1000 * row["driver_cpu_s"] / tasks
                rows.append(row)
                print(row, flush=True)
    finally:
        ray.shutdown()
    if args.json:
        write_json({"machine": machine_info() | {"ray": ray.__version__}, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
