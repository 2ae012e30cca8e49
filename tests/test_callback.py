"""The callback inside real `fit` runs: policies, loss scaling, side effects."""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tb_gradstats
from tb_gradstats import metadata
from tests.oracle import read_events

POLICY_GROUPS = {
    "float32": "float32",
    "mixed_float16": "float32@float16",
    "mixed_bfloat16": "float32@bfloat16",
    "bfloat16": "bfloat16",
    "float16": "float16",
}


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test and restores float32 after it."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="d1"),
         keras.layers.Dense(1, name="d2")],
        name="mlp",
    )


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


@pytest.mark.parametrize("name", list(POLICY_GROUPS))
def test_every_policy_logs_every_metric_for_every_layer(tmp_path, policy, name):
    policy(name)
    model = _mlp()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x, y = _data()
    model.fit(x, y, batch_size=32, verbose=0,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path), update_freq=1)])
    events = read_events(str(tmp_path))
    group = POLICY_GROUPS[name]
    stats = events[metadata.stats_tag(group)]
    assert [s for s, _, _ in stats] == [0, 1, 2, 3]
    # Step 1, not 0: zero-initialised biases make step 0's update_ratio (|dw|/|w|) undefined.
    _, arr, content = stats[1]
    assert content["rows"] == ["*", "mlp/d1/kernel", "mlp/d1/bias", "mlp/d2/kernel", "mlp/d2/bias"]
    assert content["policy"] == name
    assert content["columns"] == metadata.metric_names(tb_gradstats.formats.WHAT_IF_DEFAULT)
    count = arr[:, content["columns"].index("count")]
    np.testing.assert_array_equal(count, [8 * 16 + 16 + 16 + 1, 128, 16, 16, 1])
    for col, name_ in enumerate(content["columns"]):
        # ddof=1 variance of the single-element bias is undefined, and NaN says so.
        rows = arr[:-1] if name_ in ("variance", "std") else arr
        assert np.all(np.isfinite(rows[:, col])), f"{name_} not finite: {arr[:, col]}"
    assert np.isnan(arr[-1, content["columns"].index("variance")])
    assert metadata.hist_tag(group) in events
    assert metadata.STEP_TAG in events


def test_mixed_float16_values_are_unscaled(tmp_path, policy):
    policy("mixed_float16")
    model = _mlp()
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = _data(32)
    with tf.GradientTape() as tape:  # independent float32 reference gradient, no scaling
        loss = keras.losses.MeanSquaredError()(y, tf.cast(model(x), tf.float32))
    ref = tape.gradient(loss, model.trainable_variables)
    model.fit(x, y, batch_size=32, verbose=0, shuffle=False,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path), update_freq=1)])
    _, arr, content = read_events(str(tmp_path))[metadata.stats_tag("float32@float16")][0]
    norms = arr[1:, content["columns"].index("l2_norm")]
    # float16 compute: agree to float16 precision, and nowhere near the 2^15 loss scale.
    np.testing.assert_allclose(norms, [np.linalg.norm(g.numpy()) for g in ref], rtol=2e-2)
    _, step, _ = read_events(str(tmp_path))[metadata.STEP_TAG][0]
    assert step[0] == 2.0**15  # loss_scale of the first step


def test_mixed_float16_overflow_is_a_skipped_step_and_halves_the_scale(tmp_path, policy):
    policy("mixed_float16")
    model = _mlp()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x, y = _data(128)
    x[64:96] *= 3e3  # batch 2: float16 activations/gradients overflow under the 2^15 scale
    model.fit(x, y, batch_size=32, verbose=0, shuffle=False,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path), update_freq=1)])
    steps = {s: v for s, v, _ in read_events(str(tmp_path))[metadata.STEP_TAG]}
    cols = list(metadata.STEP_METRICS)
    skipped = [s for s, v in steps.items() if v[cols.index("skipped_step")] == 1.0]
    assert skipped == [2]
    scale = cols.index("loss_scale")
    assert steps[3][scale] == steps[2][scale] / 2
    logged = read_events(str(tmp_path))[metadata.stats_tag("float32@float16")]
    arr, cols = logged[2][1], logged[0][2]["columns"]
    assert logged[2][0] == 2
    assert arr[0, cols.index("inf_count")] + arr[0, cols.index("nan_count")] > 0


def _train(tmp_path, with_callback: bool, steps_per_execution=1):
    model = _mlp(seed=3)
    model.compile(keras.optimizers.Adam(1e-2), "mse", steps_per_execution=steps_per_execution)
    x, y = _data(256, seed=3)
    cbs = [tb_gradstats.GradientHealth(str(tmp_path), update_freq=1)] if with_callback else []
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, callbacks=cbs)
    return model


def test_training_result_is_bit_identical(tmp_path):
    plain_a = _train(tmp_path / "a", False)
    plain_b = _train(tmp_path / "b", False)
    for wa, wb in zip(plain_a.get_weights(), plain_b.get_weights()):
        np.testing.assert_array_equal(wa, wb)  # the baseline itself is deterministic
    monitored = _train(tmp_path / "c", True)
    for wa, wc in zip(plain_a.get_weights(), monitored.get_weights()):
        assert wa.tobytes() == wc.tobytes()
    assert len(monitored.optimizer.variables) == len(plain_a.optimizer.variables)
    assert len(monitored.weights) == len(plain_a.weights)


def test_save_load_second_fit_and_evaluate_between(tmp_path):
    model = _train(tmp_path / "run", True)
    x, y = _data(64, seed=5)
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for wa, wb in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not any("gh_" in v.path for v in loaded.weights + loaded.optimizer.variables)
    assert "apply" not in vars(model.optimizer)  # the hook is gone after fit
    cb = tb_gradstats.GradientHealth(str(tmp_path / "run"), update_freq=4)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])  # second fit, same dir
    steps = [s for s, _, _ in read_events(str(tmp_path / "run"))[metadata.stats_tag("float32")]]
    assert steps[:16] == list(range(16))  # first fit: 2 epochs x 8 steps
    assert steps[16:] == [16]  # second fit continues the step count (logs 16, next would be 20)


def test_unused_variable_and_embedding_are_labelled(tmp_path):
    class WithUnused(keras.layers.Layer):
        def build(self, shape):
            self.used = self.add_weight(shape=(4,), name="used")
            self.unused = self.add_weight(shape=(3,), name="unused")

        def call(self, x):
            return x * self.used

    inp = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(50, 4, name="emb")(inp)
    out = keras.layers.Dense(1, name="head")(WithUnused(name="odd")(h))
    model = keras.Model(inp, out, name="net")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.default_rng(0).integers(0, 50, (16, 5)).astype("int32")
    model.fit(x, np.zeros((16, 5, 1), "float32"), batch_size=16, verbose=0,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path), update_freq=1)])
    _, arr, content = read_events(str(tmp_path))[metadata.stats_tag("float32")][0]
    kinds = dict(zip(content["rows"], content["row_kinds"]))
    assert kinds["emb/embeddings"] == metadata.ROW_SPARSE
    assert kinds["odd/unused"] == metadata.ROW_NONE
    row = content["rows"].index("odd/unused")
    assert arr[row, content["columns"].index("count")] == 0
    emb = content["rows"].index("emb/embeddings")
    assert arr[emb, content["columns"].index("count")] == 16 * 5 * 4  # one row per looked-up id


def test_unwritable_log_dir_warns_once_and_training_goes_on(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    plain = _train(tmp_path / "a", False)
    with caplog.at_level(logging.WARNING, logger="tb_gradstats"):
        model = _train(blocker / "run", True)
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1
    for wa, wb in zip(plain.get_weights(), model.get_weights()):
        assert wa.tobytes() == wb.tobytes()
    assert not os.path.exists(blocker / "run")


def test_epoch_cadence_logs_the_second_step_of_each_epoch(tmp_path):
    model = _mlp()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x, y = _data(128)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path), update_freq="epoch")])
    steps = [s for s, _, _ in read_events(str(tmp_path))[metadata.stats_tag("float32")]]
    assert steps == [1, 5, 9]
    _, arr, content = read_events(str(tmp_path))[metadata.stats_tag("float32")][0]
    assert np.all(np.isfinite(arr[:, content["columns"].index("update_ratio")]))
