"""What every stage shares: its section of ``params.yaml``, checked, and a clean exit on expected failures."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from eva02at.core.config import ConfigError, read_section
from eva02at.core.errors import PipelineError, Stopped
from eva02at.core.workers import signal_on_parent_exit

T = TypeVar("T")

PARAMS_FILE = Path("params.yaml")
EXIT_PARAMS = 2  # the exit status of params that do not fit: a rerun cannot succeed, so flows do not retry it


def stage_params(
    section: str,
    cls: type[T],
    description: str | None,
    positional: tuple[str, ...] = (),
    section_argument: bool = False,
) -> tuple[T, argparse.Namespace]:
    """Parse the stage's command line (``--params`` and ``positional`` arguments) and build ``cls`` from the
    params file's ``section``, validated against it before any work (a ConfigError naming the key path).

    With ``section_argument`` the command line may name another section of the same schema (``args.section``),
    so that one stage's code runs several DVC stages (e.g. ``finetune`` and ``finetune_charades``)."""
    parser = argparse.ArgumentParser(description=description)
    for name in positional:
        parser.add_argument(name)
    if section_argument:
        parser.add_argument("section", nargs="?", default=section, help=f"params section (default '{section}')")
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file with the stage's section")
    args = parser.parse_args()
    section = args.section if section_argument else section
    return read_section(cls, args.params, section), args


def stage_main(func: Callable[[], None]) -> Callable[[], None]:
    """Run a stage entry point with logging set up.

    An expected failure (a ``PipelineError``) exits with status 1 and its one-line message (status
    ``EXIT_PARAMS`` for params that do not fit), as does a missing input file (one line naming it).
    SIGTERM (also sent when the process that started the stage exits) and SIGINT stop it after clean-up,
    with one line and status 128 + the signal. Anything else (CUDA out of memory, an NCCL or shape error,
    a bug) propagates with its full traceback.
    """

    @functools.wraps(func)
    def wrapper() -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        previous = signal.signal(signal.SIGTERM, _stop)
        # SIGINT stops a stage even where it was started with SIGINT ignored (a background job of a script)
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        signal_on_parent_exit(signal.SIGTERM)  # the stage ends with the `dvc repro` (or launcher) that started it
        try:
            func()
        except PipelineError as err:
            logging.getLogger(func.__module__).error("%s", err)
            sys.exit(EXIT_PARAMS if isinstance(err, ConfigError) else 1)
        except FileNotFoundError as err:  # an input named in params is not there (a stage run outside DVC)
            if err.filename is None:
                raise
            logging.getLogger(func.__module__).error(
                "%s: no such file; check its path in the params file, or run the stage through `dvc repro`, which "
                "first runs the stage that makes it",
                err.filename,
            )
            sys.exit(1)
        except (Stopped, KeyboardInterrupt) as err:
            signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
            logging.getLogger(func.__module__).error(
                "%s stopped by %s: unfinished outputs were dropped, finished ones and the last checkpoint are "
                "kept; rerun to continue",
                Path(sys.argv[0]).stem,
                signal.Signals(signum).name,
            )
            sys.exit(128 + signum)
        finally:  # as it was, for a caller that runs the stage in its own process (tests, a notebook)
            signal_on_parent_exit(0)
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)

    return wrapper


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)
