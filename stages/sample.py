"""Stage ``sample``: the seeded synthetic egocentric sample (EPIC-KITCHENS-100, Ego4D, Charades-Ego).

Usage: ``python -m stages.sample [--params params.yaml]``. Reads the ``sample`` section, writes
``sample.out`` (data/synthetic) atomically. One MLflow run "sample" holds the params, the counts of what
the sample holds and the seconds it took (timings stay out of the sample itself), with lineage tags.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from eva02at.data.synthetic import SampleParams, generate_sample
from stages.common import stage_main, stage_params
from stages.lineage import stage_run

log = logging.getLogger(__name__)


@stage_main
def main() -> None:
    cfg, args = stage_params("sample", SampleParams, __doc__)
    with stage_run("sample", args.params) as tracker:
        tracker.log_params(asdict(cfg))
        started = time.perf_counter()
        counts = generate_sample(cfg)
        seconds = time.perf_counter() - started
        tracker.log_metrics({**counts, "seconds": seconds})
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    log.info("wrote %s in %.1f s: %s", cfg.out, seconds, summary)


if __name__ == "__main__":
    main()
