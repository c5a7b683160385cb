"""Wall time and peak memory of every row-count-bound component at a fraction of the real data sizes.

``python -m bench.scale --fractions 0.01 0.1 --work /tmp/scale`` writes annotation tables in the real formats
(EgoClip 3.85M clips, EgoMCQ 39.8k questions, EK100 67,217 train / 9,668 test clips, each times the
fraction), then runs each component in its own process (so its peak RSS is its own, read from ``wait4``)
and prints a table with the growth exponent between fractions (1: linear). Frames come from a fake decoder:
the video index and frame decoding are replaced by a fixed-length index and blank 16x16 pictures, so the
rest of the frames stage (planning, JPEG and shard writing, manifests, resume) runs as it does on real data.

Components are a name -> ``(egoclip_clips, work_dir) -> None`` table per module; ``MODULES`` lists the
modules whose ``COMPONENTS`` join the run (one line per module). A component may rely on those listed
before it in the same module (the frames output is planned before it is resumed, indexed and hashed).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np

Component = Callable[[int, Path], None]
EGOCLIP_CLIPS = 3_847_723  # EgoClip (EgoVLP): clips in egoclip.csv
EGOMCQ_QUESTIONS = 39_751
EK100_TRAIN, EK100_TEST, EK100_TEST_SENTENCES, EK100_TRAIN_SENTENCES = 67_217, 9_668, 3_842, 15_989
CLIPS_PER_VIDEO = 400  # EgoClip: about 3.85M clips over 9.6k videos
VIDEO_SECONDS = 1200.0
FPS = 30.0
CLIPS_PER_SHARD = 128  # params.yaml frames.clips_per_shard
STEPS_PER_CLIP = 1 / 512  # MLflow: one logged step per global batch of 512 clips
MODULES = ("bench.scale", "bench.scale_gallery")  # each module's COMPONENTS, in this order


def scaled(total: int, clips: int, least: int = 8) -> int:
    """``total`` scaled by the EgoClip fraction ``clips / EGOCLIP_CLIPS``, at least ``least``."""
    return max(least, round(total * clips / EGOCLIP_CLIPS))


# --- tables in the real formats ---------------------------------------------------------------------------


def data_dir(clips: int, work: Path) -> Path:
    return work / f"data-{clips}"


def write_tables(clips: int, work: Path) -> Path:
    """EgoClip (TSV), EgoMCQ (JSON) and EK100 (CSV) tables for ``clips`` EgoClip clips; kept when present."""
    out = data_dir(clips, work)
    _write_index_manifest(out / "index" / "manifest.parquet", clips)
    if (out / "done").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(clips)
    _write_egoclip(out / "egoclip.csv", clips, rng)
    _write_egomcq(out / "egomcq.json", scaled(EGOMCQ_QUESTIONS, clips), rng)
    for split, rows, sentences in (
        ("train", EK100_TRAIN, EK100_TRAIN_SENTENCES),
        ("test", EK100_TEST, EK100_TEST_SENTENCES),
    ):
        _write_ek100(out / f"EPIC_100_retrieval_{split}.csv", split, scaled(rows, clips), scaled(sentences, clips), rng)
    _write_sentences(
        out / "EPIC_100_retrieval_train.csv", out / "train_sentence.csv", scaled(EK100_TRAIN_SENTENCES, clips)
    )
    _write_sentences(
        out / "EPIC_100_retrieval_test.csv", out / "test_sentence.csv", scaled(EK100_TEST_SENTENCES, clips)
    )
    (out / "done").write_text("")
    return out


def _write_index_manifest(path: Path, clips: int) -> None:
    """A frames manifest of ``clips`` decoded EgoClip clips in ``CLIPS_PER_SHARD`` shards, written column by
    column (no shard files: the index is built from the manifest alone); kept when present."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from eva02at.data.shards import MANIFEST_SCHEMA

    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    k = pa.array(np.arange(clips))
    text = pc.binary_join_element_wise("#C C picks object ", pc.cast(k, pa.string()), " from the counter", "")
    columns = {
        "clip_id": pc.binary_join_element_wise(pc.cast(k, pa.string()), "_egoclip", ""),
        "source": pa.nulls(clips, pa.string()),
        "line": pa.array(np.arange(2, clips + 2, dtype=np.int32)),
        "start": pa.array(np.zeros(clips)),
        "end": pa.array(np.ones(clips)),
        "text": text,
        "frame_indices": pa.nulls(clips, MANIFEST_SCHEMA.field("frame_indices").type),
        "height": pa.array(np.full(clips, 16, np.int32)),
        "width": pa.array(np.full(clips, 16, np.int32)),
        "status": pa.array(np.full(clips, "ok")),
        "error": pa.nulls(clips, pa.string()),
        "shard": pc.binary_join_element_wise(
            "shard-", pc.cast(pa.array(np.arange(clips) // CLIPS_PER_SHARD), pa.string()), ".arrow", ""
        ),
        "clamped": pa.nulls(clips, pa.list_(pa.string())),
    }
    pq.write_table(pa.table(columns, schema=MANIFEST_SCHEMA), path)


def _video_uid(k: int) -> str:
    return f"{k:08x}-{k % 9973:04x}-4{k % 997:03x}-a{k % 991:03x}-{k * 2654435761 % (1 << 48):012x}"


def _write_egoclip(path: Path, clips: int, rng: np.random.Generator) -> None:
    header = "clip_idx video_uid video_dur narration_source narration_ind narration_time clip_start clip_end"
    header += " clip_text tag_verb tag_noun"
    starts = rng.uniform(0, VIDEO_SECONDS - 3, clips)
    lengths = rng.uniform(0.5, 2.5, clips)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, dialect="excel-tab")
        writer.writerow(header.split())
        for k in range(clips):
            video, start = _video_uid(k // CLIPS_PER_VIDEO), starts[k]
            text = f"#C C picks object {k % 977} from the counter"
            writer.writerow(
                [k, video, VIDEO_SECONDS, "narration_pass_1", k % 300, f"{start + 1:.3f}", f"{start:.3f}",
                 f"{start + lengths[k]:.3f}", text, f"[{k % 90}]", f"[{k % 300}, {k % 41}]"]
            )  # fmt: skip


def _write_egomcq(path: Path, questions: int, rng: np.random.Generator) -> None:
    def choice(k: int) -> dict:
        start = float(rng.uniform(0, VIDEO_SECONDS - 3))
        return {"video_uid": _video_uid(k), "clip_start": start, "clip_end": start + 1.5, "clip_text": f"clip {k}"}

    table = {
        str(q): {
            "query": {"clip_text": f"#C C opens drawer {q}"},
            "choices": {str(c): choice(q * 5 + c) for c in range(5)},
            "answer": int(rng.integers(5)),
            "types": 1 + q % 2,
        }
        for q in range(questions)
    }
    path.write_text(json.dumps(table))


def _write_ek100(path: Path, split: str, rows: int, sentences: int, rng: np.random.Generator) -> None:
    """Video rows whose classes repeat every ``sentences`` rows, so every video has a relevance-1 sentence
    among the first ``sentences`` rows (the sentence table), as in the real split."""
    from eva02at.data.synthetic.ek100 import EK100_COLUMNS

    classes = [
        (int(rng.integers(97)), sorted({int(n) for n in rng.integers(300, size=rng.integers(1, 4))}))
        for _ in range(sentences)
    ]

    def stamp(seconds: float) -> str:
        return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:06.3f}"

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EK100_COLUMNS)
        for k in range(rows):
            participant, video = f"P{k % 37 + 1:02d}", f"P{k % 37 + 1:02d}_{k % 700:03d}"
            start = float(rng.uniform(0, VIDEO_SECONDS - 5))
            verb, nouns = classes[k % sentences]
            writer.writerow(
                [f"{video}_{split}_{k}", participant, video, stamp(start), stamp(start), stamp(start + 2.5),
                 int(start * 50), int((start + 2.5) * 50), f"verb{verb} noun{nouns[0]}", f"verb{verb}", verb,
                 f"noun{nouns[0]}", nouns[0], str([f"noun{n}" for n in nouns]), str(nouns)]
            )  # fmt: skip


def _write_sentences(videos: Path, path: Path, rows: int) -> None:
    """Sentences as EK100 keys them: the narration ids of the first ``rows`` video rows."""
    with open(videos, newline="") as source, open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["narration_id", "narration"])
        for k, row in enumerate(csv.DictReader(source)):
            if k == rows:
                break
            writer.writerow([row["narration_id"], row["narration"]])


# --- the fake decoder -------------------------------------------------------------------------------------


def fake_decoder() -> None:
    """Replace the frames stage's video index, frame decoding and JPEG encoding: every video is
    ``VIDEO_SECONDS`` long at ``FPS``, every frame the JPEG of one blank picture; planning, shards and
    manifests stay the real ones."""
    from eva02at.data import extract
    from eva02at.data.jpeg import encode_jpeg
    from eva02at.data.video import FrameIndex

    frames = int(VIDEO_SECONDS * FPS)

    def index_video(path) -> FrameIndex:  # a new index per call, as a real one: its memory is counted
        return FrameIndex(FPS, np.arange(frames), np.arange(frames) // 30, np.arange(0, frames, 30) / FPS, frozenset())

    def scaled_frames(path, index, wanted: Sequence[int], height: int, width: int) -> Iterator[tuple[int, np.ndarray]]:
        blank = np.zeros((height, width, 3), np.uint8)
        return ((frame, blank) for frame in wanted)

    blank_jpeg = encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90)
    extract.index_video = index_video
    extract.scaled_frames = scaled_frames
    extract.encode_jpeg = lambda picture, quality: blank_jpeg


# --- components -------------------------------------------------------------------------------------------


def read_egoclip(clips: int, work: Path) -> None:
    from eva02at.data.annotations import Source
    from eva02at.data.formats.registered import read_segments

    segments, errors = read_segments("egoclip", Source(str(data_dir(clips, work) / "egoclip.csv"), "videos"))
    assert len(segments) == clips and not errors


def read_egomcq(clips: int, work: Path) -> None:
    from eva02at.data.annotations import Source
    from eva02at.data.formats.registered import read_segments

    segments, errors = read_segments("egomcq", Source(str(data_dir(clips, work) / "egomcq.json"), "videos"))
    assert len(segments) == 5 * scaled(EGOMCQ_QUESTIONS, clips) and not errors


def read_ek100(clips: int, work: Path) -> None:
    from eva02at.data.annotations import Source
    from eva02at.data.formats.registered import read_segments

    path = data_dir(clips, work) / "EPIC_100_retrieval_train.csv"
    segments, errors = read_segments("ek100", Source(str(path), "videos"))
    assert len(segments) == scaled(EK100_TRAIN, clips) and not errors, errors[:1]


def soft_labels(clips: int, work: Path) -> None:
    from eva02at.data.labels import build_relevancy

    data = data_dir(clips, work)
    build_relevancy(data / "EPIC_100_retrieval_train.csv", data / "train_sentence.csv", work / "relevancy.npz")


def frames_dir(clips: int, work: Path) -> Path:
    return work / f"frames-{clips}" / "egoclip"


def _frames(clips: int, work: Path) -> None:
    from eva02at.data.annotations import Source
    from eva02at.data.extract import extract
    from eva02at.data.formats.registered import read_segments
    from eva02at.data.shards import FrameSpec

    fake_decoder()
    segments, errors = read_segments("egoclip", Source(str(data_dir(clips, work) / "egoclip.csv"), "videos"))
    spec = FrameSpec(num_frames=4, views=2, size=16)
    extract(segments, errors, "videos", frames_dir(clips, work), spec, workers=1, clips_per_shard=CLIPS_PER_SHARD)


def frames_plan(clips: int, work: Path) -> None:
    """A fresh frames run over EgoClip: read, plan, decode (fake) and write every shard, join the manifest."""
    shutil.rmtree(frames_dir(clips, work).parent, ignore_errors=True)
    _frames(clips, work)


def frames_resume(clips: int, work: Path) -> None:
    """The same run again, every shard finished: read, plan, check stamps and sizes, hash, join the manifest."""
    _frames(clips, work)


def train_imports(clips: int, work: Path) -> None:
    """The training index's imports alone (torch, pyarrow): its process's memory before any index."""
    import eva02at.train.data
    import eva02at.train.sampling  # noqa: F401


def clip_index(clips: int, work: Path) -> None:
    """The training index of ``clips`` clips from the manifest alone (every clip located, its caption read)."""
    from eva02at.data.shards import FrameShards
    from eva02at.train.data import ClipPairs

    shards = FrameShards(data_dir(clips, work) / "index")
    pairs = ClipPairs(shards, shards.ids, shards.texts(shards.ids))
    assert len(pairs) == clips and pairs.positions[-1] == clips - 1


def train_index(clips: int, work: Path) -> None:
    """The pretraining stage's dataset: the clip index, the captions, the sampler's first epoch, some items."""
    from eva02at.data.shards import FrameShards
    from eva02at.train.data import ClipPairs, OwnCaptions
    from eva02at.train.sampling import RelevantPairSampler

    shards = FrameShards(frames_dir(clips, work))
    pairs = ClipPairs(shards, shards.ids, shards.texts(shards.ids))
    sampler = RelevantPairSampler(OwnCaptions(len(pairs)), batch_size=min(512, len(pairs)))
    sampler.set_epoch(0)
    for batch in [next(iter(sampler))] * 4:
        for video, caption in batch:
            pairs[(0, video, caption)]


def evaluate(clips: int, work: Path) -> None:
    """EK100 MIR over the test split (random similarities) and EgoMCQ accuracy over its questions."""
    import pandas as pd

    from eva02at.data.labels import ek100_relevancy
    from eva02at.evaluation.metrics import egomcq_accuracy, ek100_mir

    data = data_dir(clips, work)
    relevancy = ek100_relevancy(
        pd.read_csv(data / "EPIC_100_retrieval_test.csv"), pd.read_csv(data / "test_sentence.csv")
    )
    rng = np.random.default_rng(0)
    ek100_mir(rng.standard_normal(relevancy.shape, dtype=np.float32), relevancy)
    questions = scaled(EGOMCQ_QUESTIONS, clips)
    types = 1 + np.arange(questions) % 2
    egomcq_accuracy(rng.standard_normal((questions, 5)), rng.integers(5, size=questions), types)


def mlflow_logging(clips: int, work: Path) -> None:
    """One epoch of training metrics (loss, learning rate, throughput per step) into a local MLflow store."""
    from eva02at.core.tracking import Tracker

    store = work / f"mlflow-{clips}.db"
    store.unlink(missing_ok=True)
    with Tracker("scale", "train", f"sqlite:///{store}") as tracker:
        for step in range(max(1, round(clips * STEPS_PER_CLIP))):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 1e-4, "clips_per_s": 100.0}, step=step)


def dvc_hashing(clips: int, work: Path) -> None:
    """What ``dvc repro`` does to the frames output once the stage ends: hash every file, store it in the cache."""
    repo = work / f"dvc-{clips}"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
    shutil.copytree(frames_dir(clips, work), repo / "egoclip", copy_function=os.link)  # same bytes, no copy
    subprocess.run([*dvc, "add", "-q", "egoclip"], cwd=repo, check=True)


COMPONENTS: dict[str, Component] = {
    "read egoclip": read_egoclip,
    "read egomcq": read_egomcq,
    "read ek100 train": read_ek100,
    "soft labels (ek100 train)": soft_labels,
    "frames plan+write (egoclip)": frames_plan,
    "frames resume (egoclip)": frames_resume,
    "imports of the training index (baseline)": train_imports,
    "training index+sampler (egoclip)": train_index,
    "training index from the manifest (egoclip)": clip_index,
    "evaluate (ek100 test, egomcq)": evaluate,
    "mlflow logging (1 epoch)": mlflow_logging,
    "dvc hashing of frames (egoclip)": dvc_hashing,
}


def components() -> dict[str, Component]:
    """Every module's components, in ``MODULES`` order; a name twice is an error."""
    table: dict[str, Component] = {}
    for module in MODULES:
        for name, component in importlib.import_module(module).COMPONENTS.items():
            if name in table:
                raise ValueError(f"component {name!r} of {module} is already registered")
            table[name] = component
    return table


def component(name: str) -> Component:
    """The component ``name``, importing ``MODULES`` only up to its own: a component's peak memory must not
    count a later module's imports (torch, for the gallery's)."""
    for module in MODULES:
        found = importlib.import_module(module).COMPONENTS.get(name)
        if found is not None:
            return found
    raise KeyError(f"unknown component {name!r}")


# --- measurement ------------------------------------------------------------------------------------------


def measure(name: str, clips: int, work: Path) -> dict[str, float]:
    """Seconds of the component's call (wall and CPU) and the peak RSS (GiB) of its process, which runs
    nothing else."""
    command = [sys.executable, "-m", "bench.scale", "--run", name, "--clips", str(clips), "--work", str(work)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"component {name!r} at {clips} clips failed (wait status {status})")
    return json.loads(output.splitlines()[-1]) | {"cpu_seconds": usage.ru_utime + usage.ru_stime}


def peak_rss_gib() -> float:
    """This process's peak RSS since it started (VmHWM: ``ru_maxrss`` keeps the forking parent's peak across
    exec) or its waited-for children's, whichever is larger."""
    status = Path("/proc/self/status").read_text()
    own_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    return max(own_kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2**20


def growth(small: float, large: float, ratio: float) -> float:
    """The exponent k of ``large / small = ratio ** k``."""
    return math.log(large / small) / math.log(ratio)


def report(results: dict[float, dict[str, dict[str, float]]]) -> str:
    fractions = sorted(results)
    header = ["component"] + [f"{f:g}: wall s / CPU s / GiB" for f in fractions]
    header += [f"growth {a:g}->{b:g} (CPU, mem)" for a, b in pairwise(fractions)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in results[fractions[0]]:
        cells = [name] + [
            "{seconds:.1f} / {cpu_seconds:.1f} / {peak_gib:.2f}".format(**results[f][name]) for f in fractions
        ]
        for a, b in pairwise(fractions):
            time_k = growth(results[a][name]["cpu_seconds"], results[b][name]["cpu_seconds"], b / a)
            mem_k = growth(results[a][name]["peak_gib"], results[b][name]["peak_gib"], b / a)
            cells.append(f"{time_k:.2f}, {mem_k:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--work", type=Path, default=Path("/tmp/eva02at-scale"))
    parser.add_argument("--only", nargs="*", help="component names to run (default: all)")
    parser.add_argument("--out", default="-", help="JSON results file (- for standard output)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one component in this process
    parser.add_argument("--clips", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run = component(args.run)
        started = time.perf_counter()
        run(args.clips, args.work)
        print(json.dumps({"seconds": time.perf_counter() - started, "peak_gib": peak_rss_gib()}))
        return
    from bench.common import machine_info, write_json

    table = components()
    names = args.only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown component(s) {unknown}; known: {list(table)}")
    results: dict[float, dict[str, dict[str, float]]] = {}
    for fraction in sorted(args.fractions):
        clips = round(EGOCLIP_CLIPS * fraction)
        write_tables(clips, args.work)
        results[fraction] = {}
        for name in names:
            results[fraction][name] = measure(name, clips, args.work)
            print(f"{fraction:g} {name}: {results[fraction][name]}", file=sys.stderr, flush=True)
    print(report(results), file=sys.stderr)
    write_json({"machine": machine_info(), "results": {str(f): r for f, r in results.items()}}, args.out)


if __name__ == "__main__":
    main()
