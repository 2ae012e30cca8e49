"""Host-side combination of raw per-tensor records into metrics (numpy only).

`stats.tensor_record` yields, per tensor and replica, exact integer fields and
bucket counts plus float32 moments. This module merges them over replicas and
over the variables of a dtype group (counts add, extrema by bit key, moments
with Chan's parallel formula in float64), then derives every metric of
`metadata.metric_names` and the trimmed log2 histogram.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tb_gradstats import formats

_I_COUNT, _I_MIN, _I_MAX, _I_ABSMAX, _I_ABSMIN, _I_SCALED_ZERO = range(6)
_N_INT = 6
_F_MEAN, _F_M2, _F_UPD, _F_W = range(4)
INT32_MAX = 2**31 - 1
INF_BITS = 0x7F800000
SUBNORMAL_BIN = -127  # the histogram bin that holds every float32 subnormal


class BucketTable:
    """Maps the bucket counts of `stats.bucket_boundaries` to exact counts.

    Args:
        boundaries: the sorted bit boundaries used in-graph.
        what_if: canonical format names, in metric order.
    """

    def __init__(self, boundaries: np.ndarray, what_if: Sequence[str]):
        self.boundaries = np.asarray(boundaries, np.int64)
        self.what_if = tuple(what_if)
        self._pos = {int(b): i for i, b in enumerate(self.boundaries)}
        exps = [self._pos[e << 23] for e in range(1, 256)]
        # Histogram bin edges (as positions in the cumulative table): subnormals, then E = 1..254.
        self._edges = np.array([self._pos[1]] + exps, np.int64)

    def below(self, cum: np.ndarray, bits: int) -> np.ndarray:
        """Returns `count(ab < bits)` from cumulative bucket counts `cum`."""
        return cum[..., self._pos[bits]]

    def cumulative(self, buckets: np.ndarray) -> np.ndarray:
        """Returns cumulative bucket counts along the last axis."""
        return np.cumsum(buckets, axis=-1)

    def exponent_hist(self, cum: np.ndarray) -> np.ndarray:
        """Returns counts per log2 bin, bins -127 (subnormal) .. 127, shape `[..., 255]`."""
        return np.diff(cum[..., self._edges], axis=-1)


def merge_records(ints: np.ndarray, floats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merges records along axis 0 (replicas or variables).

    Args:
        ints: int64 `[N, ...fields]` raw integer fields + buckets.
        floats: float `[N, 4]`: mean, m2, update_sq, weight_sq.

    Returns:
        One merged `(ints, floats)` record. Means and M2 combine with Chan's
        formula weighted by the finite counts, which are recomputed from the buckets.
    """
    ints = np.asarray(ints, np.int64)
    floats = np.asarray(floats, np.float64)
    out = ints.sum(axis=0)
    out[_I_MIN] = ints[:, _I_MIN].min()
    out[_I_MAX] = ints[:, _I_MAX].max()
    out[_I_ABSMAX] = ints[:, _I_ABSMAX].max()
    out[_I_ABSMIN] = ints[:, _I_ABSMIN].min()
    n = finite_counts(ints)
    mean, m2 = chan(n, floats[:, _F_MEAN], floats[:, _F_M2])
    upd = floats[:, _F_UPD].sum()
    w = floats[:, _F_W].sum()
    return out, np.array([mean, m2, upd, w])


def finite_counts(ints: np.ndarray) -> np.ndarray:
    """Finite values per record: everything in buckets below the Inf boundary."""
    buckets = ints[..., _N_INT:]
    # The last two buckets hold Inf (ab == INF_BITS) and NaN (ab > INF_BITS).
    return buckets[..., :-2].sum(axis=-1)


def chan(n: np.ndarray, means: np.ndarray, m2s: np.ndarray) -> tuple[float, float]:
    """Combines (count, mean, M2) triples with Chan et al.'s parallel formula.

    Args:
        n: counts per part.
        means: mean per part.
        m2s: sum of squared deviations per part.

    Returns:
        `(mean, m2)` of the union (NaN mean for an empty union).
    """
    total, mean, m2 = 0.0, 0.0, 0.0
    for nb, mb, m2b in zip(np.asarray(n, np.float64), means, m2s):
        if nb == 0:
            continue
        delta = mb - mean
        new_total = total + nb
        mean += delta * nb / new_total
        m2 += m2b + delta * delta * total * nb / new_total
        total = new_total
    return (mean if total else np.nan), m2


def key_to_float(key: int) -> float:
    """Returns the float32 value (as float64) of a signed bit key from `stats`."""
    bits = np.array([abs(int(key))], np.uint32)
    value = float(bits.view(np.float32)[0])
    return -value if key < 0 else value


def bits_to_float(bits: int) -> float:
    """Returns the float32 value of magnitude bits, as float64."""
    return float(np.array([int(bits)], np.uint32).view(np.float32)[0])


def metrics_row(
    ints: np.ndarray, floats: np.ndarray, table: BucketTable, columns: Sequence[str]
) -> np.ndarray:
    """Derives every metric of one merged record.

    Args:
        ints: merged int64 record.
        floats: merged float record.
        table: the bucket table.
        columns: `metadata.metric_names(table.what_if)`.

    Returns:
        float64 array of `len(columns)` values (NaN where undefined).
    """
    count = float(ints[_I_COUNT])
    if count == 0:
        row = np.full(len(columns), np.nan)
        row[columns.index("count")] = 0.0
        return row
    cum = table.cumulative(ints[_N_INT:])
    zeros = float(table.below(cum, 1))
    below_inf = float(table.below(cum, INF_BITS))
    below_nan = float(table.below(cum, INF_BITS + 1))
    n_finite = below_inf
    mean, m2 = floats[_F_MEAN], floats[_F_M2]
    has_finite = n_finite > 0
    variance = m2 / (n_finite - 1) if n_finite > 1 else np.nan
    values = {
        "count": count,
        "zero_count": zeros,
        "zero_fraction": zeros / count,
        "nan_count": count - below_nan,
        "inf_count": below_nan - below_inf,
        "mean": mean if has_finite else np.nan,
        "variance": variance,
        "std": np.sqrt(variance) if n_finite > 1 else np.nan,
        "min": key_to_float(ints[_I_MIN]) if has_finite else np.nan,
        "max": key_to_float(ints[_I_MAX]) if has_finite else np.nan,
        "abs_max": bits_to_float(ints[_I_ABSMAX]) if has_finite else np.nan,
        "abs_min_nonzero": (
            bits_to_float(ints[_I_ABSMIN]) if ints[_I_ABSMIN] != INT32_MAX else np.nan
        ),
        # sum(g^2) = M2 + n mean^2: no separate reduction in the graph.
        "l2_norm": np.sqrt(max(m2 + n_finite * mean * mean, 0.0)) if has_finite else np.nan,
        "update_ratio": (
            np.sqrt(floats[_F_UPD] / floats[_F_W]) if floats[_F_W] > 0 else np.nan
        ),
        "scaled_zero_fraction": float(ints[_I_SCALED_ZERO]) / count,
    }
    for name in table.what_if:
        t = formats.bit_thresholds(name)
        values[f"underflow_fraction/{name}"] = (
            float(table.below(cum, t["underflow_max"] + 1)) - zeros
        ) / count
        values[f"subnormal_fraction/{name}"] = (
            float(table.below(cum, t["subnormal_below"])) - float(table.below(cum, t["underflow_max"] + 1))
        ) / count
        values[f"overflow_fraction/{name}"] = (
            below_inf - float(table.below(cum, t["overflow_at"]))
        ) / count
    return np.array([values[c] for c in columns], np.float64)


def histogram(ints: np.ndarray, table: BucketTable) -> np.ndarray:
    """Returns log2 bin counts -127..127 of a merged record (float64 `[255]`)."""
    return table.exponent_hist(table.cumulative(ints[_N_INT:])).astype(np.float64)


def trim_histograms(hists: np.ndarray) -> tuple[int, np.ndarray]:
    """Trims `[rows, 255]` bin counts to the bins any row uses.

    Returns:
        `(first_exponent, counts)`; an all-empty input keeps one bin at 0.
    """
    used = np.nonzero(hists.sum(axis=0))[0]
    if used.size == 0:
        return 0, np.zeros((hists.shape[0], 1))
    lo, hi = int(used[0]), int(used[-1])
    return lo + SUBNORMAL_BIN, hists[:, lo : hi + 1]


def group_metrics(
    ints: np.ndarray,
    floats: np.ndarray,
    members: Sequence[int],
    table: BucketTable,
    columns: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Builds the stats and full histograms of one group.

    Args:
        ints: int64 `[R, V, fields]` per replica and variable.
        floats: float `[R, V, 4]`.
        members: variable indices of the group, in row order.
        table: the bucket table.
        columns: metric names.

    Returns:
        `(stats [1+len(members), M], hists [1+len(members), 255])`; row 0 is the group.
    """
    per_var = []
    for v in members:
        i, f = merge_records(ints[:, v], floats[:, v])
        # Weights are mirrored: every replica holds the same update, so count it once.
        f[_F_UPD] = floats[0, v, _F_UPD]
        f[_F_W] = floats[0, v, _F_W]
        per_var.append((i, f))
    gi, gf = merge_records(
        np.stack([p[0] for p in per_var]), np.stack([p[1] for p in per_var])
    )
    records = [(gi, gf)] + per_var
    stats = np.stack([metrics_row(i, f, table, columns) for i, f in records])
    hists = np.stack([histogram(i, table) for i, _ in records])
    return stats, hists


def empty_int_record(n_buckets: int) -> np.ndarray:
    """Returns the int record of a variable without gradient (merges as a no-op)."""
    rec = np.zeros(_N_INT + n_buckets, np.int64)
    rec[[_I_MIN, _I_ABSMIN]] = INT32_MAX
    rec[_I_MAX] = -INT32_MAX
    rec[_I_ABSMAX] = -1
    return rec
