"""Shared utilities every layer may use (the bottom layer).

Errors, typed params, atomic writes, digests, process helpers, distributed set-up and MLflow tracking.
Imports nothing else of eva02at."""
