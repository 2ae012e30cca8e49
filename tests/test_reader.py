"""The reader returns exactly the arrays the writer wrote, and skips what it cannot read."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from tb_gradstats import metadata, reader
from tests.fixtures import write_synthetic_run

GROUPS = {"float32": ("a/kernel", "a/bias"), "float32@float16": ("b/kernel",)}


def _read(logdir):
    return reader.Reader(reader.logdir_provider(str(logdir))).read_all()


def test_round_trip_is_exact(tmp_path):
    run = write_synthetic_run(tmp_path, "r", steps=range(0, 1000, 2), groups=GROUPS,
                              policy="mixed_float16", what_if=("float16",))
    data, skipped = _read(tmp_path)
    assert skipped == []
    d = data["r"]
    assert d.facts == {"policy": "mixed_float16", "replicas": 1, "what_if": ["float16"]}
    assert list(d.groups) == list(GROUPS)
    for group, g in d.groups.items():
        assert g.rows == run.rows[group] and g.columns == run.columns
        assert g.row_kinds == ["group"] + ["dense"] * len(GROUPS[group])
        np.testing.assert_array_equal(g.steps, run.steps)  # all 500, no sampling
        np.testing.assert_array_equal(g.stats, run.stats[group])
        np.testing.assert_array_equal(g.hist_steps, run.steps)
        for t, (first, counts) in enumerate(g.hist):
            assert first == run.hist_first_exponent[group][t]
            np.testing.assert_array_equal(counts, run.hist[group][t])
    assert d.groups["float32@float16"].compute_dtype == "float16"
    assert d.groups["float32@float16"].facts["compute_dtype"] == "float16"
    np.testing.assert_array_equal(d.step_steps, run.steps)
    np.testing.assert_array_equal(d.step_values, run.step_values)
    assert d.step_columns == list(metadata.STEP_METRICS)
    col = run.columns.index("l2_norm")
    np.testing.assert_array_equal(d.groups["float32"].metric("l2_norm"),
                                  run.stats["float32"][:, :, col])


def test_find_layer(tmp_path):
    write_synthetic_run(tmp_path, "r", steps=range(2), groups=GROUPS)
    d = _read(tmp_path)[0]["r"]
    g, row = d.find_layer("b/kernel")
    assert (g.group, row) == ("float32@float16", 1)
    assert d.find_layer("*", "float32")[1] == 0
    for args in (("nope",), ("*", None), ("*", "float64"), ("a/kernel", "float32@float16")):
        with pytest.raises(KeyError):
            d.find_layer(*args)


def _write_raw(path, tag, content: bytes, tensors, with_metadata=True):
    w = EventFileWriter(str(path))
    for step, array in enumerate(tensors):
        value = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(array))
        value.metadata.plugin_data.plugin_name = metadata.PLUGIN_NAME
        value.metadata.data_class = summary_pb2.DATA_CLASS_TENSOR
        if step == 0 and with_metadata:
            value.metadata.plugin_data.content = content
        w.add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[value])))
    w.close()


def test_unreadable_tags_are_skipped_not_raised(tmp_path):
    write_synthetic_run(tmp_path, "good", steps=range(3))
    good_content = json.dumps({"schema_version": 1, "kind": "stats", "group": "float32",
                               "rows": ["*"], "row_kinds": ["group"], "columns": ["count"]})
    _write_raw(tmp_path / "future", "gradient_health/stats/float32",
               json.dumps({"schema_version": 2, "kind": "stats"}).encode(), [np.zeros((1, 1))])
    _write_raw(tmp_path / "garbled", "gradient_health/stats/float32", b"\xff{not json",
               [np.zeros((1, 1))])
    _write_raw(tmp_path / "norows", "gradient_health/stats/float32",
               json.dumps({"schema_version": 1, "kind": "stats"}).encode(), [np.zeros((1, 1))])
    _write_raw(tmp_path / "shape", "gradient_health/stats/float32", good_content.encode(),
               [np.ones((1, 1)), np.ones((2, 1)), np.full((1, 1), 3.0)])
    data, skipped = _read(tmp_path)
    assert set(data) == {"good", "shape"}
    reasons = {s.run: s.reason for s in skipped}
    assert "newer" in reasons["future"]
    assert "unreadable" in reasons["garbled"]
    assert "rows" in reasons["norows"]
    assert "1 step(s)" in reasons["shape"]
    g = data["shape"].groups["float32"]
    np.testing.assert_array_equal(g.steps, [0, 2])  # the odd-shaped step 1 is dropped
    np.testing.assert_array_equal(g.stats[:, 0, 0], [1.0, 3.0])
    assert all(isinstance(s.as_json()["reason"], str) for s in skipped)


def test_corrupt_and_truncated_files_do_not_raise(tmp_path):
    run = write_synthetic_run(tmp_path, "good", steps=range(50))
    (event,) = glob.glob(os.path.join(run.path, "events.out.tfevents*"))
    blob = open(event, "rb").read()
    os.makedirs(tmp_path / "trunc")
    with open(tmp_path / "trunc" / os.path.basename(event), "wb") as f:
        f.write(blob[: len(blob) * 2 // 3])
    os.makedirs(tmp_path / "flipped")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF  # one corrupt record in the middle
    with open(tmp_path / "flipped" / os.path.basename(event), "wb") as f:
        f.write(bytes(flipped))
    os.makedirs(tmp_path / "noise")
    with open(tmp_path / "noise" / "events.out.tfevents.0.x", "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    data, _ = _read(tmp_path)
    np.testing.assert_array_equal(data["good"].groups["float32"].stats, run.stats["float32"])
    t = data["trunc"].groups["float32"]
    assert 0 < len(t.steps) < 50  # what was written before the cut is there, exactly
    np.testing.assert_array_equal(t.stats, run.stats["float32"][t.steps])
    assert "noise" not in data


class _CountingProvider:
    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def list_tensors(self, *a, **k):
        return self.inner.list_tensors(*a, **k)

    def read_tensors(self, *a, **k):
        self.reads += 1
        return self.inner.read_tensors(*a, **k)


def test_cache_rereads_only_changed_runs(tmp_path):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    write_synthetic_run(tmp_path, "a", steps=range(5))
    write_synthetic_run(tmp_path, "b", steps=range(5))
    mux = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    prov = _CountingProvider(data_provider.MultiplexerDataProvider(mux, str(tmp_path)))
    r = reader.Reader(prov)
    first, _ = r.read_all()
    assert prov.reads == 2
    again, _ = r.read_all()
    assert prov.reads == 2 and again["a"] is first["a"]
    write_synthetic_run(tmp_path, "c", steps=range(3))
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    third, _ = r.read_all()
    assert prov.reads == 3 and third["b"] is first["b"]
    np.testing.assert_array_equal(third["c"].groups["float32"].steps, range(3))
    assert r.run_data("nope") is None and r.runs() == ["a", "b", "c"]


def test_long_rows_cover_every_value(tmp_path):
    run = write_synthetic_run(tmp_path, "r", steps=range(4), groups=GROUPS)
    d = _read(tmp_path)[0]["r"]
    rows = list(reader.long_rows(d))
    n_rows = sum(len(r) for r in run.rows.values())
    assert len(rows) == 4 * (n_rows * len(run.columns) + len(metadata.STEP_METRICS))
    assert rows[0] == ("r", 0, "float32", "*", "count", run.stats["float32"][0, 0, 0])
    assert rows[-1][2:5] == ("_step", "*", "nonfinite_applied")
