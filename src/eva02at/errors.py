"""The failures a pipeline run expects, as one family: reported as one clear line, never as a traceback.

A stage or command that meets one of these exits non-zero with its message alone (it names the file, key,
row or step). Anything else (a CUDA out-of-memory, an NCCL or shape error, a bug) is not a ``PipelineError``
and keeps its full traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure: bad params, a missing or unreadable input, too many failed clips, a NaN loss."""


class MissingInput(PipelineError, FileNotFoundError):
    """An input file or folder a step needs is not there; the message names it and what produces it."""


class BadInput(PipelineError, ValueError):
    """An input file is there but malformed or not what the step expects; the message names the file and row."""
