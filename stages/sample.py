"""Stage ``sample``: the seeded synthetic egocentric sample (EPIC-KITCHENS-100, Ego4D, Charades-Ego).

Usage: ``python -m stages.sample [--params params.yaml]``. Reads the ``sample`` section, writes
``sample.out`` (data/synthetic) atomically.
"""

from __future__ import annotations

import argparse
import logging
import time

from eva02at.config import from_dict
from eva02at.synthetic import SampleConfig, generate_sample
from stages.common import PARAMS_FILE, load_params, stage_main

log = logging.getLogger(__name__)


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file with a 'sample' section")
    args = parser.parse_args()
    cfg = from_dict(SampleConfig, load_params("sample", args.params), "sample")
    started = time.perf_counter()
    counts = generate_sample(cfg)
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    log.info("wrote %s in %.1f s: %s", cfg.out, time.perf_counter() - started, summary)


if __name__ == "__main__":
    main()
