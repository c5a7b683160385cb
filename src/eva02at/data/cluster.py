"""Independent tasks on a Ray cluster: results as they finish, dead workers retried, nothing outliving the driver.

Ray schedules, retries and fate-shares the tasks; this module adds what a batch job writing to a shared folder
needs before it starts: every node must see the driver's folders, or the run stops naming the nodes that do not
(a task on such a node would write where nobody reads, or record every clip as unreadable). It also makes a Ray
Client driver (``ray://``) fate-share like a driver on a node: Ray keeps a lost client's tasks running for a
30 s reconnect grace period, which here is 0, so a killed client takes its tasks along. Ray is imported only
when a cluster is used.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from eva02at.core.errors import PipelineError

log = logging.getLogger(__name__)
RETRIES = 3  # new attempts when a task's worker or node dies; an exception raised by the task is not retried
TOKEN_PREFIX = ".visible-from-every-node-"


class ClusterUnavailable(PipelineError):
    """No Ray cluster answers at the address, or it has no node with CPUs."""


class FolderNotShared(PipelineError):
    """A node of the cluster does not see a folder as the driver does."""


class TasksLost(PipelineError):
    """Tasks kept losing their worker (crash, out of memory, node gone) beyond the retries."""


def run_on_cluster(
    address: str,
    task: Callable[..., Any],
    calls: Mapping[str, tuple],
    output_dir: Path,
    inputs: Sequence[Path] = (),
    window: int | None = None,
) -> Iterator[Any]:
    """Run ``task(*args)`` for every named call of ``calls`` as a Ray task of that name (one CPU each); yield each
    result as its task finishes, in completion order.

    ``address`` is ``auto`` or ``host:port`` of the head (for a driver on a node of the cluster) or
    ``ray://host:port`` (Ray Client, from anywhere). ``task`` must be importable on every node, and all paths
    absolute. Before any task starts, every alive node with CPUs must see ``output_dir`` and ``inputs`` as the
    driver does (``FolderNotShared`` otherwise). A failed task does not stop the others: the run fails once
    they are done, with the task's own exception or ``TasksLost``. Once the generator ends (done, failed or
    closed) or the driver process dies, nothing of this call runs on the cluster any more. At most ``window``
    tasks are submitted at a time (default: twice the cluster's CPUs, so that every CPU has its next task queued).
    """
    import ray

    if address.startswith("ray://"):
        os.environ.setdefault("RAY_CLIENT_RECONNECT_GRACE_PERIOD", "0")  # tasks die with a killed client
    try:
        ray.init(address=address)
    except ConnectionError as err:
        raise ClusterUnavailable(f"cannot connect to the Ray cluster at {address}: {err}") from err
    try:
        cpus = check_shared(output_dir, inputs)
        yield from stream_results(task, calls, window or max(1, 2 * cpus))
    finally:
        ray.shutdown()  # the job ends: Ray stops whatever of it still runs


def check_shared(output_dir: Path, inputs: Sequence[Path] = ()) -> int:
    """Raise ``FolderNotShared`` naming each node that does not see ``output_dir`` (a file the driver writes
    there, looked up by a task pinned to the node) or sees one of ``inputs`` differently from the driver;
    return the CPUs of the nodes checked.

    Needs a connected Ray driver (``ray.init``).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _nodes_with_cpus()
    token = output_dir / f"{TOKEN_PREFIX}{secrets.token_hex(8)}"
    paths = [str(token), *map(str, inputs)]
    token.write_text("written by the driver; each node checks that it sees it\n")
    try:
        expected = _exist(paths)
        probe = ray.remote(num_cpus=0, max_retries=RETRIES)(_exist)
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(paths)
            for node in nodes
        ]
        views = ray.get(refs)
    finally:
        token.unlink()
    problems = [
        f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}) {_difference(output_dir, paths, view, expected)}"
        for node, view in zip(nodes, views, strict=True)
        if view != expected
    ]
    if problems:
        raise FolderNotShared(
            f"{len(problems)} of {len(nodes)} Ray nodes do not see the driver's folders; mount them at the same "
            f"path on every node (a shared file system): {'; '.join(problems)}"
        )
    return int(sum(node["Resources"]["CPU"] for node in nodes))


def _nodes_with_cpus() -> list[dict]:
    """The alive nodes that can run a task; an error if there is none (the tasks would wait forever)."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise ClusterUnavailable("the Ray cluster has no alive node with CPUs")
    cpus = sum(n["Resources"]["CPU"] for n in nodes)
    log.info("Ray cluster: %d nodes with %d CPUs", len(nodes), cpus)
    return nodes


def _exist(paths: list[str]) -> list[bool]:
    """Which of ``paths`` exist here (on the node running this)."""
    return [os.path.exists(path) for path in paths]


def _apply(task: Callable[..., Any], args: tuple) -> Any:
    """The Ray task: any picklable callable (a function, a partial, a callable object), not only a function."""
    return task(*args)


def _difference(output_dir: Path, paths: list[str], view: list[bool], expected: list[bool]) -> str:
    if not view[0]:
        return f"does not see the output folder {output_dir} (a file the driver wrote there is missing)"
    path, seen = next((p, v) for p, v, e in zip(paths, view, expected, strict=True) if v != e)
    return f"{'sees' if seen else 'does not see'} {path}, unlike the driver"


def stream_results(task: Callable[..., Any], calls: Mapping[str, tuple], window: int) -> Iterator[Any]:
    """Submit the calls in order, at most ``window`` in flight; yield results in completion order, raise for
    failed tasks once all are done.

    Each ``ray.wait`` looks at the window only, and collects every task of it that has finished, so the driver's
    work is linear in the number of calls (waiting on all pending tasks at once is quadratic: BENCHMARKS.md).
    """
    import ray
    from ray.exceptions import RayError, RayTaskError

    remote = ray.remote(num_cpus=1, max_retries=RETRIES)(_apply)
    queued, names, in_flight, failed = iter(calls.items()), {}, [], {}
    log.info("%d tasks for the Ray cluster, at most %d in flight", len(calls), window)
    while True:
        for name, args in itertools.islice(queued, window - len(in_flight)):
            ref = remote.options(name=name).remote(task, args)
            names[ref] = name
            in_flight.append(ref)
        if not in_flight:
            break
        ray.wait(in_flight, num_returns=1)  # blocks until one is done
        done, in_flight = ray.wait(in_flight, num_returns=len(in_flight), timeout=0)  # all done by now, in order
        for ref in done:
            try:
                result = ray.get(ref)
            except RayError as err:  # the task raised, or lost its worker more often than it may be retried
                failed[names[ref]] = err
                continue
            yield result
    if not failed:
        return
    name, first = next(iter(failed.items()))
    if isinstance(first, RayTaskError):
        if isinstance(first.cause, PipelineError):
            raise first.cause  # an expected failure (a full disk) stays one line
        raise first  # an error inside the task keeps its traceback
    raise TasksLost(
        f"{len(failed)} of {len(names)} tasks failed on the Ray cluster ({', '.join(sorted(failed))}), "
        f"after {RETRIES} retries each; the first, {name}: {first}"
    )
