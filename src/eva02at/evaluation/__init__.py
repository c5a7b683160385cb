"""Evaluation: benchmarks, retrieval metrics and plots (the layer above ``export``)."""
