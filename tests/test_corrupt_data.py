"""Damaged data next to a good run: the good run is served exactly, the rest is reported.

The logdir holds a good run (plus a random-bytes file named like an event file
in its own directory), a run whose event file is cut in the middle of a
record, a directory with only random bytes, a run written with a future
`schema_version` and a run whose metadata is not JSON. The plugin (in-process
and in a real `tensorboard` process) and `tb-gradstats report` must keep
serving the good data and name every skipped file or tag with its reason.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tb_gradstats import metadata
from tests.fixtures import plugin_client, write_synthetic_run
from tests.test_tensorboard_e2e import _free_port, _tensorboard_binary

PREFIX = "/data/plugin/gradient_health"
GOOD_STEPS = list(range(0, 50, 5))
TRUNC_STEPS = list(range(20))
RANDOM_NAME = "events.out.tfevents.9999999999.host.1.000000.gradient_health"
NOISE_NAME = "events.out.tfevents.1700000000.host.1.000000.gradient_health"


def _records(path: str) -> int:
    """Complete records in a TFRecord file, by plain framing (length + data + 2 CRCs)."""
    with open(path, "rb") as f:
        data = f.read()
    n, offset = 0, 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        if offset + 12 + length + 4 > len(data):
            break
        offset += 12 + length + 4
        n += 1
    return n


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corrupt")
    good = write_synthetic_run(d, "good", steps=GOOD_STEPS)
    trunc = write_synthetic_run(d, "truncated", steps=TRUNC_STEPS)
    (path,) = glob.glob(os.path.join(trunc.path, "events*"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) * 6 // 10)
    kept = _records(path) - 1  # record 0 is the file_version event
    assert 0 < kept < len(TRUNC_STEPS)
    rng = np.random.default_rng(7)
    with open(os.path.join(good.path, RANDOM_NAME), "wb") as f:
        f.write(rng.bytes(5000))
    os.makedirs(os.path.join(d, "noise"))
    with open(os.path.join(d, "noise", NOISE_NAME), "wb") as f:
        f.write(rng.bytes(5000))
    _write_with_metadata(d, "future", lambda md: _set_version(md, 99))
    _write_with_metadata(d, "garbage_json", lambda md: _set_content(md, b'{"schema_version":1,['))
    old = time.time() - 3600  # not a write in progress
    for f in glob.glob(os.path.join(d, "*", "*")):
        os.utime(f, (old, old))
    return {"dir": str(d), "good": good, "trunc": trunc, "kept": kept,
            "trunc_file": os.path.basename(path)}


def _set_version(md, version):
    content = json.loads(md.plugin_data.content)
    content["schema_version"] = version
    md.plugin_data.content = json.dumps(content).encode()
    return md


def _set_content(md, content: bytes):
    md.plugin_data.content = content
    return md


def _write_with_metadata(logdir, run, edit):
    original = metadata.create_summary_metadata
    metadata.create_summary_metadata = lambda content: edit(original(content))
    try:
        write_synthetic_run(logdir, run, steps=range(5))
    finally:
        metadata.create_summary_metadata = original


def _check_good_and_trunc(get_json, env):
    runs = get_json("/runs")
    by_run = {r["run"]: r for r in runs["runs"]}
    assert set(by_run) == {"good", "truncated"}
    assert by_run["good"]["steps"] == {"first": 0, "last": 45, "count": len(GOOD_STEPS)}
    kept = env["kept"]
    assert by_run["truncated"]["steps"] == {"first": 0, "last": kept - 1, "count": kept}
    col = env["good"].columns.index("l2_norm")
    s = get_json("/series?run=good&run=truncated&metric=l2_norm&layer=dense/kernel")
    good, trunc = s["series"]
    assert good["steps"] == GOOD_STEPS
    assert good["values"] == env["good"].stats["float32"][:, 1, col].tolist()
    assert trunc["steps"] == TRUNC_STEPS[:kept]
    assert trunc["values"] == env["trunc"].stats["float32"][:kept, 1, col].tolist()
    h = get_json("/histogram?run=good&layer=dense/bias")
    assert h["counts"] == env["good"].hist["float32"][-1, 2].tolist()
    return runs["skipped"]


def _check_skipped(skipped, env):
    reasons = {(s["run"], s["tag"]): s["reason"] for s in skipped}
    tags = [metadata.stats_tag("float32"), metadata.hist_tag("float32"), metadata.STEP_TAG]
    for tag in tags:
        assert "schema_version 99 is newer" in reasons.pop(("future", tag))
        assert "unreadable metadata" in reasons.pop(("garbage_json", tag))
    assert "not a TFRecord event file" in reasons.pop(("good", RANDOM_NAME))
    assert "not a TFRecord event file" in reasons.pop(("noise", NOISE_NAME))
    assert "incomplete record" in reasons.pop(("truncated", env["trunc_file"]))
    assert reasons == {}


def test_plugin_serves_good_data_and_reports_the_rest(logdir):
    client, _ = plugin_client(logdir["dir"])

    def get_json(url):
        resp = client.get(PREFIX + url)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return json.loads(resp.get_data())

    _check_skipped(_check_good_and_trunc(get_json, logdir), logdir)
    alerts = get_json("/alerts")
    assert alerts["alerts"] == []
    assert {s["run"] for s in alerts["skipped"]} == {
        "future", "garbage_json", "good", "noise", "truncated"}
    assert {s["run"] for s in get_json("/alerts?run=good")["skipped"]} == {"good"}
    overview = get_json("/overview")
    assert [r["run"] for r in overview["runs"]] == ["good", "truncated"]


def test_real_tensorboard_serves_good_data_and_reports_the_rest(logdir):
    port = _free_port()
    cmd = [_tensorboard_binary(), "--logdir", logdir["dir"], "--host", "127.0.0.1", "--port",
           str(port), "--load_fast=false", "--reload_interval", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    base = f"http://127.0.0.1:{port}{PREFIX}"

    def get_json(url):
        with urllib.request.urlopen(base + url, timeout=30) as resp:
            return json.loads(resp.read())

    try:
        deadline, last = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            try:
                last = get_json("/runs")
                if len(last["runs"]) == 2 and len(last["skipped"]) == 9:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"TensorBoard did not load the logdir; last /runs: {last}")
        _check_skipped(_check_good_and_trunc(get_json, logdir), logdir)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert b"Traceback" not in out, out.decode(errors="replace")[-3000:]


def test_cli_report_names_skipped_data_without_traceback(logdir):
    exe = os.path.join(os.path.dirname(sys.executable), "tb-gradstats")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tb_gradstats.cli"]
    out = subprocess.run(cmd + ["report", logdir["dir"]], capture_output=True, text=True,
                         timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, (out.stdout, out.stderr)  # healthy runs, nothing failing
    lines = out.stdout.splitlines()
    assert "good: 0 error(s), 0 warning(s), 0 info" in lines
    skipped = [line for line in lines if line.startswith("skipped ")]
    assert len(skipped) == 9, lines
    assert any(line.startswith(f"skipped noise {NOISE_NAME}: not a TFRecord") for line in skipped)
    assert any(line.startswith(f"skipped truncated {logdir['trunc_file']}: ends in an incomplete")
               for line in skipped)
    assert any(line.startswith("skipped future gradient_health/step: schema_version 99")
               for line in skipped)
    as_json = subprocess.run(cmd + ["report", logdir["dir"], "--json"], capture_output=True,
                             text=True, timeout=120)
    assert "Traceback" not in as_json.stderr
    _check_skipped(json.loads(as_json.stdout)["skipped"], logdir)


def test_scanner_tolerates_a_record_being_written(tmp_path):
    from tb_gradstats import reader

    run = write_synthetic_run(tmp_path, "live", steps=range(3))
    (path,) = glob.glob(os.path.join(run.path, "events*"))
    with open(path, "rb") as f:
        whole = f.read()
    with open(path, "wb") as f:
        f.write(whole[:-7])  # the last record half written, just now
    scanner = reader.EventFileScanner(str(tmp_path))  # default grace: 30 s
    assert scanner.scan() == []
    strict = reader.EventFileScanner(str(tmp_path), grace_s=0)
    (problem,) = strict.scan()
    assert (problem.run, problem.tag) == ("live", os.path.basename(path))
    with open(path, "ab") as f:
        f.write(whole[-7:])  # the writer completes the record: nothing to report
    assert strict.scan() == []
    assert reader.EventFileScanner("gs://bucket/logs").scan() == []
