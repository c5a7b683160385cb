"""The whole synthetic sample: every collection planned from real captions, then drawn and encoded.

Planning (tables) and drawing (videos) share one plan per video, and every random choice comes
from a stream keyed by the seed and a name, so the sample is byte-identical for a seed however
many processes render it; pixels come from machine-independent arithmetic (``exact``) and a
bit-exact colour conversion (``encode``), so the CPU does not change them either. The sample
appears at ``cfg.out`` only once it is complete.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eva02at.core.atomic import atomic_path
from eva02at.core.errors import BadInput
from eva02at.data.synthetic import charades, ego4d, ek100
from eva02at.data.synthetic.captions import Caption, ClassSubset, class_subset, test_captions, train_captions
from eva02at.data.synthetic.config import SampleParams
from eva02at.data.synthetic.encode import write_video
from eva02at.data.synthetic.layout import VideoJob, keyed_rng
from eva02at.data.synthetic.scene import Renderer
from eva02at.data.synthetic.tables import write_table


def generate_sample(cfg: SampleParams, progress: bool = True) -> dict[str, int]:
    """Write the sample to ``cfg.out`` (replacing it) and return what it holds, in counts."""
    source = Path(cfg.source)
    subset = class_subset(source, cfg.verb_classes, cfg.noun_classes)
    renderer = Renderer(subset.verbs, list(subset.nouns), (cfg.width, cfg.height), cfg.fps, cfg.seed)
    train_pool, test_pool = train_captions(source, subset), test_captions(source, subset)
    if not train_pool or not test_pool:
        raise BadInput(f"{source}: no train or no test row falls inside the class subset")
    with atomic_path(cfg.out, directory=True) as root:
        jobs, counts = _write_tables(root, cfg, subset, train_pool, test_pool)
        _render(root, jobs, renderer, cfg.workers, progress)
    counts["videos"] = len(jobs)
    counts["frames"] = sum(job.frames for job in jobs)
    return counts


def _write_tables(
    root: Path, cfg: SampleParams, subset: ClassSubset, train_pool: list[Caption], test_pool: list[Caption]
) -> tuple[list[VideoJob], dict[str, int]]:
    """Plan every video and write every annotation file; returns the videos to render and counts."""
    ek_jobs, ek_counts = _ek100(root, cfg, train_pool, test_pool)
    ego_jobs, ego_counts = _ego4d(root, cfg, train_pool)
    classes = charades.action_classes(test_pool, subset, cfg.charades_classes)
    used: set[str] = set()
    charades_jobs, charades_rows = charades.plan_charades(
        keyed_rng(cfg.seed, "charades"), classes, cfg, cfg.charades_videos, used
    )
    train_jobs, train_rows = charades.plan_charades(
        keyed_rng(cfg.seed, "charades_train"), classes, cfg, cfg.charades_train_videos, used
    )
    folder = root / charades.ROOT / "annotations"
    folder.mkdir(parents=True)
    write_table(folder / "CharadesEgo_v1_test_only1st.csv", charades.COLUMNS, charades_rows)
    write_table(folder / "CharadesEgo_v1_train_only1st.csv", charades.COLUMNS, train_rows)
    (folder / "Charades_v1_classes.txt").write_text(charades.class_lines(classes))
    counts = {
        **ek_counts,
        **ego_counts,
        "charades_videos": len(charades_rows),
        "charades_train_videos": len(train_rows),
    }
    return ek_jobs + ego_jobs + charades_jobs + train_jobs, counts


def _ek100(
    root: Path, cfg: SampleParams, train_pool: list[Caption], test_pool: list[Caption]
) -> tuple[list[VideoJob], dict[str, int]]:
    """Both EPIC-KITCHENS-100 splits, with disjoint participants (train P01.., test after them)."""
    first_test = cfg.ek100_train_participants + 1
    people = {
        "train": [f"P{i:02d}" for i in range(1, first_test)],
        "test": [f"P{i:02d}" for i in range(first_test, first_test + cfg.ek100_test_participants)],
    }
    pools = {"train": (train_pool, cfg.ek100_train_segments), "test": (test_pool, cfg.ek100_test_segments)}
    jobs, rows = [], {}
    for split, (pool, count) in pools.items():
        rng = keyed_rng(cfg.seed, "ek100", split)
        split_jobs, rows[split] = ek100.plan_split(rng, _draw(rng, pool, count), people[split], cfg)
        jobs += split_jobs
    folder = root / ek100.ROOT / "annotations"
    ek100.write_tables(folder, Path(cfg.source), rows["train"], rows["test"], jobs, cfg)
    return jobs, {"ek100_train_segments": len(rows["train"]), "ek100_test_segments": len(rows["test"])}


def _ego4d(root: Path, cfg: SampleParams, pool: list[Caption]) -> tuple[list[VideoJob], dict[str, int]]:
    """EgoClip (pretraining) with its EgoClip+ caption pickles, and EgoMCQ (held-out videos) from train captions."""
    folder = root / ego4d.ROOT / "annotations"
    folder.mkdir(parents=True)
    clip_jobs, clip_rows = ego4d.plan_egoclip(keyed_rng(cfg.seed, "egoclip"), pool, cfg)
    write_table(folder / "egoclip.csv", ego4d.EGOCLIP_COLUMNS, clip_rows, delimiter="\t")
    caption_sets = ego4d.plan_egoclip_plus(keyed_rng(cfg.seed, "egoclip_plus"), clip_rows, pool)
    for name, (filename, _) in ego4d.EGOCLIP_PLUS.items():
        (folder / filename).write_bytes(pickle.dumps(caption_sets[name], protocol=4))
    mcq_jobs, questions = ego4d.plan_egomcq(keyed_rng(cfg.seed, "egomcq"), pool, cfg)
    (folder / "egomcq.json").write_text(json.dumps(questions))
    return clip_jobs + mcq_jobs, {"egoclip_clips": len(clip_rows), "egomcq_questions": len(questions)}


def _draw(rng: np.random.Generator, pool: list[Caption], count: int) -> list[Caption]:
    """``count`` captions of ``pool`` (repeating only when the pool is smaller), kept in file order
    so that neighbouring segments of a video come from neighbouring real narrations."""
    picks = np.sort(rng.choice(len(pool), size=count, replace=count > len(pool)))
    return [pool[i] for i in picks]


def _render(root: Path, jobs: list[VideoJob], renderer: Renderer, workers: int, progress: bool) -> None:
    """Draw and encode every video, in ``workers`` processes (each video's bytes depend on it alone)."""
    for job in jobs:
        (root / job.path).parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(jobs), desc="sample videos", unit="video", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                _encode(renderer, root, job)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")  # no inherited threads or encoder state
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for _ in pool.map(_encode, [renderer] * len(jobs), [root] * len(jobs), jobs, chunksize=4):
                bar.update()


def _encode(renderer: Renderer, root: Path, job: VideoJob) -> None:
    written = write_video(root / job.path, renderer.frames(job), renderer.fps)
    if written != job.frames:
        raise RuntimeError(f"{job.path}: wrote {written} frames, planned {job.frames}")
