"""1000+ trainable variables: per-variable work happens only at trace time and on logged steps.

Wall-clock figures for this model are in benchmarks/ (never timed asserts here); this
test pins the structure that keeps them bounded.
"""

from __future__ import annotations

import keras
import numpy as np

import tb_gradstats
from tb_gradstats import capture, combine, metadata, stats
from tests.oracle import read_events

LAYERS = 520  # 1040 trainable variables


def _deep_mlp():
    keras.utils.set_random_seed(0)
    layers = [keras.Input((8,))]
    layers += [keras.layers.Dense(8, activation="tanh", name=f"d{i}") for i in range(LAYERS)]
    return keras.Sequential(layers, name="deep")


def test_thousand_variables_no_per_variable_work_on_unlogged_steps(tmp_path, monkeypatch):
    calls = {"records": 0, "group_metrics": 0, "read": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(stats, "records", counting("records", stats.records))
    monkeypatch.setattr(combine, "group_metrics", counting("group_metrics", combine.group_metrics))
    monkeypatch.setattr(capture.GradientCapture, "_read_slots",
                        counting("read", capture.GradientCapture._read_slots))
    model = _deep_mlp()
    assert len(model.trainable_variables) == 2 * LAYERS
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    x = np.random.default_rng(0).normal(size=(640, 8)).astype("float32")
    steps = 640 // 8
    model.fit(x, x, batch_size=8, verbose=0,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path), update_freq=25)])
    logged = [s for s, _, _ in read_events(str(tmp_path))[metadata.stats_tag("float32")]]
    assert logged == list(range(0, steps, 25))  # 0, 25, 50, 75
    # Traced once: all 1040 variables in one batched record, never per step or per variable.
    assert calls["records"] == 1
    # Host work only when a logged step ran (plus the final read at train end).
    assert calls["read"] == len(logged) + 1
    assert calls["group_metrics"] == len(logged)
    _, arr, content = read_events(str(tmp_path))[metadata.stats_tag("float32")][0]
    assert arr.shape == (1 + 2 * LAYERS, len(content["columns"]))
