"""The monitor's memory does not grow with the number of logged steps.

Every logged step goes to disk at once; nothing per step stays in Python. Measured with
tracemalloc between two points of one run (TensorFlow's own C++ buffers are not traced,
and are fixed-size ring variables here anyway).
"""

from __future__ import annotations

import gc
import tracemalloc

import keras
import numpy as np
import tensorflow as tf

import tb_gradstats
from tb_gradstats import metadata
from tests.oracle import read_events

WARMUP, STEPS = 500, 4000


def test_memory_flat_over_thousands_of_logged_steps(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    optimizer = keras.optimizers.SGD(1e-3)
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 4)).astype("float32"))

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x) ** 2)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    with tb_gradstats.GradientMonitor(str(tmp_path), optimizer, model=model, update_freq=1) as mon:
        for _ in range(WARMUP):
            train_step()
            mon.step_end()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(STEPS - WARMUP):
            train_step()
            mon.step_end()
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        written = mon._writer.bytes_written
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_step = written / STEPS
    # Keeping even a tenth of each written event in memory would exceed this bound.
    assert grown < 0.1 * per_step * (STEPS - WARMUP), (grown, per_step)
    assert len(read_events(str(tmp_path))[metadata.stats_tag("float32")]) == STEPS
