"""The CPU cores this process may use. Apart from segnet.devices so that stages without torch (generate,
prepare) can ask without importing it: torch's import alone takes about 1.5 s of every stage's start."""

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset restrict)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
