"""Faults around training: the monitor warns once and never changes the result."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

import tb_gradstats
from tb_gradstats import alerts, metadata, reader
from tests.oracle import read_events


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(320, 8)).astype("float32"), rng.normal(size=(320, 1)).astype("float32")


def _train(callbacks=(), epochs=2):
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False, callbacks=list(callbacks))
    return model


@pytest.fixture(scope="module")
def reference_weights():
    return [w.tobytes() for w in _train().get_weights()]


def _assert_same(model, reference):
    assert [w.tobytes() for w in model.get_weights()] == reference


def _warnings(caplog, text):
    return [r for r in caplog.records if r.name == "tb_gradstats" and text in r.getMessage()]


@contextlib.contextmanager
def _tmpfs(path, options):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the failing-writer test covers the logic")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_log_dir(tmp_path, caplog, reference_weights):
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro, caplog.at_level(logging.WARNING):
        model = _train([tb_gradstats.GradientHealth(str(ro / "run"), update_freq=1)])
    assert len(_warnings(caplog, "cannot write")) == 1
    _assert_same(model, reference_weights)


def test_full_disk_tiny_tmpfs(tmp_path, caplog, reference_weights):
    with _tmpfs(tmp_path / "full", "size=16k") as full, caplog.at_level(logging.WARNING):
        model = _train([tb_gradstats.GradientHealth(str(full / "run"), update_freq=1)])
    assert len(_warnings(caplog, "cannot write")) == 1
    _assert_same(model, reference_weights)


def test_failing_writer(tmp_path, caplog, monkeypatch, reference_weights):
    from tb_gradstats import summary

    def no_space(self, event):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(summary.EventFile, "add_event", no_space)
    with caplog.at_level(logging.WARNING):
        model = _train([tb_gradstats.GradientHealth(str(tmp_path / "run"), update_freq=1)])
    assert len(_warnings(caplog, "cannot write")) == 1
    _assert_same(model, reference_weights)


def test_log_dir_removed_mid_training(tmp_path, caplog, reference_weights):
    run = tmp_path / "run"

    class RemoveAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 4 and run.exists():
                shutil.rmtree(run)

    with caplog.at_level(logging.WARNING):
        model = _train([tb_gradstats.GradientHealth(str(run), update_freq=1), RemoveAt()])
    assert len(_warnings(caplog, "was removed")) == 1
    _assert_same(model, reference_weights)
    steps = [s for s, _, _ in read_events(str(run))[metadata.stats_tag("float32")]]
    assert steps[0] > 4 and steps[-1] == 19  # logging resumed in the recreated directory


class _Poison(keras.layers.Layer):
    """Dense-like layer whose kernel gradient is NaN/Inf on every step."""

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 1), name="kernel")

    def call(self, x):
        @tf.custom_gradient
        def poison(k):
            bad = tf.where(tf.range(tf.size(k)) % 2 == 0, np.nan, np.inf)
            return tf.identity(k), lambda up: tf.reshape(tf.cast(bad, k.dtype), tf.shape(k))

        return tf.matmul(x, poison(tf.identity(self.kernel)))


def test_nonfinite_storm_is_counted_and_alerted(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), _Poison(name="poison")], name="storm")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = _data()
    model.fit(x[:100], y[:100], batch_size=1, verbose=0,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path / "storm"), update_freq=1)])
    logged = read_events(str(tmp_path / "storm"))[metadata.stats_tag("float32")]
    assert len(logged) == 100
    cols = logged[0][2]["columns"]
    for _, arr, _ in logged:
        assert arr[1, cols.index("nan_count")] == 4 and arr[1, cols.index("inf_count")] == 4
        assert np.isnan(arr[1, cols.index("mean")])  # no finite value: undefined, not 0
    data, skipped = reader.Reader(reader.logdir_provider(str(tmp_path))).read_all()
    assert not skipped
    found = alerts.evaluate(data["storm"])
    nonfinite = [a for a in found if a.rule == "non_finite" and a.layer == "storm/poison/kernel"]
    assert nonfinite and nonfinite[0].first_step == 0 and nonfinite[0].last_step == 99
