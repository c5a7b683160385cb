"""Training-step throughput of EVA02-AT on synthetic clips: clips/s, TFLOP/s, MFU and memory per clip.

The timed step is the one the training stages run, ``train.loop.train_step``, on a batch as the loader
workers hand it over (uint8 frames in the decoder's memory order, tokenized captions): frames are moved to
the device, cropped and normalised there (``train.data.clip_frames``), ``VideoCLIP`` encodes video and text,
the embeddings are gathered (the identity on one process), the loss from ``losses.get_loss`` is
back-propagated and the AdamW of ``train.optim.build_optimizer`` steps. Inputs are random: a step costs the
same whatever the pixels and words. Decoding and tokenizing happen in the loader workers, measured apart in
``bench/input_path.py``. With ``--augment`` the frames are stored 4:3 and cropped with RandomResizedCrop
boxes, as with ``train.augment``; without, each clip is its centred square. With ``--accum K`` a step takes K
micro-batches of ``--batch`` clips, with the loss of the whole accumulated batch (cached embeddings and a
second forward, ``train.accum_whole_batch``) or, with ``--micro-batch-loss``, one loss per micro-batch: side
by side they give the cost of the second forward.

FLOPs come from torch's FlopCounterMode on one eager two-clip step without gradient checkpointing, i.e. model
FLOPs (the forward that checkpointing or whole-batch accumulation recomputes is a cost, not useful work),
scaled to the clips of a step. MFU divides the achieved FLOP rate by the rate of a large matmul of the same
precision, timed in the same process on the same device.

    python -m bench.train_step --model EVA02-B-16 --frames 4 --batch 64 --precision bf16 --compile
    python -m bench.train_step --sweep --json sweep.json     # every row of the GPU table in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bench.common import machine_info, median, synchronize, time_calls, write_json
from eva02at.models import VideoCLIP, create_image_clip, from_open_clip
from eva02at.train import loop
from eva02at.train.augment import AugmentParams
from eva02at.train.data import clip_frames
from eva02at.train.losses import LOSSES, finetuning, get_loss, infonce  # noqa: F401  (registers their losses)
from eva02at.train.optim import OptimParams, build_optimizer
from eva02at.train.tasks import VideoTextTask

PRECISIONS = ("fp32", "tf32", "bf16")
COUNT_BATCH = 2  # clips of the FLOP-counting step: the smallest batch the losses accept
CONFIG_KEYS = (
    "model",
    "frames",
    "batch",
    "precision",
    "compile",
    "grad_checkpointing",
    "loss",
    "augment",
    "accum",
    "micro_batch_loss",
    "steps",
    "warmup",
)
STORED_ASPECT = 4 / 3  # frames of training collections keep room to crop (with --augment)
ROOT = Path(__file__).resolve().parents[1]

# The GPU table: the anchor's ladder (precision, compile) for B/16 at 4 frames, 16 frames at the fine-tuning
# loss, L/14 at 4 frames, each also with gradient checkpointing; batches sized to fit an 80 GB card.
SWEEP = (
    "--model EVA02-B-16 --frames 4 --batch 64 --precision tf32",
    "--model EVA02-B-16 --frames 4 --batch 64 --precision bf16",
    "--model EVA02-B-16 --frames 4 --batch 64 --precision bf16 --compile",
    "--model EVA02-B-16 --frames 4 --batch 64 --precision bf16 --compile --grad-checkpointing",
    "--model EVA02-B-16 --frames 16 --batch 16 --precision bf16 --loss sms",
    "--model EVA02-B-16 --frames 16 --batch 16 --precision bf16 --loss sms --compile",
    "--model EVA02-B-16 --frames 16 --batch 64 --precision bf16 --loss sms --compile --grad-checkpointing",
    "--model EVA02-L-14 --frames 4 --batch 32 --precision bf16",
    "--model EVA02-L-14 --frames 4 --batch 32 --precision bf16 --compile",
    "--model EVA02-L-14 --frames 4 --batch 32 --precision bf16 --compile --grad-checkpointing",
)

# torch counts the FLOPs of the GPU attention kernels only; the CPU's fused kernel is counted the same way,
# so that CPU and GPU runs report the same model FLOPs (backward includes the recomputed scores).
_aten = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    ),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v)
    ),
}


class SyntheticRelevance:
    """Soft labels of the synthetic clips: R[i, j] in {0, .25, ..., 1} with R[i, i] = 1, looked up by index."""

    def __init__(self, clips: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.randint(0, 5, (clips, clips), generator=generator) / 4  # (N, N)
        self.matrix = matrix.fill_diagonal_(1.0).numpy()

    def lookup(self, videos: np.ndarray, captions: np.ndarray) -> np.ndarray:
        return self.matrix[np.ix_(videos, captions)]  # (B, B): C[a, b] = R(video_a, caption_b)


def synthetic_batch(
    model: VideoCLIP, batch: int, device: torch.device, seed: int = 0, aspect: float = 1.0, first: int = 0
) -> dict:
    """A batch as the loader workers hand it over: random uint8 frames ``(B, T, 3, H, W)`` (H the model's
    size, W = H * ``aspect``) in the decoder's (B, T, H, W, 3) memory, pinned for a GPU; tokenized random
    captions; clips and captions ``first``..``first + B - 1``."""
    generator = torch.Generator().manual_seed(seed)
    size = model.image_size
    shape = (batch, model.num_frames, size, round(size * aspect), 3)
    frames = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    words = ["person", "picks", "cuts", "opens", "puts", "knife", "onion", "drawer", "plate", "water", "lid"]
    picks = torch.randint(0, len(words), (batch, 8), generator=generator).tolist()
    texts = [" ".join(words[i] for i in row) for row in picks]
    return {
        "frames": (frames.pin_memory() if device.type == "cuda" else frames).permute(0, 1, 4, 2, 3),
        "tokens": model.tokenize(texts),  # (B, context_length)
        "texts": texts,
        "videos": torch.arange(first, first + batch),
        "captions": torch.arange(first, first + batch),
        "epoch": 0,
    }


def make_step(
    model: VideoCLIP, loss_name: str, precision: str, clips: int, augment: bool = False, whole_batch: bool = True
) -> Callable[[Callable, list[dict]], torch.Tensor]:
    """The training loop's step on ``model`` (soft labels for ``clips`` clips, RandomResizedCrop boxes with
    ``augment``, ``whole_batch`` as ``train.accum_whole_batch``) over micro-batches, run through ``forward``
    (the model itself or its compiled wrapper); returns the first micro-batch's loss, on the device."""
    optimizer = build_optimizer(model, OptimParams())
    relevancy = SyntheticRelevance(clips) if loss_name != "infonce" else None
    task = VideoTextTask(model, get_loss(loss_name), relevancy)
    device = next(model.parameters()).device
    crops = AugmentParams() if augment else None
    setup = loop.StepSetup(
        device, precision="bf16" if precision == "bf16" else "fp32", augment=crops, whole_batch=whole_batch
    )

    def step(forward: Callable, batches: list[dict]) -> torch.Tensor:
        return loop.train_step(forward, task, batches, optimizer, setup)[0]

    return step


class SavedTensorBytes(saved_tensors_hooks):
    """Bytes of the distinct tensors autograd keeps for backward: the activation memory of a step.

    Parameters and autocast's low-precision copies of them are left out (a constant per step, not per clip).
    Device-independent: a CPU run gives the activation memory a GPU run of the same precision needs.
    """

    VIEWS = ("TBackward0", "ViewBackward0", "TransposeBackward0", "PermuteBackward0", "ExpandBackward0")

    def __init__(self, model: torch.nn.Module):
        self.params = {id(p) for p in model.parameters()}
        self.seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.bytes = 0
        super().__init__(self._pack, lambda tensor: tensor)

    def _is_parameter_copy(self, tensor: torch.Tensor) -> bool:
        node = tensor.grad_fn
        while node is not None and node.name() in self.VIEWS:
            node = node.next_functions[0][0]
        if node is None or node.name() != "ToCopyBackward0":
            return False
        source = node.next_functions[0][0]
        return id(getattr(source, "variable", None)) in self.params

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            if not self._is_parameter_copy(tensor):
                self.bytes += storage.nbytes()
        return tensor


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of ``fn()`` (forward and backward inside it) in total and by aten op."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def matmul_peak(device: torch.device, precision: str, size: int, repeats: int = 5) -> float:
    """FLOP/s of a ``size``-square matmul in the step's precision: the MFU denominator for this device."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1  # amortise the per-call synchronisation on fast devices

    def matmuls() -> None:
        for _ in range(inner):
            torch.mm(a, b, out=out)

    return inner * 2 * size**3 / median(time_calls(matmuls, repeats, device, warmup=2))


def current_rss() -> int:
    """Resident bytes of this process now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Restart the resident-memory high-water mark (Linux clear_refs), as CUDA's peak stats are reset.

    False where the kernel refuses: the high-water mark then covers the whole process.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """Resident-memory high-water mark of this process in bytes (VmHWM; getrusage where /proc lacks it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def set_precision(precision: str, device: torch.device) -> None:
    """TF32 matmuls only for ``tf32``: a true float32 baseline otherwise."""
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("precision tf32 needs a CUDA device; use fp32 on the CPU")
    mode = "tf32" if precision == "tf32" else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


def count_per_clip(model: VideoCLIP, step: Callable, precision: str) -> dict[str, Any]:
    """Model FLOPs and saved activations per clip, from one eager step of ``COUNT_BATCH`` clips.

    Counting on the smallest batch keeps the counting step inside the memory of any run that fits (even one
    whose batch needs gradient checkpointing); every cost but the B x B loss (under a millionth of the
    step) grows linearly with the batch. The video tower alone is counted too (the anchor's measure).
    """
    device = next(model.parameters()).device
    batch = synthetic_batch(model, COUNT_BATCH, device, seed=1)
    saved = SavedTensorBytes(model)
    with saved:
        flops, by_op = count_flops(lambda: step(model, [batch]))

    def video_only() -> None:
        frames = clip_frames(batch, device, model.image_size, model.image_mean, model.image_std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            features = model.video_features(frames)
        features.float().sum().backward()

    video_flops, _ = count_flops(video_only)
    model.zero_grad(set_to_none=True)
    return {
        "flops_per_clip": flops / COUNT_BATCH,
        "flops_by_op_per_clip": {op: n / COUNT_BATCH for op, n in by_op.items()},
        "video_tower_flops_per_clip": video_flops / COUNT_BATCH,
        "saved_activation_bytes_per_clip": saved.bytes / COUNT_BATCH,
    }


def time_steps(step: Callable[[], Any], args: argparse.Namespace, device: torch.device, clips: int) -> dict[str, Any]:
    """Warm up, then time ``args.steps`` steps of ``clips`` clips; memory of the steady state (static) and its
    peak."""
    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        static = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        kind = "cuda max_memory_allocated"
    else:
        static = current_rss()
        kind = "RSS high-water of the timed steps" if reset_peak_rss() else "RSS high-water of the process"
    times = time_calls(step, args.steps, device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    return {
        "step_seconds": times,
        "memory_kind": kind,
        "peak_memory_bytes": peak,
        "static_memory_bytes": static,
        "memory_per_clip_bytes": max(0, peak - static) / clips,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, count a step's FLOPs, time the steps: every number of one benchmark row."""
    device = torch.device(args.device)
    set_precision(args.precision, device)
    torch.manual_seed(0)
    model = from_open_clip(create_image_clip(args.model), args.frames, model_name=args.model).to(device)
    model.train()
    clips = args.batch * args.accum  # per optimizer step
    step = make_step(model, args.loss, args.precision, max(clips, COUNT_BATCH), args.augment, not args.micro_batch_loss)
    counts = count_per_clip(model, step, args.precision)
    model.set_grad_checkpointing(args.grad_checkpointing)
    forward = torch.compile(model) if args.compile else model
    aspect = STORED_ASPECT if args.augment else 1.0
    batches = [synthetic_batch(model, args.batch, device, j, aspect, j * args.batch) for j in range(args.accum)]
    losses: list[torch.Tensor] = []
    timing = time_steps(lambda: losses.append(step(forward, batches)), args, device, clips)
    step_s = median(timing["step_seconds"])
    flops = counts["flops_per_clip"] * clips
    peak_flops = matmul_peak(device, args.precision, args.peak_size or (8192 if device.type == "cuda" else 2048))
    if args.profile:
        print(profile_table(lambda: step(forward, batches), device))
    return {
        "machine": machine_info(device),
        "config": {k: getattr(args, k) for k in CONFIG_KEYS},
        **counts,
        **timing,
        "step_seconds_median": step_s,
        "clips_per_s": clips / step_s,
        "flops_per_step": flops,
        "tflops": flops / step_s / 1e12,
        "matmul_peak_tflops": peak_flops / 1e12,
        "mfu": flops / step_s / peak_flops,
        "final_loss": float(losses[-1]),
    }


def profile_table(step: Callable[[], Any], device: torch.device, steps: int = 3) -> str:
    """The ops that take the device's time over a few steps: where a step's time goes (attention, norms...)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=25)


def format_row(result: dict[str, Any]) -> str:
    """One markdown table row; see TABLE_HEADER."""
    if "error" in result:
        return f"| `{result['args']}` | failed: {result['error']} |"
    c = result["config"]
    flags = (["ckpt"] if c["grad_checkpointing"] else []) + (["augment"] if c.get("augment") else [])
    accum = c.get("accum", 1)
    if accum > 1:
        flags.append("accum per-micro-batch loss" if c["micro_batch_loss"] else "accum whole-batch loss")
    mode = " ".join([c["precision"], "compile" if c["compile"] else "eager", *flags])
    batch = f"{c['batch']} x {accum}" if accum > 1 else str(c["batch"])
    return (
        f"| {c['model']} | {c['frames']} | {batch} | {c['loss']} | {mode} | {result['clips_per_s']:.4g} | "
        f"{result['flops_per_clip'] / 1e9:.4g} | {result['tflops']:.4g} | {result['matmul_peak_tflops']:.4g} | "
        f"{100 * result['mfu']:.1f}% | {result['peak_memory_bytes'] / 2**30:.2f} | "
        f"{result['memory_per_clip_bytes'] / 2**20:.0f} | {result['saved_activation_bytes_per_clip'] / 2**20:.0f} |"
    )


TABLE_HEADER = (
    "| model | T | batch (x accum) | loss | mode | clips/s | GFLOP/clip | TFLOP/s | matmul peak TFLOP/s | MFU | "
    "peak GiB | MiB/clip (peak - static) | saved MiB/clip |\n|" + "---|" * 13
)


def run_sweep(entries: Sequence[str], common: Sequence[str]) -> list[dict[str, Any]]:
    """Each entry in a fresh process (own compile caches and peak memory); a failure (e.g. OOM) is a row."""
    results = []
    for entry in entries:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            argv = [*shlex.split(entry), *common, "--json", str(out)]
            proc = subprocess.run(
                [sys.executable, "-m", "bench.train_step", *argv], cwd=ROOT, capture_output=True, text=True
            )
            if proc.returncode == 0:
                results.append(json.loads(out.read_text()))
            else:
                lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
                results.append({"args": entry, "error": lines[-1][:200]})
        print(format_row(results[-1]), flush=True)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="EVA02-B-16", help="open_clip name (EVA02-B-16, EVA02-Tiny-test...)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16", help="tf32: fp32 with TF32 matmuls")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--loss", choices=sorted(LOSSES), default="infonce")
    parser.add_argument("--augment", action="store_true", help="crop 4:3 frames as train.augment does")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches of --batch clips per step")
    parser.add_argument("--micro-batch-loss", action="store_true", help="with --accum: one loss per micro-batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-size", type=int, default=0, help="matmul side for the peak (0: by device)")
    parser.add_argument("--profile", action="store_true", help="also print the ops that take the time")
    parser.add_argument("--sweep", action="store_true", help="run every SWEEP row (with --steps/--warmup)")
    parser.add_argument("--json", help="write the result (a list for --sweep) as JSON here; '-' for stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch < COUNT_BATCH or args.accum < 1 or args.steps < 1 or args.warmup < 0:
        parser.error(
            f"need --batch >= {COUNT_BATCH} (the losses compare clips), --accum >= 1, --steps >= 1, --warmup >= 0"
        )
    if args.sweep:
        print(TABLE_HEADER)
        results: Any = run_sweep(SWEEP, ["--steps", str(args.steps), "--warmup", str(args.warmup)])
    else:
        results = measure(args)
        print(TABLE_HEADER)
        print(format_row(results))
    if args.json:
        write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
