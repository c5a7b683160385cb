"""Model inference for exports: unit-norm video embeddings of a decoded collection's clips and text embeddings
of its query texts, batched, written in the export format of ``eva02at.embeddings``."""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eva02at.embeddings import TEXT, VIDEO, ExportInfo, file_sha256, write_embeddings
from eva02at.models import VideoCLIP
from eva02at.shards import FrameShards, decode_jpegs, read_frame_spec
from eva02at.train.data import normalize


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


class _ClipFrames(Dataset):
    """uint8 frames ``(T, 3, H, W)`` of the evaluation view of each clip; decoded in loader workers."""

    def __init__(self, shards: FrameShards, clip_ids: list[str]):
        self.shards, self.clip_ids = shards, clip_ids

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        frames = decode_jpegs(self.shards.jpegs(self.clip_ids[index]))  # (T, H, W, 3)
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)


def model_for_frames(model: VideoCLIP, frames: str | os.PathLike) -> VideoCLIP:
    """``model``, or a copy with its temporal embedding interpolated to the collection's frame count.

    A copy, because interpolating down and back up does not restore the original embedding. The frame
    size must already be the model's: resizing decoded JPEGs would evaluate on pixels training never saw.
    """
    spec = read_frame_spec(frames)
    if spec.size != model.image_size:
        raise ValueError(
            f"{frames} holds {spec.size} px frames but the model takes {model.image_size} px: "
            "decode the collection at the model's image size (frames.size)"
        )
    if spec.num_frames == model.num_frames:
        return model
    adapted = copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})  # share the large BPE tables
    adapted.set_num_frames(spec.num_frames)
    return adapted


@torch.inference_mode()
def encode_clips(
    model: VideoCLIP,
    shards: FrameShards,
    clip_ids: list[str],
    batch_size: int = 32,
    device: torch.device | None = None,
    workers: int = 0,
) -> np.ndarray:
    """Unit-norm video embeddings ``[len(clip_ids), D]`` float32, batched; bf16 autocast on a GPU."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    loader = DataLoader(
        _ClipFrames(shards, clip_ids),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    parts = []
    for frames in tqdm(loader, desc=f"videos {shards.directory.name}", unit="batch", leave=False):
        frames = normalize(frames.to(device, non_blocking=True), model.image_mean, model.image_std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(_unit(model.encode_video(frames)))
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, model.config.embed_dim), np.float32)


@torch.inference_mode()
def encode_texts(
    model: VideoCLIP, texts: Sequence[str], batch_size: int = 256, device: torch.device | None = None
) -> np.ndarray:
    """Unit-norm text embeddings ``[len(texts), D]`` float32, batched; bf16 autocast on a GPU."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    parts = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="texts", unit="batch", leave=False, disable=len(starts) < 2):
        tokens = model.tokenize(list(texts[start : start + batch_size])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(_unit(model.encode_text(tokens)))
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, model.config.embed_dim), np.float32)


def _unit(embeddings: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


def export_videos(
    model: VideoCLIP,
    checkpoint: str | os.PathLike,
    frames: str | os.PathLike,
    out: str | os.PathLike,
    collection: str,
    *,
    batch_size: int = 32,
    device: torch.device | None = None,
    workers: int = 0,
    checkpoint_sha256: str | None = None,
) -> int:
    """Embed every clip of a collection that decoded (manifest status ``ok``) and write them; returns the count.

    ``checkpoint`` (and its hash, computed when not given) is recorded as the vectors' origin.
    """
    shards = FrameShards(frames)
    model = model_for_frames(model, frames)
    clip_ids = shards.clip_ids
    manifest = {row["clip_id"]: row for row in shards.manifest.to_pylist()}
    vectors = encode_clips(model, shards, clip_ids, batch_size, device, workers)
    columns = {name: [manifest[clip][name] for clip in clip_ids] for name in ("clip_id", "source", "start", "end")}
    columns["text"] = [manifest[clip]["text"] or "" for clip in clip_ids]
    info = ExportInfo(
        VIDEO,
        collection,
        os.fspath(checkpoint),
        checkpoint_sha256 or file_sha256(checkpoint),
        model.config.model_name,
        model.num_frames,
        os.fspath(frames),
    )
    write_embeddings(out, columns, vectors, info)
    return len(clip_ids)


def export_texts(
    model: VideoCLIP,
    checkpoint: str | os.PathLike,
    ids: Sequence[str],
    texts: Sequence[str],
    out: str | os.PathLike,
    collection: str,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    checkpoint_sha256: str | None = None,
) -> int:
    """Embed the query texts of a collection (sentence ids must be unique) and write them; returns the count."""
    duplicated = sorted(item for item, count in Counter(ids).items() if count > 1)
    if duplicated or len(ids) != len(texts):
        raise ValueError(f"{collection}: sentence ids must be unique and one per text; repeated: {duplicated[:5]}")
    vectors = encode_texts(model, texts, batch_size, device)
    info = ExportInfo(
        TEXT,
        collection,
        os.fspath(checkpoint),
        checkpoint_sha256 or file_sha256(checkpoint),
        model.config.model_name,
        0,
        "",
    )
    write_embeddings(out, {"sentence_id": list(ids), "text": list(texts)}, vectors, info)
    return len(ids)
