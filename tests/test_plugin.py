"""Every route of API.md over a real multiplexer + data provider, and every error path."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tb_gradstats import metadata, plugin
from tests.fixtures import plugin_client, write_synthetic_run

PREFIX = "/data/plugin/gradient_health"
LAYERS = {"float32": ("dense/kernel", "dense/bias"), "float32@float16": ("out/kernel",)}
N = 60


def _stats_with_spike(i, step, group, n_rows, columns):
    # Distinct, exactly known values; one NaN and one spike for downsampling checks.
    out = np.zeros((n_rows, len(columns)))
    out[:, columns.index("count")] = 100
    out[:, columns.index("zero_fraction")] = 0.02
    out[:, columns.index("update_ratio")] = 1e-3  # healthy: the weights move
    out[:, columns.index("l2_norm")] = 1.0 + step / 1000 + np.arange(n_rows) / 10
    out[:, columns.index("max")] = float(step)
    if step == 50:
        out[1, columns.index("max")] = 1e6
    if step == 70:
        out[1, columns.index("max")] = np.nan
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    a = write_synthetic_run(logdir, "a", steps=range(0, 2 * N, 2), groups=LAYERS,
                            policy="mixed_float16", stats_fn=_stats_with_spike)
    b = write_synthetic_run(logdir, "b", steps=range(0, 2 * N, 4), groups={"float32": (
        "dense/kernel", "other/kernel")})
    # A tag from a future schema: must be skipped and reported, not raised.
    future = os.path.join(logdir, "future")
    _write_future_tag(future)
    client, p = plugin_client(logdir)
    return {"client": client, "a": a, "b": b, "plugin": p}


def _write_future_tag(path):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    md = metadata.create_summary_metadata({"kind": "stats"})
    md.plugin_data.content = json.dumps({"schema_version": 99, "kind": "stats"}).encode()
    value = summary_pb2.Summary.Value(tag="gradient_health/stats/float32", metadata=md,
                                      tensor=tensor_util.make_tensor_proto(np.zeros((1, 1))))
    w = EventFileWriter(path)
    w.add_event(event_pb2.Event(step=0, summary=summary_pb2.Summary(value=[value])))
    w.close()


def get(env, route, **params):
    resp = env["client"].get(PREFIX + route, query_string=params)
    return resp


def get_json(env, route, **params):
    resp = get(env, route, **params)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return json.loads(resp.get_data())


def _nan(values):
    return np.array([np.nan if v == "NaN" else v for v in values], dtype=float)


def test_runs_lists_groups_and_skips_future_schema(env):
    out = get_json(env, "/runs")
    runs = {r["run"]: r for r in out["runs"]}
    assert set(runs) == {"a", "b"}
    a = runs["a"]
    assert a["policy"] == "mixed_float16"
    assert a["steps"] == {"first": 0, "last": 2 * (N - 1), "count": N}
    assert [g["group"] for g in a["groups"]] == list(LAYERS)
    assert a["groups"][0]["rows"] == ["*", "dense/kernel", "dense/bias"]
    assert a["groups"][0]["columns"] == env["a"].columns
    (skip,) = out["skipped"]
    assert skip["run"] == "future" and "newer" in skip["reason"]


def test_formats(env):
    names = [f["name"] for f in get_json(env, "/formats")["formats"]]
    assert names[:3] == ["float32", "float16", "bfloat16"]


def test_series_all_points_equal_fixture(env):
    out = get_json(env, "/series", run=["a", "b"], metric="l2_norm", layer="dense/kernel")
    a, b = out["series"]
    col = env["a"].columns.index("l2_norm")
    assert a["steps"] == env["a"].steps.tolist()
    np.testing.assert_array_equal(a["values"], env["a"].stats["float32"][:, 1, col])
    assert b["run"] == "b" and b["steps"] == env["b"].steps.tolist()


def test_series_group_row(env):
    out = get_json(env, "/series", run="a", metric="l2_norm", layer="*", group="float32@float16")
    (s,) = out["series"]
    col = env["a"].columns.index("l2_norm")
    np.testing.assert_array_equal(s["values"], env["a"].stats["float32@float16"][:, 0, col])


def test_series_downsampling_keeps_spike_and_nan(env):
    out = get_json(env, "/series", run="a", metric="max", layer="dense/kernel", max_points=10)
    (s,) = out["series"]
    assert len(s["steps"]) <= 10
    assert 1e6 in s["values"] and "NaN" in s["values"]
    assert 50 in s["steps"] and 70 in s["steps"]


def test_step_series(env):
    out = get_json(env, "/step_series", run="a", metric="loss_scale")
    (s,) = out["series"]
    assert s["steps"] == env["a"].steps.tolist()
    np.testing.assert_array_equal(s["values"], env["a"].step_values[:, 0])


def test_heatmap_aggregates_by_max_and_bands_rows(env):
    out = get_json(env, "/heatmap", run="a", group="float32", metric="max", max_steps=6,
                   max_rows=2)
    assert out["rows"] == ["*", "dense/kernel … dense/bias"]
    assert out["row_index"] == [0, 1]
    assert len(out["steps"]) == 6 and out["aggregate"] == "max"
    assert out["step_ranges"][0] == [0, 18] and out["step_ranges"][-1][1] == 2 * (N - 1)
    band = out["values"][1]
    assert 1e6 in band and "NaN" in band  # spike at step 50, NaN at step 70
    assert out["values"][0][0] == 18.0  # max of the column of steps 0..18


def test_heatmap_full_resolution_equals_fixture(env):
    out = get_json(env, "/heatmap", run="a", group="float32", metric="l2_norm")
    col = env["a"].columns.index("l2_norm")
    expected = env["a"].stats["float32"][:, :, col].T
    # the JSON carries 4 significant digits (plenty for a colour scale and the tooltip)
    np.testing.assert_allclose(np.array(out["values"]), expected, rtol=5e-4)
    np.testing.assert_array_equal(np.array(out["values"]),
                                  plugin.round_significant(expected, plugin.HEATMAP_DIGITS))
    # the CSV export of the same view stays exact
    rows = _csv(env, view="heatmap", run="a", group="float32", metric="l2_norm")
    assert [float(r[5]) for r in rows] == expected.ravel().tolist()


def test_heatmap_json_is_rounded_and_bounded(env, monkeypatch):
    out = get_json(env, "/heatmap", run="a", group="float32", metric="max", max_steps=6,
                   max_rows=2)
    assert "NaN" in out["values"][1]  # non-finite cells keep their label
    raw = get(env, "/heatmap", run="a", group="float32", metric="l2_norm").get_data()
    assert b", " not in raw and b'"values":[[' in raw  # compact JSON
    assert all(len(repr(v)) <= 12 for row in json.loads(raw)["values"] for v in row)
    monkeypatch.setattr(plugin, "MAX_HEATMAP_CELLS", 3 * 10)  # 3 rows: at most 10 columns
    out = get_json(env, "/heatmap", run="a", group="float32", metric="max", max_steps=500)
    assert len(out["rows"]) == 3 and len(out["steps"]) == 10
    assert out["step_ranges"][0][0] == 0 and out["step_ranges"][-1][1] == 2 * (N - 1)


def test_round_significant():
    x = np.array([0.024570558817, 123456.0, -1.23456e-5, 0.0, np.nan, np.inf, -np.inf,
                  5e-324, 1.7976931348623157e308, 99995.0])
    y = plugin.round_significant(x, 4)
    assert y[:4].tolist() == [0.02457, 123500.0, -1.235e-05, 0.0]
    assert np.isnan(y[4]) and y[5] == np.inf and y[6] == -np.inf
    assert y[7] == 5e-324 and y[8] == x[8] and y[9] == 1e5
    rng = np.random.default_rng(0)
    z = rng.lognormal(0, 8, 10_000) * rng.choice([-1, 1], 10_000)
    np.testing.assert_allclose(plugin.round_significant(z, 4), z, rtol=5e-4)


def test_histogram_latest_and_at_step(env):
    out = get_json(env, "/histogram", run="a", layer="dense/bias")
    assert out["step"] == 2 * (N - 1) and out["steps"] == env["a"].steps.tolist()
    np.testing.assert_array_equal(out["counts"], env["a"].hist["float32"][-1, 2])
    assert out["first_exponent"] == env["a"].hist_first_exponent["float32"][-1]
    assert out["count"] == 100
    out = get_json(env, "/histogram", run="a", layer="*", group="float32", step=7)
    assert out["step"] == 6  # nearest logged step <= 7
    np.testing.assert_array_equal(out["counts"], env["a"].hist["float32"][3, 0])


def test_compare_matches_layers_by_name(env):
    out = get_json(env, "/compare", run_a="a", run_b="b", metric="l2_norm")
    assert out["layers"] == ["dense/kernel"]
    assert out["step_a"] == out["step_b"] == 116  # latest common step
    col = env["a"].columns.index("l2_norm")
    assert out["a"] == [env["a"].stats["float32"][58, 1, col]]
    assert out["b"] == [env["b"].stats["float32"][29, 1, col]]
    out = get_json(env, "/compare", run_a="a", run_b="b", metric="l2_norm", step=10)
    assert (out["step_a"], out["step_b"]) == (10, 8)


def test_alerts_and_overview(env):
    out = get_json(env, "/alerts")
    nan_alerts = [a for a in out["alerts"] if a["rule"] == "non_finite"]
    assert nan_alerts == [] and out["skipped"][0]["run"] == "future"
    assert get_json(env, "/alerts", run="a", severity="error")["skipped"] == []
    ov = {r["run"]: r for r in get_json(env, "/overview")["runs"]}
    assert ov["a"]["alerts"] == {"error": 0, "warning": 0, "info": 0}
    assert ov["a"]["loss_scale"]["values"] == [1.0] * N
    col = env["a"].columns.index("l2_norm")
    expected = np.sqrt(env["a"].stats["float32"][:, 0, col] ** 2
                       + env["a"].stats["float32@float16"][:, 0, col] ** 2)
    np.testing.assert_allclose(ov["a"]["global_norm"]["values"], expected, rtol=1e-12)
    assert ov["a"]["skipped_steps"] == 0


def _csv(env, **params):
    resp = get(env, "/export.csv", **params)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"].startswith("text/csv")
    lines = resp.get_data(as_text=True).splitlines()
    assert lines[0] == "run,step,group,layer,metric,value"
    return [line.split(",") for line in lines[1:]]


def test_export_views(env):
    rows = _csv(env, view="series", run="a", metric="l2_norm", layer="dense/kernel")
    col = env["a"].columns.index("l2_norm")
    assert [float(r[5]) for r in rows] == env["a"].stats["float32"][:, 1, col].tolist()
    rows = _csv(env, view="all", run="b")
    n_b = env["b"]
    assert len(rows) == len(n_b.steps) * (3 * len(n_b.columns) + len(metadata.STEP_METRICS))
    rows = _csv(env, view="compare", run_a="a", run_b="b", metric="l2_norm")
    assert [(r[0], r[2], r[3]) for r in rows] == [("a", "float32", "dense/kernel"),
                                                  ("b", "float32", "dense/kernel")]
    rows = _csv(env, view="heatmap", run="a", group="float32", metric="max", max_steps=3)
    assert len(rows) == 3 * 3


@pytest.mark.parametrize("route,params", [
    ("/series", {"metric": "l2_norm", "layer": "dense/kernel"}),  # no run
    ("/series", {"run": "a", "layer": "dense/kernel"}),  # no metric
    ("/series", {"run": "a", "metric": "bogus", "layer": "dense/kernel"}),
    ("/series", {"run": "a", "metric": "l2_norm"}),  # no layer
    ("/series", {"run": "a", "metric": "l2_norm", "layer": "*"}),  # * without group
    ("/series", {"run": "a", "metric": "l2_norm", "layer": "dense/kernel", "max_points": "x"}),
    ("/series", {"run": "a", "metric": "l2_norm", "layer": "dense/kernel", "max_points": "1"}),
    ("/series", {"run": "a", "metric": "l2_norm", "layer": "dense/kernel",
                 "max_points": "20001"}),
    ("/step_series", {"run": "a", "metric": "l2_norm"}),
    ("/heatmap", {"run": "a", "metric": "max"}),
    ("/heatmap", {"run": "a", "group": "float32", "metric": "max", "max_steps": "0"}),
    ("/heatmap", {"run": "a", "group": "float32", "metric": "max", "max_rows": "1"}),
    ("/histogram", {"run": "a", "layer": "dense/bias", "step": "-1"}),
    ("/compare", {"run_a": "a", "metric": "l2_norm"}),
    ("/alerts", {"severity": "fatal"}),
    ("/export.csv", {}),
    ("/export.csv", {"view": "pie"}),
    ("/export.csv", {"view": "series", "run": "a"}),
])
def test_bad_parameters_are_400(env, route, params):
    resp = get(env, route, **params)
    assert resp.status_code == 400, resp.get_data(as_text=True)


@pytest.mark.parametrize("route,params", [
    ("/series", {"run": "nope", "metric": "l2_norm", "layer": "dense/kernel"}),
    ("/series", {"run": "a", "metric": "l2_norm", "layer": "nope/kernel"}),
    ("/series", {"run": "a", "metric": "l2_norm", "layer": "*", "group": "float64"}),
    ("/series", {"run": "a", "metric": "underflow_fraction/float8_e5m2",
                 "layer": "dense/kernel"}),  # known metric, not logged
    ("/series", {"run": ["a", "future"], "metric": "l2_norm", "layer": "dense/kernel"}),
    ("/step_series", {"run": "nope", "metric": "loss_scale"}),
    ("/heatmap", {"run": "a", "group": "float64", "metric": "max"}),
    ("/histogram", {"run": "a", "layer": "nope"}),
    ("/histogram", {"run": "b", "layer": "dense/kernel", "step": "0", "group": "float16"}),
    ("/compare", {"run_a": "a", "run_b": "nope", "metric": "l2_norm"}),
    ("/alerts", {"run": "nope"}),
    ("/export.csv", {"view": "all", "run": "nope"}),
])
def test_unknown_names_are_404(env, route, params):
    resp = get(env, route, **params)
    assert resp.status_code == 404, resp.get_data(as_text=True)


def test_static_allowlist(env):
    frontend = plugin.frontend_dir()
    assert frontend is not None
    for name in ("index.js", "api.js", "views/overview.js"):
        if not os.path.exists(os.path.join(frontend, name)):
            continue
        resp = get(env, "/" + name)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert resp.headers.get("X-Content-Type-Options") == "nosniff"
        with open(os.path.join(frontend, name), "rb") as f:
            assert resp.get_data() == f.read()
    for path in ("/views/../index.js", "/views/..%2Findex.js", "/views/%2e%2e%2fapi.js",
                 "/views/..%2F..%2Fsetup.py", "/views/nope.js", "/views/x.py", "/setup.py",
                 "/views/", "/views/.hidden.js", "/../../setup.py"):
        resp = env["client"].get(PREFIX + path)
        assert resp.status_code == 404, path


def test_frontend_metadata_and_is_active(env):
    md = env["plugin"].frontend_metadata()
    assert (md.es_module_path, md.tab_name) == ("/index.js", "Gradient Health")
    assert env["plugin"].is_active()


def test_fix_flags_sets_default_only_when_absent():
    flags = argparse.Namespace(samples_per_plugin={})
    plugin.GradientHealthLoader().fix_flags(flags)
    assert flags.samples_per_plugin == {"gradient_health": plugin.DEFAULT_SAMPLES}
    flags = argparse.Namespace(samples_per_plugin={"gradient_health": 0, "scalars": 7})
    plugin.GradientHealthLoader().fix_flags(flags)
    assert flags.samples_per_plugin == {"gradient_health": 0, "scalars": 7}


def test_downsample_minmax_bounds():
    steps = np.arange(1000)
    values = np.sin(steps / 10.0)
    values[[100, 101, 500]] = [np.nan, np.inf, -np.inf]
    for max_points in (2, 5, 10, 999):
        s, v = plugin.downsample_minmax(steps, values, max_points)
        assert len(s) <= max(max_points, 5)
        assert np.all(np.diff(s) > 0)
    s, v = plugin.downsample_minmax(steps, values, 100)
    assert np.isnan(v).any() and np.isposinf(v).any() and np.isneginf(v).any()
    assert v[np.isfinite(v)].max() == values[np.isfinite(values)].max()


def test_plugin_import_does_not_import_tensorflow():
    code = ("import sys, tb_gradstats.plugin, tb_gradstats.cli; "
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "False"


def test_garbage_parameters_never_500(env):
    garbage = ["", "*", "a", "b", "future", "-1", "0", "1e9", "NaN", "l2_norm", "count",
               "float32", "dense/kernel", "../x", "%00", "\u00e9", "99999999999999999999"]
    names = ["run", "metric", "layer", "group", "max_points", "max_steps", "max_rows", "step",
             "run_a", "run_b", "severity", "view"]
    rng = np.random.default_rng(0)
    routes = ["/runs", "/formats", "/series", "/step_series", "/heatmap", "/histogram",
              "/compare", "/alerts", "/overview", "/export.csv"]
    for _ in range(400):
        route = routes[rng.integers(len(routes))]
        params = {n: garbage[rng.integers(len(garbage))] for n in names if rng.random() < 0.6}
        resp = get(env, route, **params)
        assert resp.status_code in (200, 400, 404), (route, params, resp.get_data()[:300])


def _live_plugin(logdir, monkeypatch):
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test

    monkeypatch.setattr(plugin, "LIST_TTL_S", 0.0)
    mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    ctx = base_plugin.TBContext(
        logdir=str(logdir), data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    client = werkzeug_test.Client(application.TensorBoardWSGI([plugin.GradientHealthLoader().load(
        ctx)]))
    return {"client": client, "mux": mux}


def test_alerts_are_evaluated_once_per_data_version(tmp_path, monkeypatch):
    write_synthetic_run(tmp_path, "r", steps=range(10))
    write_synthetic_run(tmp_path, "s", steps=range(10))
    live = _live_plugin(tmp_path, monkeypatch)
    calls = []
    evaluate = plugin.alerts_lib.evaluate
    monkeypatch.setattr(plugin.alerts_lib, "evaluate",
                        lambda data, *a, **k: calls.append(data.run) or evaluate(data, *a, **k))
    first = get_json(live, "/alerts")
    assert sorted(calls) == ["r", "s"]
    overview = get_json(live, "/overview")
    for _ in range(3):
        assert get_json(live, "/alerts") == first
        assert get_json(live, "/overview") == overview
        get_json(live, "/alerts", run="r", severity="error")
    assert sorted(calls) == ["r", "s"]  # /overview reuses the alerts of /alerts
    write_synthetic_run(tmp_path, "r", steps=range(10, 20))  # new data in run r only
    live["mux"].Reload()
    get_json(live, "/overview")
    get_json(live, "/alerts")
    assert sorted(calls) == ["r", "r", "s"]


def test_runs_say_when_fewer_steps_are_served_than_stored(tmp_path, monkeypatch):
    write_synthetic_run(tmp_path, "wide", steps=range(200),
                        groups={"float32": tuple(f"d{i}/kernel" for i in range(10))})
    write_synthetic_run(tmp_path, "small", steps=range(3), groups={"float32": ("d/kernel",)})
    n_values = 11 * len(metadata.metric_names(("float16", "bfloat16")))
    budget = 50 * (8 * n_values + 64)  # 50 steps of the wide run's stats tag
    monkeypatch.setenv("TB_GRADSTATS_READ_BUDGET_MB", str(budget / (1 << 20)))
    live = _live_plugin(tmp_path, monkeypatch)
    runs = {r["run"]: r for r in get_json(live, "/runs")["runs"]}
    wide, small = runs["wide"], runs["small"]
    assert 1 < wide["steps"]["count"] <= 50 and wide["steps"]["last"] == 199
    assert wide["capped"] is True and wide["last_logged"] == 199
    assert "TB_GRADSTATS_READ_BUDGET_MB" in wide["note"] and "sample" in wide["note"]
    assert small["steps"]["count"] == 3 and small["capped"] is False and small["note"] is None
