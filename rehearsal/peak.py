"""``python rehearsal/peak.py OUT COMMAND...``: run COMMAND and write its exit status and the peak resident set of
its process tree to OUT (JSON); the rehearsal measures each stage through it.

Why a process of its own: Linux carries a process's peak resident set over fork and exec, so a stage started
straight from the rehearsal would begin with the rehearsal's own peak. This small process (a bare interpreter)
is the stage's parent instead, and ``RUSAGE_CHILDREN`` gives the largest peak among the descendants it waited
for (KiB on Linux).
"""

import json
import resource
import subprocess
import sys


def main() -> None:
    out, command = sys.argv[1], sys.argv[2:]
    returncode = subprocess.call(command)  # negative: the signal that ended it
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    with open(out, "w") as file:
        json.dump({"returncode": returncode, "peak_rss_bytes": peak}, file)


if __name__ == "__main__":
    main()
