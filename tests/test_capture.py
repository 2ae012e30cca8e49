"""The callback's numbers against numpy + ml_dtypes, in every execution mode.

A layer injects a known gradient C (via tf.custom_gradient, so no float
arithmetic can flush its subnormals) holding ±0, float32 subnormals, NaN, ±Inf
and every what-if threshold ±1 ulp; each logged metric must equal the oracle.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tb_gradstats
from tb_gradstats import stats
from tests.oracle import expected_metrics, read_events, special_values

EXACT = {"count", "zero_count", "nan_count", "inf_count", "min", "max", "abs_max",
         "abs_min_nonzero", "zero_fraction"}


def moment_values() -> np.ndarray:
    """Well-conditioned values (mean >> std) with zeros, NaN, Inf and a subnormal mixed in.

    Larger than `stats.LARGE`, so this tensor takes the per-tensor path while the
    special values take the flattened, segmented one.
    """
    rng = np.random.default_rng(1)
    v = 1000.0 + rng.normal(0, 1e-2, stats.LARGE + 300)
    return np.concatenate([v, [0.0, np.nan, np.inf, 2.0**-140]]).astype(np.float32)


class InjectGradient(keras.layers.Layer):
    """Outputs 0; the gradient w.r.t. weight `w` is the constant `c` (and `m` gets `m_grad`)."""

    def __init__(self, c, m_grad=None, **kwargs):
        super().__init__(**kwargs)
        self.c = np.asarray(c, np.float32)
        self.m_grad = None if m_grad is None else np.asarray(m_grad, np.float32)

    def build(self, input_shape):
        self.w = self.add_weight(shape=self.c.shape, initializer="ones", name="w")
        if self.m_grad is not None:
            self.m = self.add_weight(shape=self.m_grad.shape, initializer="ones", name="m")

    def call(self, x):
        out = x[:, :1] * 0.0 + _inject(tf.identity(self.w), self.c)
        if self.m_grad is not None:
            out += _inject(tf.identity(self.m), self.m_grad)
        return out


def _inject(w, c):
    @tf.custom_gradient
    def inject(w):
        return tf.reduce_sum(w) * 0.0, lambda upstream: tf.constant(c)

    return inject(w)


def _fit(logdir, c, m_grad=None, *, steps=1, strategy=None, **compile_kwargs):
    scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
    with scope:
        model = keras.Sequential([keras.Input((2,)), InjectGradient(c, m_grad, name="inject")], name="net")
        model.compile(keras.optimizers.SGD(0.0), lambda yt, yp: tf.reduce_mean(yp), **compile_kwargs)
    x = np.ones((8 * steps, 2), np.float32)
    cb = tb_gradstats.GradientHealth(logdir, update_freq=1)
    model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    return model


def _check(row: np.ndarray, columns: list[str], expected: dict[str, float], mean_atol=0.0):
    for name, want in expected.items():
        got = row[columns.index(name)]
        if name in EXACT or "fraction" in name:
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif name == "mean" and mean_atol:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=mean_atol, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)


def _rms(x):
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x * x)))


MODES = {
    "eager": dict(run_eagerly=True),
    "tf_function": dict(),
    "jit_compile": dict(jit_compile=True),
    "steps_per_execution_4": dict(steps_per_execution=4),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_metric_matches_oracle(tmp_path, mode):
    c, m = special_values(), moment_values()
    steps = 4
    _fit(str(tmp_path), c, m, steps=steps, **MODES[mode])
    events = read_events(str(tmp_path))
    stats = events["gradient_health/stats/float32"]
    assert [s for s, _, _ in stats] == list(range(steps))  # every step logged, none lost
    for _, arr, content in stats:
        assert content["rows"] == ["*", "net/inject/w", "net/inject/m"]
        cols = content["columns"]
        # The special values mix ±3.4e38 with 1e-3: any float64 sum carries an error of
        # ~1e-16 of the largest terms, so the mean is held to 1e-6 of the data's scale.
        _check(arr[1], cols, expected_metrics(c), mean_atol=1e-6 * _rms(c))
        _check(arr[2], cols, expected_metrics(m))
        both = np.concatenate([c, m])
        _check(arr[0], cols, expected_metrics(both), mean_atol=1e-6 * _rms(both))


def test_mirrored_strategy_combines_replicas(tmp_path):
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest configures two logical CPUs"
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    c, m = special_values(), moment_values()
    _fit(str(tmp_path), c, m, steps=2, strategy=strategy)
    events = read_events(str(tmp_path))
    stats = events["gradient_health/stats/float32"]
    assert [s for s, _, _ in stats] == [0, 1]  # written once per step, not once per replica
    # Each replica applies its own C before the all-reduce: the union of both.
    for _, arr, content in stats:
        cc = np.concatenate([c, c])
        _check(arr[1], content["columns"], expected_metrics(cc), mean_atol=1e-6 * _rms(cc))
        _check(arr[2], content["columns"], expected_metrics(np.concatenate([m, m])))
    steps = events["gradient_health/step"]
    assert steps[0][1][2] == 2.0  # replicas
    assert steps[0][1][3] == 2.0  # both replicas saw NaN/Inf


def test_histogram_matches_log2_bins(tmp_path):
    c = special_values()
    _fit(str(tmp_path), c)
    _, hist, _ = read_events(str(tmp_path))["gradient_health/hist/float32"][0]
    e0 = int(hist[1, 0])
    counts = hist[1, 1:]
    x = np.abs(c[np.isfinite(c) & (c != 0)]).astype(np.float64)
    exps = np.floor(np.log2(x)).astype(int)  # exact: log2 of float64 powers of two
    exps[x < 2.0**-126] = -127  # all float32 subnormals share one bin
    want = np.zeros_like(counts)
    for e in exps:
        want[e - e0] += 1
    np.testing.assert_array_equal(counts, want)


def test_update_ratio_is_norm_of_step_update(tmp_path):
    c = np.linspace(-1, 1, 10).astype(np.float32)
    with tf.distribute.get_strategy().scope():
        model = keras.Sequential([keras.Input((2,)), InjectGradient(c, name="inject")], name="net")
        model.compile(keras.optimizers.SGD(0.5), lambda yt, yp: tf.reduce_mean(yp))
    w0 = model.get_weights()[0].astype(np.float64)
    x = np.ones((8, 2), np.float32)
    model.fit(x, x[:, :1], batch_size=8, verbose=0,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path), update_freq=1)])
    w1 = model.get_weights()[0].astype(np.float64)
    _, arr, content = read_events(str(tmp_path))["gradient_health/stats/float32"][0]
    assert content["rows"][1] == "net/inject/w"
    got = arr[1, content["columns"].index("update_ratio")]
    np.testing.assert_allclose(got, np.linalg.norm(w1 - w0) / np.linalg.norm(w0), rtol=1e-6)
