"""eva02at: EVA02-AT-style egocentric video-language models, from raw videos to retrieval metrics."""

__version__ = "0.1.0"
