"""The failures a pipeline run expects, as one family: reported as one clear line, never as a traceback.

A stage or command that meets one of these exits non-zero with its message alone (it names the file, key,
row or step). Anything else (a CUDA out-of-memory, an NCCL or shape error, a bug) is not a ``PipelineError``
and keeps its full traceback.
"""

from __future__ import annotations

import signal


class PipelineError(Exception):
    """An expected failure: bad params, a missing or unreadable input, too many failed clips, a NaN loss."""


class MissingInput(PipelineError, FileNotFoundError):
    """An input file or folder a step needs is not there; the message names it and what produces it."""


class BadInput(PipelineError, ValueError):
    """An input file is there but malformed or not what the step expects; the message names the file and row."""


class Stopped(BaseException):
    """The process was told to stop (SIGTERM, or the exit of the process that started it), raised from the signal
    handler so that clean-up runs (atomic writes drop their temporary file, a tracking run ends KILLED); not an
    ``Exception``, so that no ``except Exception`` carries on."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")
