"""Training machinery on top of the library: batch sampling, multi-process gathering, the training loop."""
