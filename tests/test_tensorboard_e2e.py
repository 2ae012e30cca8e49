"""A real `tensorboard` process, no sampling flags: all 1500 logged steps come back.

TensorBoard keeps 10 (Python) or 100 (Rust) points per tag of an unknown
plugin unless `--samples_per_plugin` says otherwise; our loader's `fix_flags`
sets the default. This test fails if that (or the entry point) breaks.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.fixtures import write_synthetic_run

N_STEPS = 1500
TIMEOUT_S = 90


def _stats(i, step, group, n_rows, columns):
    # Known values: every step distinct, so a sampled-away step is noticed.
    out = np.zeros((n_rows, len(columns)))
    out[:, columns.index("count")] = 10
    out[:, columns.index("l2_norm")] = step + np.arange(n_rows) / 4
    out[:, columns.index("max")] = -step
    return out


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e")
    write_synthetic_run(path, "long", steps=range(N_STEPS), groups={"float32": ("d/kernel",)},
                        stats_fn=_stats, hist_width=2,
                        step_fn=lambda i, step: {"loss_scale": 2.0 ** (step % 16)})
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensorboard_binary() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(path):
        pytest.skip("no tensorboard executable next to this Python")
    return path


@contextlib.contextmanager
def _tensorboard(logdir: str, load_fast: str, env_extra: dict | None = None):
    port = _free_port()
    cmd = [_tensorboard_binary(), "--logdir", logdir, "--host", "127.0.0.1", "--port",
           str(port), f"--load_fast={load_fast}", "--reload_interval", "1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_for_all_steps(base: str) -> dict:
    """Polls /runs until the run shows every step (data loads in the background)."""
    deadline, last = time.monotonic() + TIMEOUT_S, None
    while time.monotonic() < deadline:
        try:
            last = _get(base + "/data/plugin/gradient_health/runs")
            runs = {r["run"]: r for r in last["runs"]}
            if runs.get("long", {}).get("steps", {}).get("count") == N_STEPS:
                return last
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"not all {N_STEPS} steps within {TIMEOUT_S}s; last /runs: {str(last)[:500]}")


@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_all_steps_survive_default_sampling(logdir, load_fast):
    if load_fast == "true":
        pytest.importorskip("tensorboard_data_server")
    with _tensorboard(logdir, load_fast) as base:
        _wait_for_all_steps(base)
        plugins = _get(base + "/data/plugins_listing")
        assert plugins["gradient_health"]["tab_name"] == "Gradient Health"
        assert plugins["gradient_health"]["enabled"] is True
        api = base + "/data/plugin/gradient_health"
        s = _get(api + "/series?run=long&metric=l2_norm&layer=d/kernel&max_points=20000")
        (series,) = s["series"]
        assert series["steps"] == list(range(N_STEPS))
        assert series["values"] == [step + 0.25 for step in range(N_STEPS)]
        g = _get(api + "/series?run=long&metric=max&layer=*&group=float32&max_points=20000")
        assert g["series"][0]["values"] == [float(-step) for step in range(N_STEPS)]
        st = _get(api + "/step_series?run=long&metric=loss_scale&max_points=20000")
        assert st["series"][0]["values"] == [2.0 ** (step % 16) for step in range(N_STEPS)]
        h = _get(api + "/histogram?run=long&layer=d/kernel")
        assert h["steps"] == list(range(N_STEPS)) and h["step"] == N_STEPS - 1


@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_read_budget_serves_a_sample_and_says_so(logdir, load_fast):
    # A budget far below the run's size stands in for gRPC's 256 MiB limit: the
    # plugin must serve a sample of the steps (latest kept) and say so, not skip the run.
    if load_fast == "true":
        pytest.importorskip("tensorboard_data_server")
    from tb_gradstats import metadata, reader

    values = 2 * len(metadata.metric_names(("float16", "bfloat16")))  # rows x columns
    points = 200
    budget_mb = points * (8 * values + 64) / (1 << 20)
    with _tensorboard(logdir, load_fast, {reader.READ_BUDGET_ENV: repr(budget_mb)}) as base:
        api = base + "/data/plugin/gradient_health"
        deadline, run = time.monotonic() + TIMEOUT_S, {}
        while time.monotonic() < deadline:  # until the whole run is loaded
            try:
                runs = {r["run"]: r for r in _get(api + "/runs")["runs"]}
                run = runs.get("long", {})
                if run.get("last_logged") == N_STEPS - 1 and run["steps"]["last"] == N_STEPS - 1:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        assert run.get("capped") is True, run
        assert 1 < run["steps"]["count"] <= points
        assert reader.READ_BUDGET_ENV in run["note"]
        s = _get(api + "/series?run=long&metric=l2_norm&layer=d/kernel&max_points=20000")
        (series,) = s["series"]
        steps = series["steps"]
        assert len(steps) == run["steps"]["count"] and steps[-1] == N_STEPS - 1
        assert series["values"] == [step + 0.25 for step in steps]  # sampled, not altered
        st = _get(api + "/step_series?run=long&metric=loss_scale&max_points=20000")
        assert st["series"][0]["steps"] == steps  # stats and step tag share the sample
