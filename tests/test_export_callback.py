"""`tb-gradstats export` gives back exactly what the callback computed."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import keras
import numpy as np

import tb_gradstats
from tb_gradstats import summary


def test_export_equals_callback_values(tmp_path, monkeypatch):
    written = {}
    original = summary.GradientHealthWriter.write

    def spy(self, step, groups, step_values=None, step_info=None):
        for group, data in groups.items():
            for r, layer in enumerate(data.rows):
                for c, metric in enumerate(data.columns):
                    written[(step, group, layer, metric)] = float(data.stats[r, c])
        for metric, value in (step_values or {}).items():
            written[(step, "_step", "*", metric)] = float(value)
        return original(self, step, groups, step_values, step_info)

    monkeypatch.setattr(summary.GradientHealthWriter, "write", spy)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(96, 6)).astype("float32")
    model.fit(x, x[:, :1], batch_size=16, epochs=2, verbose=0,
              callbacks=[tb_gradstats.GradientHealth(str(tmp_path / "exp"), update_freq=3)])
    assert written

    exe = os.path.join(os.path.dirname(sys.executable), "tb-gradstats")
    out = subprocess.run([exe, "export", str(tmp_path), "--run", "exp", "--format", "csv"],
                         capture_output=True, text=True, check=True).stdout
    reader = csv.reader(io.StringIO(out))
    assert next(reader) == ["run", "step", "group", "layer", "metric", "value"]
    exported = {}
    for run, step, group, layer, metric, value in reader:
        assert run == "exp"
        exported[(int(step), group, layer, metric)] = float(value)
    assert exported.keys() == written.keys()
    for key, want in written.items():
        got = exported[key]
        assert got == want or (np.isnan(got) and np.isnan(want)), key
