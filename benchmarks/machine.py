"""What the benchmark tables say about the machine they were measured on: processor and peak memory."""

from __future__ import annotations

import platform
import resource


def cpu_name() -> str:
    """The processor's model name (Linux), else the architecture."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM (Linux; unlike ru_maxrss it is not inherited from
    the parent across fork + exec), else ru_maxrss."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
