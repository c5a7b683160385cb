"""Seeded synthetic egocentric videos whose pictures determine their real EPIC-KITCHENS captions.

Nouns are object appearances, verbs are motions that only change across frames reveals, and the
tables follow the real EPIC-KITCHENS-100, EgoClip, EgoMCQ and Charades-Ego formats, so the whole
pipeline runs end to end in minutes on a CPU.
"""

from eva02at.data.synthetic.config import SampleParams
from eva02at.data.synthetic.generate import generate_sample

__all__ = ["SampleParams", "generate_sample"]
