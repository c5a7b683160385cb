"""The ``sample`` section of params.yaml: what the synthetic sample holds and how it looks."""

from __future__ import annotations

from dataclasses import dataclass, field

from eva02at.core.config import NonNegativeFloat, NonNegativeInt, PositiveInt


@dataclass(frozen=True)
class SampleParams:
    """Sizes of every synthetic collection, the class subset, the picture format and the seed.

    Ranges are ``[low, high]`` pairs; seconds are drawn uniformly, counts as integers inclusive.
    """

    seed: NonNegativeInt = 0
    source: str = "data/sample/ek100"  # real EPIC-KITCHENS-100 annotations the captions come from
    out: str = "data/synthetic"
    verb_classes: PositiveInt = 8  # the most frequent verb classes of the real test split
    noun_classes: PositiveInt = 12  # the most frequent noun classes of the real test split
    width: PositiveInt = 128
    height: PositiveInt = 72
    fps: PositiveInt = 10
    segment_seconds: list[NonNegativeFloat] = field(default_factory=lambda: [1.5, 2.5])
    clip_seconds: list[NonNegativeFloat] = field(default_factory=lambda: [1.0, 2.0])  # EgoClip / EgoMCQ clips
    gap_seconds: list[NonNegativeFloat] = field(default_factory=lambda: [0.1, 0.6])
    segments_per_video: list[NonNegativeInt] = field(default_factory=lambda: [6, 12])
    ek100_train_participants: PositiveInt = 4
    ek100_test_participants: PositiveInt = 2
    ek100_train_segments: PositiveInt = 400
    ek100_test_segments: PositiveInt = 150
    egoclip_clips: PositiveInt = 800
    egomcq_videos: PositiveInt = 10
    egomcq_questions: PositiveInt = 50
    charades_videos: PositiveInt = 40  # test split
    charades_train_videos: PositiveInt = 24  # first-person training split (Charades-Ego fine-tuning)
    charades_classes: PositiveInt = 20
    charades_actions: list[NonNegativeInt] = field(default_factory=lambda: [2, 4])
    workers: PositiveInt = 2  # processes that render and encode videos

    def __post_init__(self) -> None:
        for name in (
            "segment_seconds",
            "clip_seconds",
            "gap_seconds",
            "segments_per_video",
            "charades_actions",
        ):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not 0 <= low_high[0] <= low_high[1]:
                raise ValueError(f"sample.{name}: expected [low, high] with 0 <= low <= high, got {low_high}")
        if self.width % 2 or self.height % 2 or self.width < self.height or self.height < 16:
            raise ValueError(f"sample: frames must be even-sized, landscape, >= 16 px: {self.width}x{self.height}")
        if self.segments_per_video[0] < 1 or self.segment_seconds[0] * self.fps < 2:
            raise ValueError("sample: every video needs >= 1 segment and every segment >= 2 frames")
        if self.egomcq_videos < 5 or self.segments_per_video[1] < 5:
            raise ValueError("sample: EgoMCQ needs >= 5 videos of up to >= 5 clips (5 choices per question)")
        if self.charades_actions[1] > self.charades_classes:
            raise ValueError("sample.charades_actions: more actions per video than Charades classes")
