"""Stage ``sample``: the seeded synthetic egocentric sample (EPIC-KITCHENS-100, Ego4D, Charades-Ego).

Usage: ``python -m stages.sample [--params params.yaml]``. Reads the ``sample`` section, writes
``sample.out`` (data/synthetic) atomically.
"""

from __future__ import annotations

import logging
import time

from eva02at.synthetic import SampleConfig, generate_sample
from stages.common import stage_main, stage_params

log = logging.getLogger(__name__)


@stage_main
def main() -> None:
    cfg, _ = stage_params("sample", SampleConfig, __doc__)
    started = time.perf_counter()
    counts = generate_sample(cfg)
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    log.info("wrote %s in %.1f s: %s", cfg.out, time.perf_counter() - started, summary)


if __name__ == "__main__":
    main()
