"""Peak-memory measurements: the device's allocator peak, process RSS, XLA's static analysis."""

from __future__ import annotations

import resource
import sys
from typing import Any

import jax


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (CPU runs: includes the data set)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def device_peak_bytes() -> int | None:
    """The default device allocator's peak bytes in use (GPU/TPU); None where not reported."""
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def compiled_memory(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis of a compiled function: arguments, outputs, temporaries, code.

    ``peak_estimate`` = arguments + outputs − aliased (donated) + temporaries: the buffers live
    during one call by XLA's own accounting (on CPU, scratch inside YNN/oneDNN fusions is not
    counted).
    """
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    out = {name: int(getattr(ma, f"{name}_size_in_bytes", 0)) for name in
           ("argument", "output", "alias", "temp", "generated_code")}
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out
