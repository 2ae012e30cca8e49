"""In-graph gradient statistics for many tensors at once, on float32 bit patterns.

TensorFlow on CPU flushes float32 subnormals to zero in float arithmetic and
comparisons, so every count, extremum and histogram bin here is computed on
`ab = bitcast(g, int32) & 0x7FFFFFFF`, which orders like `|g|` for all
non-negative floats. One `searchsorted` of `ab` against a sorted table of bit
boundaries (every power of two, plus each what-if threshold) followed by one
segment sum gives zeros, NaN/Inf, the log2 histogram and every what-if count;
the host (`combine.py`) turns the bucket counts into metrics. Moments are
two-pass over finite values, in float64.

All tensors of a step are flattened into one vector with a segment id per
variable, so the graph holds a fixed number of reductions whatever the number
of variables: a 1000-variable model traces and runs as fast as a 10-variable one
per element, instead of launching dozens of small kernels per variable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tb_gradstats import formats

INT_FIELDS: tuple[str, ...] = (
    "count", "min_key", "max_key", "abs_max_bits", "abs_min_nonzero_bits", "scaled_zero_count",
)
FLOAT_FIELDS: tuple[str, ...] = ("mean", "m2", "update_sq", "weight_sq")

INF_BITS = 0x7F800000
INT32_MAX = 2**31 - 1


def bucket_boundaries(what_if: Sequence[str]) -> np.ndarray:
    """Returns the sorted bit boundaries of the bucket table.

    Bucket `i` holds the values with exactly `i` boundaries `<= ab`, so
    `count(ab < boundaries[j]) = buckets[: j + 1].sum()`. The table holds
    1 (nonzero), `E << 23` for every biased exponent E in 1..255 (255 is Inf),
    `INF_BITS + 1` (NaN), and for each what-if format `underflow_max + 1`,
    `subnormal_below` and `overflow_at`.

    Args:
        what_if: canonical format names.

    Returns:
        A sorted, duplicate-free int64 numpy array.
    """
    values = {1, INF_BITS + 1}
    values.update(e << 23 for e in range(1, 256))
    for name in what_if:
        t = formats.bit_thresholds(name)
        values.update({t["underflow_max"] + 1, t["subnormal_below"], t["overflow_at"]})
    return np.array(sorted(values), dtype=np.int64)


def flatten(tensors: Sequence[tf.Tensor | None]) -> tuple[tf.Tensor, tf.Tensor]:
    """Concatenates tensors into one float32 vector with a segment id per element.

    Args:
        tensors: one entry per row; `None` rows become empty segments.

    Returns:
        `(values, segment_ids)`.
    """
    flats = [
        tf.zeros([0], tf.float32) if t is None else tf.reshape(tf.cast(t, tf.float32), [-1])
        for t in tensors
    ]
    sizes = tf.stack([tf.size(f) for f in flats])
    return tf.concat(flats, 0), tf.repeat(tf.range(len(flats)), sizes)


def records(
    grads: Sequence[tf.Tensor | None],
    boundaries: tf.Tensor,
    scale: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns the raw statistics records of a list of gradients.

    Args:
        grads: dense gradients of any float dtype (the values of IndexedSlices),
            `None` where a variable got no gradient.
        boundaries: int32 tensor from `bucket_boundaries`.
        scale: the loss scale the gradients are multiplied by, or `None`. The
            records then describe `grad / scale` (as the LossScaleOptimizer
            computes it), and `scaled_zero_count` counts zeros before the division.

    Returns:
        `(ints, floats)`: int64 `[V, len(INT_FIELDS) + len(boundaries) + 1]` and
        float64 `[V, 2]` (mean and M2 of the finite values).
    """
    n = len(grads)
    g, seg = flatten(grads)
    scaled_zero = _segment_count(tf.equal(_abs_bits(g), 0), seg, n)
    if scale is not None:
        g = tf.math.divide(g, tf.cast(scale, tf.float32))
    bits = tf.bitcast(g, tf.int32)
    ab = tf.bitwise.bitwise_and(bits, INT32_MAX)
    finite = ab < INF_BITS
    if scale is None:
        scaled_zero = _segment_count(tf.equal(ab, 0), seg, n)

    key = tf.where(bits < 0, -ab, ab)  # orders like the signed value, bit-exactly
    extrema = [
        tf.math.unsorted_segment_min(tf.where(finite, key, INT32_MAX), seg, n),
        tf.math.unsorted_segment_max(tf.where(finite, key, -INT32_MAX), seg, n),
        tf.math.unsorted_segment_max(tf.where(finite, ab, -1), seg, n),
        tf.math.unsorted_segment_min(tf.where(finite & (ab > 0), ab, INT32_MAX), seg, n),
    ]
    n_buckets = boundaries.shape[0] + 1
    idx = tf.searchsorted(boundaries, ab, side="right", out_type=tf.int32)
    buckets = tf.math.unsorted_segment_sum(tf.ones_like(idx), seg * n_buckets + idx, n * n_buckets)

    # float64 moments: float32 squares overflow for |g| > 1.8e19 (bfloat16 range).
    n_finite = tf.cast(_segment_count(finite, seg, n), tf.float64)
    g64 = tf.cast(tf.where(finite, g, 0.0), tf.float64)
    mean = tf.math.divide_no_nan(tf.math.unsorted_segment_sum(g64, seg, n), n_finite)
    dev = tf.where(finite, tf.square(g64 - tf.gather(mean, seg)), tf.constant(0.0, tf.float64))
    m2 = tf.math.unsorted_segment_sum(dev, seg, n)

    count = tf.math.unsorted_segment_sum(tf.ones_like(seg), seg, n)
    head = tf.stack([count] + extrema + [scaled_zero], axis=1)
    ints = tf.concat(
        [tf.cast(head, tf.int64), tf.cast(tf.reshape(buckets, [n, n_buckets]), tf.int64)], axis=1
    )
    return ints, tf.stack([mean, m2], axis=1)


def sum_sq_by_segment(values: tf.Tensor, seg: tf.Tensor, n: int) -> tf.Tensor:
    """Returns the float64 sum of squares of `values` per segment."""
    return tf.math.unsorted_segment_sum(tf.square(tf.cast(values, tf.float64)), seg, n)


def _abs_bits(g: tf.Tensor) -> tf.Tensor:
    return tf.bitwise.bitwise_and(tf.bitcast(g, tf.int32), INT32_MAX)


def _segment_count(mask: tf.Tensor, seg: tf.Tensor, n: int) -> tf.Tensor:
    return tf.math.unsorted_segment_sum(tf.cast(mask, tf.int32), seg, n)
