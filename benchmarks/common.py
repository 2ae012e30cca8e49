"""Helpers shared by the benchmarks: machine facts, statistics, tables."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Sequence

BENCH_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench-out")


def cpu_model() -> str:
    """Returns the CPU model name from `/proc/cpuinfo` (or `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(with_tf: bool = True) -> dict[str, str]:
    """Returns the facts printed above every table.

    Args:
        with_tf: also report the TensorFlow and Keras versions (imports TF).

    Returns:
        Dict of name → text: cpu, cores, python, tensorflow, keras, tensorboard, date.
    """
    import tensorboard

    facts = {
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count()),
        "python": platform.python_version(),
        "tensorboard": tensorboard.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if with_tf:
        import keras
        import tensorflow as tf

        facts["tensorflow"] = tf.__version__
        facts["keras"] = keras.__version__
    return facts


def median(values: Sequence[float]) -> float:
    """Returns the median, or NaN for an empty sequence."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Returns the `q`-th percentile (0..100) with linear interpolation."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Returns a GitHub markdown table.

    Args:
        header: column titles.
        rows: cells, formatted with `str`.

    Returns:
        The table text, one line per row.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    """Returns `n` bytes as `B`, `KiB`, `MiB` or `GiB` text."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.2f} GiB"


def ensure_out(*parts: str) -> str:
    """Returns `bench-out/<parts>` after creating it."""
    path = os.path.join(BENCH_OUT, *parts)
    os.makedirs(path, exist_ok=True)
    return path
