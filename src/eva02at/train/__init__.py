"""Training (the layer above `data` and `models`): losses, batch sampling, multi-process gathering, the loop."""
