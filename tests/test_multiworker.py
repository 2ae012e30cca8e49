"""MultiWorkerMirroredStrategy with two local workers on loopback."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np

from tb_gradstats import metadata
from tests.oracle import expected_metrics, read_events

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_one_writer_whole_global_batch(tmp_path):
    logdir = str(tmp_path / "run")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multiworker_worker.py"), logdir,
             str(tmp_path / f"result{i}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    results = [json.load(open(tmp_path / f"result{i}.json")) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2]

    files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    assert len(files) == 1, files  # exactly one worker (the chief) writes
    events = read_events(logdir)
    logged = events[metadata.stats_tag("float32")]
    assert [s for s, _, _ in logged] == [0, 1, 2]  # STEPS in multiworker_worker.py
    union = np.concatenate([np.array(r["c"], np.float32) for r in results])
    want = expected_metrics(union)
    for _, arr, content in logged:
        cols = content["columns"]
        for name in ("count", "min", "max", "abs_max", "abs_min_nonzero", "zero_count"):
            assert arr[1, cols.index(name)] == want[name], name
        for name in ("mean", "variance", "l2_norm"):
            np.testing.assert_allclose(arr[1, cols.index(name)], want[name], rtol=1e-6)
    step = events[metadata.STEP_TAG][0][1]
    assert step[list(metadata.STEP_METRICS).index("replicas")] == 2
