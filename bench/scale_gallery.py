"""Wall time and peak memory of the gallery's row-count-bound components at a chosen size: the export's streaming
write, its compact codes, and the binary search index built and queried over them.

    python -m bench.scale_gallery --clips 400000      # about a minute here
    python -m bench.scale_gallery --clips 4000000 --json gallery.json

The embeddings are synthetic (no model, no pixels): batches of unit vectors drawn around the cluster centres of
``bench.search_index``'s mixture (256-d, as the model's), written through the export's own writer as if the model had
computed them. Each component runs in a fresh process, in order, over the files the one before wrote in the work
folder; its peak resident memory is that process's (``wait4``), imports included. ``COMPONENTS`` holds them for
``bench/scale.py``: each takes the clip count and the work folder, and first runs the components before it
when their files are missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.common import machine_info, write_json
from bench.search_index import Mixture
from eva02at.export.codes import BinaryCodeParams, CodesParams, codes_path, export_codes
from eva02at.export.embeddings import VIDEO, ExportInfo, stream_embeddings
from eva02at.search.index import IndexParams, build_index
from eva02at.search.query import open_gallery

DIM = 256  # the model's embedding width
BATCH = 1024  # vectors per synthetic model batch
QUERIES = 100
CODES = CodesParams(int8=True, binary=BinaryCodeParams(bits_per_dim=1, rotation="itq"))  # params.yaml's export.codes
INDEX = IndexParams(kind="binary")  # the defaults `eva02at search --index binary` uses: 1024 cells, nprobe 256
_SEED = 0


def _mixture() -> Mixture:
    return Mixture.make(DIM, clusters=4096, spread=0.9, offset=0.3, seed=_SEED)


def export_file(work: Path) -> Path:
    return work / "gallery_video.parquet"


def _id_columns(clips: int) -> pa.Table:
    """The export's id columns for ``clips`` synthetic clips (ten per source video, 4 s apart)."""
    numbers = pa.array(np.arange(clips))
    start = np.arange(clips) % 10 * 4.0
    return pa.table(
        {
            "clip_id": pc.binary_join_element_wise("clip_", pc.cast(numbers, pa.string()), ""),
            "source": pc.binary_join_element_wise(
                "video_", pc.cast(pa.array(np.arange(clips) // 10), pa.string()), ".mp4"
            ),
            "start": pa.array(start),
            "end": pa.array(start + 4.0),
            "text": pa.array(np.full(clips, ""), pa.string()),
        }
    )


def _draw(centres: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit vectors around random ``centres``: clustered as embeddings are, a few times cheaper to draw than
    ``Mixture.draw`` (isotropic spread: no D x D product), since millions are drawn here."""
    offsets = rng.standard_normal((size, DIM), np.float32) * np.float32(0.9 / np.sqrt(DIM))
    vectors = centres[rng.integers(len(centres), size=size)] + offsets
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _centres() -> np.ndarray:
    return _mixture().centres.astype(np.float32)


def _batches(clips: int) -> Iterator[np.ndarray]:
    centres = _centres()
    for number, start in enumerate(range(0, clips, BATCH)):
        yield _draw(centres, np.random.default_rng(_SEED + 1 + number), min(BATCH, clips - start))


def run_export(clips: int, work: Path) -> None:
    """The export's writer fed batch by batch, as ``export_videos`` feeds it from the model."""
    info = ExportInfo(VIDEO, "gallery", "synthetic.pt", "0" * 64, "synthetic", 16, "")
    stream_embeddings(export_file(work), _id_columns(clips), _batches(clips), info, DIM)


def run_codes(clips: int, work: Path) -> None:
    """``export_codes`` over the export: int8 and 1-bit ITQ codes, as ``params.yaml`` sets them."""
    if not export_file(work).is_file():
        run_export(clips, work)
    export_codes(export_file(work), codes_path(export_file(work)), CODES)


def run_search(clips: int, work: Path) -> None:
    """Open the gallery as ``eva02at search`` does, build the binary IVF index and answer ``QUERIES`` queries one at
    a time; prints the median latency."""
    if not codes_path(export_file(work)).is_file():
        run_codes(clips, work)
    gallery = open_gallery(export_file(work), INDEX, work / "cache")
    index = build_index(gallery.vectors, INDEX, gallery.codes)
    queries = _draw(_centres(), np.random.default_rng(_SEED + 10**6), QUERIES)
    latencies = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None], 10)
        latencies.append(time.perf_counter() - start)
    print(f"median query latency: {statistics.median(latencies) * 1e3:.1f} ms")


COMPONENTS: dict[str, Callable[[int, Path], None]] = {
    "export": run_export,
    "codes": run_codes,
    "search": run_search,
}


def measure(name: str, clips: int, work: Path) -> dict:
    """Run one component in a fresh process (``imports``: none, the modules' own footprint); its wall and CPU time,
    peak RSS and what it printed."""
    command = [sys.executable, "-m", "bench.scale_gallery", "--clips", str(clips), "--work", str(work), "--only", name]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench.scale_gallery: component {name} at {clips} clips failed ({status})")
    return {
        "component": name,
        "clips": clips,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # less sensitive than wall time to a shared machine's load
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "note": output.strip(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=400_000)
    parser.add_argument("--work", type=Path, help="folder for the files (default: a temporary one, removed)")
    parser.add_argument("--only", choices=["imports", *COMPONENTS], help="run this component here, unmeasured")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.only:
        if args.only != "imports":
            COMPONENTS[args.only](args.clips, args.work)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-gallery-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name in ["imports", *COMPONENTS]:
            row = measure(name, args.clips, work)
            times = f"{row['wall_s']:7.1f} s wall {row['cpu_s']:7.1f} s CPU"
            print(
                f"{name:8s} {row['clips']:>9d} clips {times} {row['peak_rss_mib']:6.0f} MiB  {row['note']}", flush=True
            )
            rows.append(row)
    finally:
        if args.work is None:
            shutil.rmtree(work)
    if args.json:
        write_json({"machine": machine_info(), "dim": DIM, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
