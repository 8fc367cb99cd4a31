"""What a run ran on: software versions and hardware, recorded in run.json and shown in reports."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import torch

from .. import __version__

PACKAGES = ("torchvision", "timm", "numpy", "pillow")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def software() -> dict[str, str]:
    """Python and the versions of the packages a result depends on."""
    return {
        "python": platform.python_version(),
        "pspnet": __version__,
        "torch": torch.__version__,
        **{package: _version(package) for package in PACKAGES},
        "torch built for CUDA": torch.version.cuda or "no",
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):  # not on every platform
        return None


def hardware(device: torch.device) -> dict[str, str]:
    """The operating system, CPU, memory and the device the run computes on."""
    memory = _memory_gib()
    info = {
        "system": platform.platform(terse=True),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads)",
        "memory": f"{memory} GiB" if memory else "unknown",
        "device": str(device),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["device"] = f"{device}: {properties.name}, {properties.total_memory / 2**30:.0f} GiB"
    return info


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process (`argv`, or the interpreter's), quoted as a shell would need it."""
    return shlex.join(argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])
