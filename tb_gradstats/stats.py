"""In-graph per-tensor gradient statistics, computed on float32 bit patterns.

TensorFlow on CPU flushes float32 subnormals to zero in float arithmetic and
comparisons, so every count, extremum and histogram bin here is computed on
`ab = bitcast(g, int32) & 0x7FFFFFFF`, which orders like `|g|` for all
non-negative floats. One `searchsorted` of `ab` against a sorted table of bit
boundaries (every power of two, plus each what-if threshold) followed by one
segment sum gives zeros, NaN/Inf, the log2 histogram and every what-if count
in a single pass; the host (`combine.py`) turns the bucket counts into
metrics. Moments are two-pass over finite values, in float64.

The raw record of one tensor is a pair of vectors (`INT_FIELDS` + buckets,
`FLOAT_FIELDS`), so that tensors, replicas and groups combine on the host.
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
    """Returns the sorted int32 bit boundaries of the bucket table.

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


def tensor_record(
    grad: tf.Tensor,
    boundaries: tf.Tensor,
    scale: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns the raw statistics record of one gradient tensor.

    Args:
        grad: a dense gradient of any float dtype (flattened here).
        boundaries: int32 tensor from `bucket_boundaries`.
        scale: the loss scale the gradient is multiplied by, or `None`. The
            record then describes `grad / scale` (as the LossScaleOptimizer
            computes it), and `scaled_zero_count` counts zeros of `grad` itself.

    Returns:
        `(ints, floats)`: int64 `[len(INT_FIELDS) + len(boundaries) + 1]` and
        float64 `[len(FLOAT_FIELDS)]` (update fields zero; filled by the caller).
    """
    g = tf.reshape(grad, [-1])
    scaled_zero = None
    if scale is not None:
        scaled_zero = _count(tf.equal(_abs_bits(g), 0))
        g = tf.math.divide(g, tf.cast(scale, g.dtype))
    g = tf.cast(g, tf.float32)
    bits = tf.bitcast(g, tf.int32)
    ab = tf.bitwise.bitwise_and(bits, INT32_MAX)
    finite = ab < INF_BITS
    n_finite = _count(finite)
    zero_count = _count(tf.equal(ab, 0))
    if scaled_zero is None:
        scaled_zero = zero_count

    key = tf.where(bits < 0, -ab, ab)  # orders like the signed value, bit-exactly
    min_key = tf.reduce_min(tf.where(finite, key, INT32_MAX))
    max_key = tf.reduce_max(tf.where(finite, key, -INT32_MAX))
    abs_max = tf.reduce_max(tf.where(finite, ab, -1))
    abs_min = tf.reduce_min(tf.where(finite & (ab > 0), ab, INT32_MAX))

    idx = tf.searchsorted(boundaries, ab, side="right", out_type=tf.int32)
    buckets = tf.math.unsorted_segment_sum(
        tf.ones_like(idx), idx, tf.shape(boundaries)[0] + 1
    )

    # float64 moments: float32 squares overflow for |g| > 1.8e19 (bfloat16 range).
    g64 = tf.cast(tf.where(finite, g, 0.0), tf.float64)
    mean = tf.math.divide_no_nan(tf.reduce_sum(g64), tf.cast(n_finite, tf.float64))
    m2 = tf.reduce_sum(tf.where(finite, tf.square(g64 - mean), tf.constant(0.0, tf.float64)))
    ints = tf.concat(
        [
            tf.cast(tf.stack([tf.size(g), min_key, max_key, abs_max, abs_min]), tf.int64),
            tf.reshape(tf.cast(scaled_zero, tf.int64), [1]),
            tf.cast(buckets, tf.int64),
        ],
        axis=0,
    )
    floats = tf.stack([mean, m2, tf.constant(0.0, tf.float64), tf.constant(0.0, tf.float64)])
    return ints, floats


def _abs_bits(g: tf.Tensor) -> tf.Tensor:
    bits = tf.bitcast(tf.cast(g, tf.float32), tf.int32)
    return tf.bitwise.bitwise_and(bits, INT32_MAX)


def _count(mask: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(mask, tf.int32))
