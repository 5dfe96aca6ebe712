"""Which machine and versions produced a result: recorded in every results file."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata
from typing import Any

import jax


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest x86 vector extension the CPU reports (``"avx512"``, ``"avx2"``), else ``""``:
    machines with the same model name can differ in it, and XLA:CPU's speed with them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return ""
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_steal_s() -> float | None:
    """CPU seconds the hypervisor has taken from this virtual machine since boot (the ``steal``
    field of ``/proc/stat``, all cores together), or None where that is not reported.

    On a shared VM, time a job spends waiting for a stolen core counts in its wall time: the
    difference of two readings says how much of a run's wall time was not the run's.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / ticks


def device_name() -> str:
    """The default device in words, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"cpu (2 cores)"``."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        isa = cpu_isa()
        return f"cpu ({os.cpu_count()} cores, {_cpu_model()}{', ' + isa if isa else ''})"
    return getattr(dev, "device_kind", dev.platform)


def environment() -> dict[str, Any]:
    """Machine, device and package versions, for the header of every results file."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device": device_name(),
        "device_count": jax.device_count(),
        "cpu": _cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "numpy": _version("numpy"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
