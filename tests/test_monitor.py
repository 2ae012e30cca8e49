"""GradientMonitor in custom training loops, eager and inside tf.function."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tb_gradstats
from tb_gradstats import metadata
from tests.oracle import expected_metrics, read_events


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_custom_loop_logs_the_applied_gradients(tmp_path, compiled):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")], name="m")
    optimizer = keras.optimizers.Adam(1e-2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype("float32")
    y = rng.normal(size=(40, 3)).astype("float32")

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return grads

    step_fn = tf.function(train_step) if compiled else train_step
    applied = []
    with tb_gradstats.GradientMonitor(str(tmp_path), optimizer, model=model, update_freq=2) as mon:
        for i in range(5):
            grads = step_fn(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8])
            applied.append([g.numpy() for g in grads])
            mon.step_end()
    assert "apply" not in vars(optimizer)  # unhooked on exit
    logged = read_events(str(tmp_path))[metadata.stats_tag("float32")]
    assert [s for s, _, _ in logged] == [0, 2, 4]
    for step, arr, content in logged:
        assert content["rows"] == ["*", "m/d/kernel", "m/d/bias"]
        for row, g in enumerate(applied[step], start=1):
            want = expected_metrics(g)
            for name in ("count", "zero_count", "min", "max", "abs_max", "abs_min_nonzero"):
                assert arr[row, content["columns"].index(name)] == want[name], name
            for name in ("mean", "variance", "l2_norm"):
                np.testing.assert_allclose(arr[row, content["columns"].index(name)], want[name], rtol=1e-6)
