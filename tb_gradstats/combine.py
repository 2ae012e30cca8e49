"""Host-side combination of raw records into metrics (numpy only, vectorised).

`stats.records` yields, per replica and variable, exact integer fields and
bucket counts plus float64 moments. This module merges them over replicas and
over the variables of a dtype group (counts add, extrema by bit key, moments
with Chan et al.'s parallel formula in float64), then derives every metric of
`metadata.metric_names` and the log2 histogram, for all rows at once: the host
cost of a logged step does not grow with a Python loop over variables.
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

    @staticmethod
    def cumulative(buckets: np.ndarray) -> np.ndarray:
        """Returns cumulative bucket counts along the last axis."""
        return np.cumsum(buckets, axis=-1)

    def exponent_hist(self, cum: np.ndarray) -> np.ndarray:
        """Returns counts per log2 bin, bins -127 (subnormal) .. 127, shape `[..., 255]`."""
        return np.diff(cum[..., self._edges], axis=-1)


def merge(ints: np.ndarray, floats: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges records along `axis` (replicas or variables).

    Args:
        ints: int64 records `[..., fields]`.
        floats: float records `[..., 4]`: mean, m2, update_sq, weight_sq.
        axis: the axis to merge away (not the last).

    Returns:
        The merged `(ints, floats)`. Means and M2 combine with Chan's formula
        weighted by the finite counts, recomputed from the buckets.
    """
    ints = np.asarray(ints, np.int64)
    floats = np.asarray(floats, np.float64)
    out = ints.sum(axis=axis)
    out[..., _I_MIN] = ints[..., _I_MIN].min(axis=axis)
    out[..., _I_MAX] = ints[..., _I_MAX].max(axis=axis)
    out[..., _I_ABSMAX] = ints[..., _I_ABSMAX].max(axis=axis)
    out[..., _I_ABSMIN] = ints[..., _I_ABSMIN].min(axis=axis)
    mean, m2 = chan(finite_counts(ints), floats[..., _F_MEAN], floats[..., _F_M2], axis)
    merged = np.stack(
        [mean, m2, floats[..., _F_UPD].sum(axis=axis), floats[..., _F_W].sum(axis=axis)], axis=-1
    )
    return out, merged


def finite_counts(ints: np.ndarray) -> np.ndarray:
    """Finite values per record: everything in buckets below the Inf boundary."""
    # The last two buckets hold Inf (ab == INF_BITS) and NaN (ab > INF_BITS).
    return ints[..., _N_INT:-2].sum(axis=-1)


def chan(n: np.ndarray, means: np.ndarray, m2s: np.ndarray, axis: int = 0):
    """Combines (count, mean, M2) parts with Chan et al.'s parallel formula.

    `mean = sum(n_i mean_i) / N` and `M2 = sum(M2_i + n_i (mean_i - mean)^2)`,
    the k-part form of the pairwise update, in float64.

    Args:
        n: counts per part.
        means: mean per part (ignored where `n == 0`).
        m2s: sum of squared deviations per part.
        axis: the parts axis.

    Returns:
        `(mean, m2)` with `axis` removed; mean is NaN for an empty union.
    """
    n = np.asarray(n, np.float64)
    means = np.where(n > 0, means, 0.0)
    total = n.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (n * means).sum(axis=axis) / total
    dev = np.where(n > 0, means - np.expand_dims(mean, axis), 0.0)
    m2 = (np.where(n > 0, m2s, 0.0) + n * dev * dev).sum(axis=axis)
    return mean, m2


def _bits_to_float(bits: np.ndarray) -> np.ndarray:
    """Returns float32 values (as float64) of magnitude bit patterns."""
    return np.asarray(bits, np.int64).astype(np.uint32).view(np.float32).astype(np.float64)


def _key_to_float(key: np.ndarray) -> np.ndarray:
    key = np.asarray(key, np.int64)
    return np.copysign(_bits_to_float(np.abs(key)), np.where(key < 0, -1.0, 1.0))


def metrics(
    ints: np.ndarray, floats: np.ndarray, table: BucketTable, columns: Sequence[str]
) -> np.ndarray:
    """Derives every metric of merged records.

    Args:
        ints: merged int64 records `[rows, fields]`.
        floats: merged float records `[rows, 4]`.
        table: the bucket table.
        columns: `metadata.metric_names(table.what_if)`.

    Returns:
        float64 `[rows, len(columns)]` (NaN where undefined; rows without values
        are NaN except `count` = 0).
    """
    count = ints[:, _I_COUNT].astype(np.float64)
    cum = table.cumulative(ints[:, _N_INT:]).astype(np.float64)
    zeros = table.below(cum, 1)
    below_inf = table.below(cum, INF_BITS)
    below_nan = table.below(cum, INF_BITS + 1)
    n_fin = below_inf
    mean, m2 = floats[:, _F_MEAN], floats[:, _F_M2]
    has = n_fin > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(n_fin > 1, m2 / (n_fin - 1), np.nan)
        values = {
            "count": count,
            "zero_count": zeros,
            "zero_fraction": zeros / count,
            "nan_count": count - below_nan,
            "inf_count": below_nan - below_inf,
            "mean": np.where(has, mean, np.nan),
            "variance": variance,
            "std": np.sqrt(variance),
            "min": np.where(has, _key_to_float(ints[:, _I_MIN]), np.nan),
            "max": np.where(has, _key_to_float(ints[:, _I_MAX]), np.nan),
            "abs_max": np.where(has, _bits_to_float(np.maximum(ints[:, _I_ABSMAX], 0)), np.nan),
            "abs_min_nonzero": np.where(
                ints[:, _I_ABSMIN] < INT32_MAX,
                _bits_to_float(np.minimum(ints[:, _I_ABSMIN], INT32_MAX)), np.nan,
            ),
            # sum(g^2) = M2 + n mean^2: no separate reduction in the graph.
            "l2_norm": np.where(has, np.sqrt(np.maximum(m2 + n_fin * mean * mean, 0.0)), np.nan),
            "update_ratio": np.where(
                floats[:, _F_W] > 0, np.sqrt(floats[:, _F_UPD] / floats[:, _F_W]), np.nan
            ),
            "scaled_zero_fraction": ints[:, _I_SCALED_ZERO] / count,
        }
        for name in table.what_if:
            t = formats.bit_thresholds(name)
            under = table.below(cum, t["underflow_max"] + 1)
            values[f"underflow_fraction/{name}"] = (under - zeros) / count
            values[f"subnormal_fraction/{name}"] = (table.below(cum, t["subnormal_below"]) - under) / count
            values[f"overflow_fraction/{name}"] = (below_inf - table.below(cum, t["overflow_at"])) / count
    out = np.stack([values[c] for c in columns], axis=1)
    empty = count == 0
    out[empty] = np.nan
    out[empty, list(columns).index("count")] = 0.0
    return out


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
    members = list(members)
    per_var_i, per_var_f = merge(ints[:, members], floats[:, members], axis=0)
    # Weights are mirrored: every replica holds the same update, so count it once.
    per_var_f[:, _F_UPD] = floats[0, members, _F_UPD]
    per_var_f[:, _F_W] = floats[0, members, _F_W]
    group_i, group_f = merge(per_var_i, per_var_f, axis=0)
    rows_i = np.concatenate([group_i[None], per_var_i])
    rows_f = np.concatenate([group_f[None], per_var_f])
    hists = table.exponent_hist(table.cumulative(rows_i[:, _N_INT:])).astype(np.float64)
    return metrics(rows_i, rows_f, table, columns), hists


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
