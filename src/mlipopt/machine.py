"""What a result was computed on: the CPU model and the thread settings that decide its bits.

Bit-for-bit re-runs hold only on the same CPU model with the same torch build and thread count
(another CPU picks other SIMD kernels and summation orders), so every run records these.
"""

from __future__ import annotations

import platform
from functools import cache


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; :func:`platform.processor` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
