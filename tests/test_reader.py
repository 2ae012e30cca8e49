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
    """Records `(run, tags, downsample)` of every `read_tensors` call."""

    def __init__(self, inner, fail_over_bytes: int | None = None):
        self.inner, self.calls = inner, []
        self.fail_over_bytes = fail_over_bytes

    def list_tensors(self, *a, **k):
        return self.inner.list_tensors(*a, **k)

    def read_tensors(self, *a, **k):
        rtf = k["run_tag_filter"]
        self.calls.append((tuple(rtf.runs), tuple(rtf.tags), k["downsample"]))
        out = self.inner.read_tensors(*a, **k)
        if self.fail_over_bytes is not None:  # like gRPC's message size limit
            size = sum(np.asarray(d.numpy).nbytes for tags in out.values()
                       for data in tags.values() for d in data)
            if size > self.fail_over_bytes:
                raise RuntimeError(f"RESOURCE_EXHAUSTED: {size} > {self.fail_over_bytes}")
        return out

    def runs_read(self, since: int = 0) -> list[str]:
        return sorted({run for runs, _, _ in self.calls[since:] for run in runs})


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
    assert prov.runs_read() == ["a", "b"]
    n = len(prov.calls)
    again, _ = r.read_all()
    assert len(prov.calls) == n and again["a"] is first["a"]
    write_synthetic_run(tmp_path, "c", steps=range(3))
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    third, _ = r.read_all()
    assert prov.runs_read(n) == ["c"] and third["b"] is first["b"]
    assert third["c"].version > max(first["a"].version, first["b"].version)
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


def _wide_run(tmp_path, n_steps=300, layers=20, hist_width=30):
    names = tuple(f"d{i}/kernel" for i in range(layers))
    run = write_synthetic_run(tmp_path, "wide", steps=range(n_steps), groups={"float32": names},
                              hist_width=hist_width)
    prov = reader.logdir_provider(str(tmp_path))
    return run, prov


def test_reads_stay_within_the_byte_budget(tmp_path):
    # A provider that fails oversize reads, like the Rust data server behind gRPC's
    # 256 MiB message limit: one unbounded read of the run would fail and serve nothing.
    run, inner = _wide_run(tmp_path)
    rows, cols = len(run.rows["float32"]), len(run.columns)
    budget = 40 * (8 * rows * cols + 64)  # 40 steps of the stats tag
    prov = _CountingProvider(inner, fail_over_bytes=budget)
    r = reader.Reader(prov, read_budget=budget)
    data, skipped = r.read_all()
    assert skipped == []
    d = data["wide"]
    g = d.groups["float32"]
    assert 1 < len(g.steps) <= 40 and g.steps[-1] == 299  # the latest step is always kept
    np.testing.assert_array_equal(g.stats, run.stats["float32"][g.steps])
    assert 1 < len(g.hist_steps) < 300 and g.hist_steps[-1] == 299
    assert len(d.step_steps) == len(g.steps)  # stats and step tag share one count
    np.testing.assert_array_equal(d.step_steps, g.steps)
    assert set(d.capped) == {metadata.stats_tag("float32"), metadata.hist_tag("float32"),
                             metadata.STEP_TAG}
    assert d.budget_bytes == budget and d.last_logged == 299
    assert all(len(tags) == 1 for _, tags, _ in prov.calls)  # one tag per call
    # every call asked for no more points than fit the budget for its tag
    stats_calls = [c for c in prov.calls if c[1] == (metadata.stats_tag("float32"),)]
    assert stats_calls and all(c[2] * 8 * rows * cols <= budget for c in stats_calls)


def test_a_read_that_fails_anyway_is_retried_with_fewer_points(tmp_path):
    # The budget is far above what the provider accepts (a tensor wider than
    # estimated): each failing read is retried with a quarter of the points.
    run, inner = _wide_run(tmp_path)
    prov = _CountingProvider(inner, fail_over_bytes=100_000)
    data, skipped = reader.Reader(prov, read_budget=1 << 40).read_all()
    assert skipped == []
    g = data["wide"].groups["float32"]
    assert 1 < len(g.steps) < 300 and g.steps[-1] == 299
    assert metadata.stats_tag("float32") in data["wide"].capped
    prov = _CountingProvider(inner, fail_over_bytes=10)  # nothing fits: skipped, not raised
    data, skipped = reader.Reader(prov).read_all()
    assert "wide" not in data and {s.tag for s in skipped} >= {metadata.stats_tag("float32")}
    assert all("RESOURCE_EXHAUSTED" in s.reason for s in skipped)


def test_small_runs_are_not_capped(tmp_path):
    run, prov = _wide_run(tmp_path, n_steps=50, layers=2, hist_width=3)
    data, skipped = reader.Reader(prov).read_all()
    assert skipped == [] and data["wide"].capped == {}
    assert len(data["wide"].groups["float32"].steps) == 50


def test_read_budget_env_var(monkeypatch):
    monkeypatch.setenv(reader.READ_BUDGET_ENV, "2.5")
    assert reader.read_budget_bytes() == int(2.5 * (1 << 20))
    monkeypatch.setenv(reader.READ_BUDGET_ENV, "lots")
    assert reader.read_budget_bytes() == reader.READ_BUDGET_BYTES
    monkeypatch.delenv(reader.READ_BUDGET_ENV)
    assert reader.read_budget_bytes() == reader.READ_BUDGET_BYTES
