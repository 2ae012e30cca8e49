"""Independent numpy + ml_dtypes computation of every Gradient Health metric.

Shares no code with `tb_gradstats.stats`/`combine`: casts with ml_dtypes and
counts what changed, rather than comparing against thresholds.
"""

from __future__ import annotations

import glob
import os

import ml_dtypes
import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

DTYPES = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}


def expected_metrics(values: np.ndarray, what_if=tuple(DTYPES)) -> dict[str, float]:
    """Returns every metric of the float32 array `values` (any shape)."""
    x = np.asarray(values, np.float32).ravel()
    n = x.size
    finite = np.isfinite(x)
    xf = x[finite].astype(np.float64)
    nonzero = x[finite & (x != 0)]
    out = {
        "count": n,
        "zero_count": int(np.sum(x == 0)),
        "zero_fraction": np.sum(x == 0) / n,
        "nan_count": int(np.sum(np.isnan(x))),
        "inf_count": int(np.sum(np.isinf(x))),
        "mean": xf.mean(),
        "variance": xf.var(ddof=1),
        "std": xf.std(ddof=1),
        "min": xf.min(),
        "max": xf.max(),
        "abs_max": np.abs(xf).max(),
        "abs_min_nonzero": float(np.abs(nonzero).min()) if nonzero.size else np.nan,
        "l2_norm": np.sqrt(np.sum(xf * xf)),
    }
    with np.errstate(over="ignore", invalid="ignore"):
        for name in what_if:
            d = DTYPES[name]
            fin = ml_dtypes.finfo(d)
            y = x[finite].astype(d).astype(np.float64)
            src = x[finite]
            out[f"underflow_fraction/{name}"] = np.sum((src != 0) & (y == 0)) / n
            out[f"subnormal_fraction/{name}"] = (
                np.sum((y != 0) & (np.abs(y) < float(fin.smallest_normal))) / n
            )
            out[f"overflow_fraction/{name}"] = np.sum(~np.isfinite(y)) / n
    return out


def special_values() -> np.ndarray:
    """±0, float32 subnormals, NaN, ±Inf, and every what-if threshold ±1 ulp."""
    f32 = np.float32
    vals = [0.0, -0.0, np.nan, np.inf, -np.inf, 2.0**-149, -(2.0**-140), 2.0**-127, 1.5, -3.25]
    edges = [2.0**-25, 2.0**-14 - 2.0**-25, 2.0**-14, 65504.0, 65520.0,
             2.0**-134, 2.0**-126 - 2.0**-134, 2.0**-126, (2 - 2.0**-8) * 2.0**127,
             2.0**-10, 2.0**-6 - 2.0**-10, 2.0**-6, 448.0, 464.0,
             2.0**-17, 2.0**-14 - 2.0**-17, 57344.0, 61440.0]
    for e in edges:
        v = f32(e)
        for w in (np.nextafter(v, f32(0)), v, np.nextafter(v, f32(np.inf))):
            vals += [float(w), -float(w)]
    rng = np.random.default_rng(0)
    vals += list(rng.normal(0, 1e-3, 64))
    return np.array(vals, np.float32)


def read_events(logdir: str) -> dict[str, list[tuple[int, np.ndarray, dict]]]:
    """Returns tag → [(step, array, content json)] from every event file under `logdir`."""
    import json

    out: dict[str, list] = {}
    contents: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        for event in event_file_loader.EventFileLoader(path).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.content:
                    contents[v.tag] = json.loads(v.metadata.plugin_data.content)
                arr = tensor_util.make_ndarray(v.tensor)
                out.setdefault(v.tag, []).append((event.step, arr, contents.get(v.tag, {})))
    return out
