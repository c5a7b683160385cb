"""Decode annotated clips once into frame shards: parallel over shards, resumable, failures recorded.

A collection is planned into shards of at most ``clips_per_shard`` clips, whole videos where they fit and a
long video's clips (in time order) over several shards, so a worker's memory is bounded by one shard whatever
the video's length. The shards of a cut video form a chain that one worker decodes in order
(:func:`decode_chain`, a plain picklable call): it reads the video's frame index once and drops it after the
video's last shard. Decoding one shard writes its frames and then its manifest part, both atomically; the
part records a stamp of what the shard was planned from and the shard file's size and checksum. A rerun
keeps a shard whose stamp and size match (one footer read and one stat per shard), and checks the kept
shards' checksums in a thread while the rest decodes: a shard whose bytes changed is decoded again after it.
Every clip ends as a manifest row, "ok" or "error" with the reason; the run fails only above a failure
threshold. Planning and the final manifest hold one shard's rows at a time, so memory grows with the clip
count only by the plan itself; a rerun that decoded nothing keeps the manifest that already joins the parts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from itertools import chain, groupby
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm import tqdm

from eva02at.core.atomic import remove_leftovers
from eva02at.core.errors import PipelineError
from eva02at.core.workers import check_parent, map_unordered
from eva02at.data.annotations import CLAMP_END_PAST_VIDEO, RowError, Segment
from eva02at.data.cluster import run_on_cluster
from eva02at.data.jpeg import encode_jpeg
from eva02at.data.shards import (
    MANIFEST,
    MANIFEST_SCHEMA,
    SHARD_LAYOUT,
    SHARDS,
    SPEC_KEY,
    FrameSpec,
    ShardFile,
    ShardReadError,
    manifest_metadata,
    manifest_row_groups,
    manifest_rows,
    manifest_tail,
    read_manifest,
    write_manifest,
    write_manifest_tables,
    write_shard,
)
from eva02at.data.video import (
    FrameIndex,
    VideoDecodeError,
    index_video,
    scaled_frames,
    scaled_size,
    seconds_to_frames,
    segment_indices,
)

log = logging.getLogger(__name__)
PARTS = "parts"
STAMP_FIELDS = tuple(sorted(f.name for f in fields(Segment)))  # in the order json.dumps(sort_keys) writes them
_stamp_values = attrgetter(*STAMP_FIELDS)
_CLIP_JSON = "{" + ", ".join(f"{json.dumps(name)}: %s" for name in STAMP_FIELDS) + "}"  # one clip's dict
_JSON_OF_TYPE = {str: encode_basestring_ascii, int: int.__repr__, float: float.__repr__}  # as json.dumps writes


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: decode ``clips`` into ``<out_dir>/shards/<name>.arrow`` and ``parts/<name>.parquet``."""

    name: str  # shard-00012
    stamp: str  # hash of everything the shard's bytes depend on
    clips: tuple[Segment, ...]  # grouped by video, each video's clips in time order
    video_root: str
    out_dir: str
    spec: FrameSpec

    @cached_property  # a resume looks at every shard's files: 38k at EgoClip's size
    def shard_path(self) -> Path:
        return Path(self.out_dir) / SHARDS / f"{self.name}.arrow"

    @cached_property
    def part_path(self) -> Path:
        return Path(self.out_dir) / PARTS / f"{self.name}.parquet"


ShardChain = tuple[ShardTask, ...]  # consecutive shards linked by the videos they share, decoded by one worker


@dataclass(frozen=True)
class ShardResult:
    name: str
    clips: int
    failed: int
    indexed: tuple[str, ...] = ()  # videos whose frame index this shard read (a cut video's first shard only)


@dataclass(frozen=True)
class Summary:
    clips: int
    ok: int
    failed: int
    kept_shards: int
    written_shards: int
    clamped: dict[str, int] = field(default_factory=dict)  # segments moved inside their video, per reason

    def __str__(self) -> str:
        clamped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.clamped.items())) or "none"
        return (
            f"{self.ok}/{self.clips} clips decoded, {self.failed} failed, clamped: {clamped} "
            f"({self.written_shards} shards written, {self.kept_shards} kept from an earlier run)"
        )


class TooManyFailures(PipelineError):
    """More clips failed than the configured threshold allows; the manifest is written all the same."""

    def __init__(self, message: str, summary: Summary):
        super().__init__(message)
        self.summary = summary


Runner = Callable[[Sequence[ShardChain], int], Iterable[ShardResult]]


def extract(
    segments: Sequence[Segment],
    row_errors: Sequence[RowError],
    video_root: str | Path,
    out_dir: str | Path,
    spec: FrameSpec,
    workers: int = 1,
    clips_per_shard: int = 256,
    max_failure_fraction: float = 0.05,
    runner: Runner | None = None,
) -> Summary:
    """Decode ``segments`` into ``out_dir/shards`` and write ``out_dir/manifest.parquet``.

    ``runner`` runs the chains of shard tasks that are not finished yet (default: :func:`run_local`, a
    process pool of ``workers``); any runner that calls :func:`decode_chain` on each chain gives the same
    bytes.
    """
    out_dir = Path(out_dir)
    (out_dir / SHARDS).mkdir(parents=True, exist_ok=True)
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    tasks = plan_shards(segments, video_root, out_dir, spec, clips_per_shard)
    kept, todo = [], []
    for task in tasks:
        recorded = finished_file(task)
        if recorded is None:
            todo.append(task)
        else:
            kept.append((task, recorded))
    _remove_stale(out_dir, {task.name for task in tasks})
    run = runner or run_local
    with (
        ThreadPoolExecutor(1, thread_name_prefix="shard-checksums") as pool,
        tqdm(total=sum(len(t.clips) for t in todo), unit="clip", desc=f"frames {out_dir.name}", smoothing=0.1) as bar,
    ):
        changed = pool.submit(lambda: [task for task, recorded in kept if not content_matches(task, recorded)])
        indexed = 0
        for result in run(chain_shards(todo), workers):
            bar.update(result.clips)
            indexed += len(result.indexed)
        redo = changed.result()
        bar.total += sum(len(t.clips) for t in redo)
        for result in run(chain_shards(redo), workers):
            bar.update(result.clips)
            indexed += len(result.indexed)
    log.info("%s: %d videos indexed for %d shards", out_dir, indexed, len(todo) + len(redo))
    return finish(tasks, row_errors, out_dir, spec, len(todo) + len(redo), max_failure_fraction)


def plan_shards(
    segments: Sequence[Segment], video_root: str | Path, out_dir: str | Path, spec: FrameSpec, clips_per_shard: int
) -> list[ShardTask]:
    """Shards in sorted video order: a video that fits the current shard joins it, one that fits an empty shard
    starts one, a longer one is cut, in time order, into shards of ``clips_per_shard`` clips."""
    by_video: dict[str, list[Segment]] = defaultdict(list)
    for segment in segments:
        by_video[segment.video].append(segment)
    groups: list[list[Segment]] = [[]]
    in_time_order = attrgetter("start", "end", "clip_id")
    for video in sorted(by_video):
        clips = sorted(by_video[video], key=in_time_order)
        if groups[-1] and len(groups[-1]) + len(clips) > clips_per_shard:
            groups.append([])
        start = 0
        while start < len(clips):  # fill the current shard, then new ones, with slices of the video's clips
            if len(groups[-1]) == clips_per_shard:
                groups.append([])
            room = clips_per_shard - len(groups[-1])
            groups[-1] += clips[start : start + room]
            start += room
    groups = [group for group in groups if group]
    root, out = str(video_root), str(out_dir)
    head = _stamp_head(spec, root)
    return [
        ShardTask(f"shard-{i:05d}", _stamp(group, head), tuple(group), root, out, spec)
        for i, group in enumerate(groups)
    ]


def chain_shards(tasks: Sequence[ShardTask]) -> list[ShardChain]:
    """``tasks`` (in plan order) as chains: a task whose first video is the last video of the task before
    joins that task's chain, so the shards of a video cut over several are decoded in order by one worker,
    which reads the video's frame index once (all its packets) instead of once per shard."""
    chains: list[list[ShardTask]] = []
    for task in tasks:
        if chains and chains[-1][-1].clips[-1].video == task.clips[0].video:
            chains[-1].append(task)
        else:
            chains.append([task])
    return [tuple(chain) for chain in chains]


def _stamp_head(spec: FrameSpec, video_root: str) -> str:
    """What every shard's stamp text starts with: the layout, the video root and the spec."""
    return json.dumps([SHARD_LAYOUT, video_root, asdict(spec)], sort_keys=True)[:-1]


def _stamp(group: Sequence[Segment], head: str) -> str:
    """SHA-256 of ``json.dumps([SHARD_LAYOUT, video_root, asdict(spec), clips], sort_keys=True)``, ``clips`` being
    each clip's fields by name: the stamps earlier runs recorded, so their shards stay valid."""
    clips = _clips_json(group)
    if clips is None:  # a value json.dumps writes in a way of its own (NaN, a bool, a NumPy number)
        clips = json.dumps([dict(zip(STAMP_FIELDS, _stamp_values(s), strict=True)) for s in group], sort_keys=True)
    return hashlib.sha256(f"{head}, {clips}]".encode()).hexdigest()


def _clips_json(group: Sequence[Segment]) -> str | None:
    """``json.dumps`` of the clips' field dicts, sorted keys, assembled column by column from the encodings
    json.dumps uses for str, int, finite float and tuple values (about two thirds of its time per clip, which
    counts at EgoClip's 3.85M); None when a column holds anything else."""
    columns = [_column_json(column) for column in zip(*map(_stamp_values, group), strict=True)]
    if any(column is None for column in columns):
        return None
    return "[" + ", ".join(map(_CLIP_JSON.__mod__, zip(*columns, strict=True))) + "]"


def _column_json(values: tuple) -> list[str] | None:
    """Each value's JSON text as json.dumps writes it, for a column of one plain type; else None."""
    kinds = set(map(type, values))
    kind = kinds.pop() if len(kinds) == 1 else None
    if kind is tuple:  # clamp reasons: few distinct tuples of strings
        try:
            texts = {value: json.dumps(value, sort_keys=True) for value in set(values)}
        except TypeError:  # an unhashable member
            return None
        return list(map(texts.__getitem__, values))
    if kind not in _JSON_OF_TYPE or (kind is float and not all(map(math.isfinite, values))):
        return None
    return list(map(_JSON_OF_TYPE[kind], values))


def finished_file(task: ShardTask) -> ShardFile | None:
    """The shard file an earlier run finished for this task (its part has the stamp, its file the recorded
    size), or None; the checksum is :func:`content_matches`, checked while other shards decode."""
    shard, part = task.shard_path, task.part_path
    recorded = _recorded_file(task.stamp, part)
    if recorded is None:
        return None
    try:
        found: int | None = os.stat(shard).st_size
    except FileNotFoundError:
        found = None
    if found != recorded.size:
        state = "missing" if found is None else f"{found} bytes, recorded {recorded.size}"
        log.warning("%s does not match its manifest part %s (%s); decoding it again", shard, part, state)
        return None
    return recorded


def content_matches(task: ShardTask, recorded: ShardFile) -> bool:
    """Whether a kept shard's bytes still have the checksum its part recorded (``recorded``, as read by
    :func:`finished_file`: a resume reads each part's footer once)."""
    if ShardFile.of(task.shard_path) == recorded:
        return True
    log.warning("%s does not match its manifest part %s (checksum); decoding it again", task.shard_path, task.part_path)
    return False


def _recorded_file(stamp: str, part: Path) -> ShardFile | None:
    """The shard file a part records, or None when the part is missing, unreadable or of another plan."""
    if not part.is_file():
        return None
    try:
        meta = manifest_metadata(part)
    except ShardReadError as err:
        log.warning("%s; decoding it again", err)
        return None
    if meta.get("stamp") != stamp:
        return None
    return ShardFile(int(meta.get("shard_bytes", -1)), meta.get("shard_sha256", ""))


def _remove_stale(out_dir: Path, names: set[str]) -> None:
    """Remove shards of an earlier plan that this one does not have, and what killed writers left unfinished."""
    remove_leftovers(out_dir)
    for folder, suffix in ((SHARDS, ".arrow"), (PARTS, ".parquet")):
        remove_leftovers(out_dir / folder)
        for path in (out_dir / folder).iterdir():
            if path.name.endswith(suffix) and path.name[: -len(suffix)] not in names:
                path.unlink()


def run_local(chains: Sequence[ShardChain], workers: int) -> Iterator[ShardResult]:
    """Shard results in-process (``workers`` <= 1) or from a pool of processes that die with this one."""
    results = map(decode_chain, chains) if workers <= 1 else map_unordered(decode_chain, chains, workers)
    for chain_results in results:
        yield from chain_results


def ray_runner(address: str) -> Runner:
    """A runner of the shard tasks as Ray tasks on the cluster at ``address`` (``auto``, ``host:port``,
    ``ray://host:port``); the output is the same as a local run's. Workers run in other folders, on other
    machines, so the tasks carry absolute paths (their stamps, planned from the paths as given, stay)."""

    def run(chains: Sequence[ShardChain], workers: int) -> Iterator[ShardResult]:
        if not chains:
            return
        absolute = [
            tuple(
                replace(t, video_root=str(Path(t.video_root).absolute()), out_dir=str(Path(t.out_dir).absolute()))
                for t in chain
            )
            for chain in chains
        ]
        calls = {chain[0].name: (chain,) for chain in absolute}  # a chain is named after its first shard
        out_dir, video_root = Path(absolute[0][0].out_dir), Path(absolute[0][0].video_root)
        for chain_results in run_on_cluster(address, decode_chain, calls, out_dir, inputs=[video_root]):
            yield from chain_results

    return run


def finish(
    tasks: Sequence[ShardTask],
    row_errors: Sequence[RowError],
    out_dir: str | Path,
    spec: FrameSpec,
    written: int,
    max_failure_fraction: float,
) -> Summary:
    """Join the shards' manifest parts and the annotation errors into the manifest (unless it joins them
    already); summarise; apply the failure threshold."""
    out_dir = Path(out_dir)
    errors = [
        _error_row(Segment(f"{Path(e.file).name}:{e.line}", e.file, 0.0, 0.0, e.line), e.reason) for e in row_errors
    ]
    error_table = pa.Table.from_pylist(errors, schema=MANIFEST_SCHEMA)
    tally = None if written else _tally_if_joined(out_dir / MANIFEST, tasks, error_table, spec)
    if tally is None:
        tally = _Tally()
        parts = _read_ahead(read_manifest, [task.part_path for task in tasks])
        write_manifest_tables(out_dir / MANIFEST, map(tally, chain(parts, [error_table])), spec.metadata())
    summary = Summary(
        tally.clips, tally.clips - tally.failed, tally.failed, len(tasks) - written, written, dict(tally.clamped)
    )
    log.info("%s: %s", out_dir, summary)
    if tally.clips and tally.failed / tally.clips > max_failure_fraction:
        raise TooManyFailures(
            f"{out_dir}: {tally.failed} of {tally.clips} clips failed, more than the allowed fraction "
            f"{max_failure_fraction}; decoded clips are kept, see {out_dir / MANIFEST}",
            summary,
        )
    return summary


def _tally_if_joined(
    manifest: Path, tasks: Sequence[ShardTask], error_table: pa.Table, spec: FrameSpec
) -> _Tally | None:
    """The tally of ``manifest`` if it already joins the tasks' parts and ``error_table``, else None.

    It does when it was written with this spec after every part (a part written since is newer), holds one row
    per planned clip and ends with these annotation errors: a resume that decoded nothing then reads a few of
    its columns instead of reading every part (~38k at EgoClip's size) to write the same bytes again.
    """
    try:
        newest_part = max((os.stat(task.part_path).st_mtime_ns for task in tasks), default=0)
        if not manifest.is_file() or manifest.stat().st_mtime_ns <= newest_part:
            return None
        if manifest_metadata(manifest).get(SPEC_KEY) != spec.metadata()[SPEC_KEY]:
            return None
        if manifest_rows(manifest) != sum(len(task.clips) for task in tasks) + len(error_table):
            return None
        if not manifest_tail(manifest, len(error_table)).equals(error_table):
            return None
        tally = _Tally()
        for table in manifest_row_groups(manifest, list(_Tally.COLUMNS)):
            tally(table)
        return tally
    except (ShardReadError, FileNotFoundError):
        return None


def _read_ahead(read: Callable[[Path], pa.Table], paths: Sequence[Path], ahead: int = 8) -> Iterator[pa.Table]:
    """``read`` of each path, in order, with up to ``ahead`` reads running in two threads (Parquet reads
    release the GIL): joining ~38k parts of EgoClip is bound by their per-file cost, not by memory."""
    with ThreadPoolExecutor(2, thread_name_prefix="manifest-parts") as pool:
        pending: deque[Future[pa.Table]] = deque()
        for path in paths:
            pending.append(pool.submit(read, path))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Tally:
    """Counts clips, failures and clamps of manifest tables passing through, and logs each failure."""

    COLUMNS = ("status", "clip_id", "source", "error", "clamped")  # the manifest columns it reads

    def __init__(self):
        self.clips, self.failed, self.clamped = 0, 0, Counter()

    def __call__(self, table: pa.Table) -> pa.Table:
        self.clips += len(table)
        for row in table.filter(pc.not_equal(table["status"], "ok")).select(["clip_id", "source", "error"]).to_pylist():
            self.failed += 1
            log.warning("failed clip %s (%s): %s", row["clip_id"], row["source"] or "annotation", row["error"])
        counts = pc.value_counts(pc.list_flatten(table["clamped"]))
        self.clamped.update(
            dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))
        )
        return table


def decode_chain(chain: Sequence[ShardTask]) -> list[ShardResult]:
    """Decode a chain's shards in order (see :func:`chain_shards`). The index of a video cut over several of
    them is read for its first shard and dropped after its last, so a worker holds at most one index beyond
    that of the video it decodes, whatever the number of videos."""
    carried: dict[str, FrameIndex | VideoDecodeError] = {}
    following = [task.clips[0].video for task in chain[1:]] + [None]
    return [decode_shard(task, carried, continues) for task, continues in zip(chain, following, strict=True)]


def decode_shard(
    task: ShardTask, carried: dict[str, FrameIndex | VideoDecodeError] | None = None, continues: str | None = None
) -> ShardResult:
    """Decode one shard's clips; write its frames, then its manifest part (the part marks it finished).

    ``carried`` holds the index of the video the shard before left unfinished; on return it holds only that of
    ``continues``, the video the next shard of the chain goes on with.
    """
    carried = {} if carried is None else carried
    views, manifest, indexed = [], [], []
    for video, clips in groupby(task.clips, key=lambda s: s.video):
        index = carried.pop(video, None)
        path = Path(task.video_root) / video
        if index is None:
            index = _index_or_error(path)
            indexed.append(video)
        if video == continues:
            carried[video] = index
        video_views, rows = decode_video(path, list(clips), task.spec, f"{task.name}.arrow", index)
        views += video_views
        manifest += rows
    check_parent()  # a worker whose stage was killed must not write
    shard = write_shard(task.shard_path, views)
    meta = {"stamp": task.stamp, "shard_bytes": str(shard.size), "shard_sha256": shard.sha256}
    write_manifest(task.part_path, manifest, meta)
    return ShardResult(task.name, len(task.clips), sum(r["status"] != "ok" for r in manifest), tuple(indexed))


def _index_or_error(path: Path) -> FrameIndex | VideoDecodeError:
    """The frame index of a video, or the error that says why it cannot be read (its clips report it)."""
    try:
        return index_video(path)
    except VideoDecodeError as err:
        return err


def decode_video(
    path: Path, clips: list[Segment], spec: FrameSpec, shard: str, index: FrameIndex | VideoDecodeError
) -> tuple[list[dict], list[dict]]:
    """Shard view rows and manifest rows of the clips of one video, from one pass over the video (``index``:
    its frame index, or why it could not be read)."""
    if isinstance(index, VideoDecodeError):
        return [], [_error_row(clip, index.reason) for clip in clips]
    planned, rows = {}, {}
    for clip in clips:
        try:
            planned[clip.clip_id] = clip_views(path, index, clip, spec)
        except VideoDecodeError as err:
            rows[clip.clip_id] = _error_row(clip, err.reason)
    wanted = sorted({i for views, _ in planned.values() for view in views for i in view})
    jpegs, failures = {}, {}
    try:
        for frame, picture in scaled_frames(path, index, wanted, spec.height, spec.width):
            if isinstance(picture, str):
                failures[frame] = picture
            else:
                jpegs[frame] = encode_jpeg(picture, spec.jpeg_quality)
    except VideoDecodeError as err:  # the file went away or cannot be reopened
        failures = dict.fromkeys(wanted, err.reason)
    views = []
    for clip in clips:
        if clip.clip_id not in planned:
            continue
        clip_frames, clamped = planned[clip.clip_id]
        failure = next((failures[i] for view in clip_frames for i in view if i in failures), None)
        if failure:
            rows[clip.clip_id] = _error_row(clip, failure, clamped)
            continue
        views += [
            {"clip_id": clip.clip_id, "view": v, "frame_indices": idx, "jpeg": [jpegs[i] for i in idx]}
            for v, idx in enumerate(clip_frames)
        ]
        rows[clip.clip_id] = _ok_row(clip, clip_frames, clamped, spec, shard)
    return views, [rows[clip.clip_id] for clip in clips]


def clip_views(
    path: Path, index: FrameIndex, clip: Segment, spec: FrameSpec
) -> tuple[list[list[int]], tuple[str, ...]]:
    """The frame indices of every view of one clip, and the clamps applied to its segment.

    A segment ending at most one frame past the video's end (Charades-Ego lengths have two decimals) ends on
    the last frame; further past it is an error.
    """
    fps, count = index.fps, index.num_frames
    first, last = seconds_to_frames(clip.start, clip.end, fps)
    clamped = clip.clamped
    if last >= count and first < count and clip.end * fps <= count + 1 + 1e-6:
        last, clamped = count - 1, (*clamped, CLAMP_END_PAST_VIDEO)
    if last >= count:
        raise VideoDecodeError(
            path,
            f"segment {clip.start:.2f}-{clip.end:.2f} s (frames {first}-{last}) "
            f"is past the end of the video ({count} frames)",
        )
    if spec.views == 0:
        return [segment_indices(first, last, spec.num_frames)], clamped
    rng = np.random.default_rng([spec.seed, zlib.crc32(clip.clip_id.encode())])
    views = [segment_indices(first, last, spec.num_frames, jitter=True, rng=rng) for _ in range(spec.views)]
    return views, clamped


def resize_crop(frame: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """The per-clip reference of the stored pixels: resize (Pillow, antialiased bilinear) to cover the
    ``height`` x ``width`` box (a square by default), then take the centred box."""
    width = width or height
    new_h, new_w = scaled_size(*frame.shape[:2], height, width)
    image = Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def _ok_row(clip: Segment, views: list[list[int]], clamped: tuple[str, ...], spec: FrameSpec, shard: str) -> dict:
    return {
        **_base_row(clip, clamped),
        "frame_indices": views,
        "height": spec.height,
        "width": spec.width,
        "status": "ok",
        "error": "",
        "shard": shard,
    }


def _error_row(clip: Segment, reason: str, clamped: tuple[str, ...] | None = None) -> dict:
    return {
        **_base_row(clip, clip.clamped if clamped is None else clamped),
        "frame_indices": [],
        "height": 0,
        "width": 0,
        "status": "error",
        "error": reason,
        "shard": "",
    }


def _base_row(clip: Segment, clamped: tuple[str, ...]) -> dict:
    return {
        "clip_id": clip.clip_id,
        "source": clip.video,
        "line": clip.line,
        "start": clip.start,
        "end": clip.end,
        "text": clip.text,
        "clamped": list(clamped),
    }
