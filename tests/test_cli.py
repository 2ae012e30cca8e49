"""`tb-gradstats export` returns exactly what was written; `report` exit codes."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tb_gradstats import cli, metadata
from tests.fixtures import default_stats, write_synthetic_run

GROUPS = {"float32": ("a/kernel", "a/bias"), "bfloat16": ("b/kernel",)}


def _odd_values(i, step, group, n_rows, columns):
    out = default_stats(i, step, group, n_rows, columns)
    out[:, columns.index("mean")] = np.pi * 1e-30 * (step + 1)  # needs all 17 digits
    if step == 4:
        out[1, columns.index("max")] = np.inf
        out[1, columns.index("min")] = -np.inf
        out[1, columns.index("std")] = np.nan
    return out


def _run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_csv_round_trip(tmp_path, capsys):
    run = write_synthetic_run(tmp_path, "r1", steps=range(0, 30, 3), groups=GROUPS,
                              stats_fn=_odd_values)
    write_synthetic_run(tmp_path, "r2", steps=range(5))
    code, out, _ = _run_cli(capsys, "export", str(tmp_path), "--run", "r1")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["run", "step", "group", "layer", "metric", "value"]
    got = {(r[1], r[2], r[3], r[4]): float(r[5]) for r in rows[1:]}
    assert {r[0] for r in rows[1:]} == {"r1"}
    expected_count = 0
    for group, values in run.stats.items():
        layers = run.rows[group]
        for t, step in enumerate(run.steps):
            for r, layer in enumerate(layers):
                want = values[t, r]
                have = np.array([got[(str(step), group, layer, m)] for m in run.columns])
                np.testing.assert_array_equal(have, want)  # exact, NaN/Inf included
                expected_count += len(run.columns)
    for t, step in enumerate(run.steps):
        have = [got[(str(step), "_step", "*", m)] for m in metadata.STEP_METRICS]
        np.testing.assert_array_equal(have, run.step_values[t])
        expected_count += len(metadata.STEP_METRICS)
    assert len(rows) - 1 == expected_count == len(got)


def test_export_json_all_runs(tmp_path, capsys):
    a = write_synthetic_run(tmp_path, "a", steps=range(3))
    write_synthetic_run(tmp_path, "b", steps=range(2))
    code, out, _ = _run_cli(capsys, "export", str(tmp_path), "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert {r["run"] for r in records} == {"a", "b"}
    first = next(r for r in records if r["run"] == "a" and r["layer"] == "dense/bias"
                 and r["metric"] == "mean" and r["step"] == 2)
    assert first["value"] == a.stats["float32"][2, 2, a.columns.index("mean")]


def _nan_at(step_with_nan):
    def fn(i, step, group, n_rows, columns):
        out = default_stats(i, step, group, n_rows, columns)
        if step == step_with_nan:
            out[1, columns.index("nan_count")] = 2
        return out
    return fn


def _dead(i, step, group, n_rows, columns):
    out = default_stats(i, step, group, n_rows, columns)
    out[1, columns.index("zero_fraction")] = 1.0
    return out


def test_report_exit_codes(tmp_path, capsys):
    healthy = tmp_path / "healthy"
    write_synthetic_run(healthy, "ok", steps=range(30))
    assert _run_cli(capsys, "report", str(healthy))[0] == 0

    warn = tmp_path / "warn"
    write_synthetic_run(warn, "dead", steps=range(30), stats_fn=_dead)
    code, out, _ = _run_cli(capsys, "report", str(warn))
    assert code == 0 and "dead_layer" in out and "dense/kernel" in out
    assert _run_cli(capsys, "report", str(warn), "--fail-on", "warning")[0] == 1

    bad = tmp_path / "bad"
    write_synthetic_run(bad, "nan", steps=range(10), stats_fn=_nan_at(6))
    code, out, _ = _run_cli(capsys, "report", str(bad), "--json")
    assert code == 1
    (alert,) = json.loads(out)["alerts"]
    assert (alert["rule"], alert["first_step"], alert["value"]) == ("non_finite", 6, 2.0)
    assert _run_cli(capsys, "report", str(bad), "--fail-on", "never")[0] == 0


@pytest.mark.parametrize("make", ["missing", "empty", "unknown_run"])
def test_bad_logdir_is_exit_2_without_traceback(tmp_path, capsys, make):
    path = tmp_path / "logs"
    args = ["report", str(path)]
    if make == "empty":
        path.mkdir()
    if make == "unknown_run":
        write_synthetic_run(path, "a", steps=range(2))
        args += ["--run", "zzz"]
    code, out, err = _run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("tb-gradstats: ") and "Traceback" not in err


def test_corrupt_and_truncated_event_files_do_not_raise(tmp_path, capsys):
    good = write_synthetic_run(tmp_path, "good", steps=range(20))
    (event,) = glob.glob(os.path.join(good.path, "events.out.tfevents*"))
    data = open(event, "rb").read()
    os.makedirs(tmp_path / "truncated")
    with open(tmp_path / "truncated" / os.path.basename(event), "wb") as f:
        f.write(data[: len(data) // 2])
    os.makedirs(tmp_path / "garbage")
    with open(tmp_path / "garbage" / "events.out.tfevents.1.x", "wb") as f:
        f.write(os.urandom(5000))
    code, out, err = _run_cli(capsys, "export", str(tmp_path))
    assert code == 0 and "Traceback" not in err
    runs = {line.split(",")[0] for line in out.splitlines()[1:]}
    assert "good" in runs and "garbage" not in runs
    truncated_steps = {int(line.split(",")[1]) for line in out.splitlines()[1:]
                       if line.startswith("truncated,")}
    assert truncated_steps <= set(range(20)) and len(truncated_steps) >= 1


def test_console_path_keeps_tensorflow_out(tmp_path):
    write_synthetic_run(tmp_path, "a", steps=range(3))
    code = ("import sys; sys.argv = ['tb-gradstats', 'report', sys.argv[1]]; "
            "from tb_gradstats.cli import main; rc = main(); "
            "print(rc, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stderr
