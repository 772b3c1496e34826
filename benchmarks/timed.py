"""Run commands one after another in a fresh process; print wall time and peak RSS as JSON.

Usage: ``python -m benchmarks.timed '<json list of argv lists>' [CPU,...]``; with CPUs, the
commands (and their children) run on those CPUs only. The peak RSS is
``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the largest resident set of any process this wrapper
waited for (each step's own process tree included), which is why every measured run gets a
wrapper of its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def main() -> int:
    steps: list[list[str]] = json.loads(sys.argv[1])
    if len(sys.argv) > 2:
        os.sched_setaffinity(0, {int(cpu) for cpu in sys.argv[2].split(",")})
    started = time.perf_counter()
    code = 0
    tail = ""
    for argv in steps:
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            code = done.returncode
            tail = done.stderr.decode(errors="replace")[-2000:]
            break
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "wall": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_user": usage.ru_utime,
        "cpu_sys": usage.ru_stime,
        "returncode": code,
        "stderr": tail,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
