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


# Tensors at least this large get their own reductions (TF's multi-threaded Eigen
# kernels: ~0.2 ms per million elements); smaller ones share one flattened vector with
# segment ids, so a 1000-variable model adds a fixed number of ops to the graph.
LARGE = 1 << 14


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
    values = tf.concat(flats, 0)
    # Segment ids as a cumulative sum of row starts: static shapes, XLA-friendly (tf.repeat is not).
    ends = tf.cumsum(tf.stack([tf.size(f) for f in flats]))
    starts = tf.boolean_mask(ends[:-1], ends[:-1] < tf.size(values))
    marks = tf.tensor_scatter_nd_add(
        tf.zeros_like(values, tf.int32), starts[:, None], tf.ones_like(starts)
    )
    return values, tf.cumsum(marks)


def is_large(t) -> bool:
    """Whether tensor `t` gets its own reductions (static size >= LARGE)."""
    if t is None:
        return False
    size = t.shape.num_elements()
    return size is not None and size >= LARGE


def records(
    grads: Sequence[tf.Tensor | None],
    boundaries: np.ndarray,
    scale: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns the raw statistics records of a list of gradients.

    Args:
        grads: dense gradients of any float dtype (the values of IndexedSlices),
            `None` where a variable got no gradient.
        boundaries: the bucket table from `bucket_boundaries`.
        scale: the loss scale the gradients are multiplied by, or `None`. The
            records then describe `grad / scale` (as the LossScaleOptimizer
            computes it), and `scaled_zero_count` counts zeros before the division.

    Returns:
        `(ints, floats)`: int64 `[V, len(INT_FIELDS) + len(boundaries) + 1]` and
        float64 `[V, 2]` (mean and M2 of the finite values).
    """
    extra = _extra_boundaries(boundaries)
    n_buckets = len(boundaries) + 1
    blocks, order = [], []
    small = [i for i, g in enumerate(grads) if not is_large(g)]
    if small:
        values, seg = flatten([grads[i] for i in small])
        blocks.append(_block(values, seg, len(small), extra, n_buckets, scale))
        order += small
    for i, g in enumerate(grads):
        if is_large(g):
            blocks.append(_block(tf.reshape(tf.cast(g, tf.float32), [-1]), None, 1, extra,
                                 n_buckets, scale))
            order.append(i)
    ints = tf.concat([b[0] for b in blocks], 0)
    floats = tf.concat([b[1] for b in blocks], 0)
    back = np.argsort(order)  # rows back into variable order
    return tf.gather(ints, back), tf.gather(floats, back)


def _block(g, seg, n, extra, n_buckets, scale):
    """Records of `n` rows: one tensor (`seg is None`) or segments of a flat vector."""
    scaled_zero = _count(tf.equal(_abs_bits(g), 0), seg, n)
    if scale is not None:
        g = tf.math.divide(g, tf.cast(scale, tf.float32))
    bits = tf.bitcast(g, tf.int32)
    ab = tf.bitwise.bitwise_and(bits, INT32_MAX)
    finite = ab < INF_BITS
    if scale is None:
        scaled_zero = _count(tf.equal(ab, 0), seg, n)

    key = tf.where(bits < 0, -ab, ab)  # orders like the signed value, bit-exactly
    extrema = [
        _reduce(tf.math.reduce_min, tf.math.unsorted_segment_min,
                tf.where(finite, key, INT32_MAX), seg, n),
        _reduce(tf.math.reduce_max, tf.math.unsorted_segment_max,
                tf.where(finite, key, -INT32_MAX), seg, n),
        _reduce(tf.math.reduce_max, tf.math.unsorted_segment_max,
                tf.where(finite, ab, -1), seg, n),
        _reduce(tf.math.reduce_min, tf.math.unsorted_segment_min,
                tf.where(finite & (ab > 0), ab, INT32_MAX), seg, n),
    ]
    idx = _bucket_index(ab, extra)
    if seg is not None:
        idx = seg * n_buckets + idx
    buckets = tf.raw_ops.DenseBincount(
        input=idx, size=tf.constant(n * n_buckets, tf.int32), weights=tf.constant([], tf.int32)
    )

    # float64 moments: float32 squares overflow for |g| > 1.8e19 (bfloat16 range).
    n_finite = _count(finite, seg, n)
    g64 = tf.cast(tf.where(finite, g, 0.0), tf.float64)
    mean = tf.math.divide_no_nan(_sum(g64, seg, n), tf.cast(n_finite, tf.float64))
    centre = mean if seg is None else tf.gather(mean, seg)
    # Non-finite values were zeroed and each added mean^2: take that back instead of a mask pass.
    n_masked = tf.cast(_count(tf.ones_like(finite), seg, n) - n_finite, tf.float64)
    m2 = tf.maximum(_sum(tf.math.squared_difference(g64, centre), seg, n) - n_masked * tf.square(mean), 0.0)

    count = _count(tf.ones_like(finite), seg, n)
    head = tf.stack([count] + extrema + [scaled_zero], axis=1)
    ints = tf.concat(
        [tf.cast(head, tf.int64), tf.cast(tf.reshape(buckets, [n, n_buckets]), tf.int64)], axis=1
    )
    return ints, tf.stack([mean, m2], axis=1)


def _extra_boundaries(boundaries: np.ndarray) -> tuple[int, ...]:
    """The boundaries that are not `E << 23` for E in 1..255."""
    return tuple(int(b) for b in boundaries if b < (1 << 23) or b & 0x7FFFFF)


@tf.function(jit_compile=True, autograph=False)
def _fused_bucket_index(ab, extra):
    # Number of boundaries <= ab: the exponent counts the power-of-two boundaries at or
    # below it, each other boundary adds one. XLA fuses the compares into one pass.
    idx = tf.bitwise.right_shift(ab, 23)
    for i in range(extra.shape[0]):
        idx += tf.cast(ab >= extra[i], tf.int32)
    return idx


def _bucket_index(ab, extra: tuple[int, ...]) -> tf.Tensor:
    """`searchsorted(boundaries, ab, side="right")`, in one fused elementwise pass."""
    return _fused_bucket_index(ab, tf.constant(extra, tf.int32))


def sum_sq_by_segment(values: tf.Tensor, seg: tf.Tensor | None, n: int) -> tf.Tensor:
    """Returns the float64 sum of squares of `values` per segment (or in total)."""
    return _sum(tf.square(tf.cast(values, tf.float64)), seg, n)


def _reduce(direct, segmented, x, seg, n):
    return direct(x)[None] if seg is None else segmented(x, seg, n)


def _sum(x, seg, n):
    return _reduce(tf.reduce_sum, tf.math.unsorted_segment_sum, x, seg, n)


def _count(mask, seg, n):
    return _sum(tf.cast(mask, tf.int32), seg, n)


def _abs_bits(g: tf.Tensor) -> tf.Tensor:
    return tf.bitwise.bitwise_and(tf.bitcast(g, tf.int32), INT32_MAX)
