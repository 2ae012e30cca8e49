"""A real TensorBoard reads a run while another process is still writing it.

A writer subprocess appends 300 steps with `GradientHealthWriter` (small sleeps
between steps) while the test polls `/series` of a `tensorboard` started with
`--reload_interval 1`. The served step count must grow while the writer runs,
every served step must carry exactly the values written for it (a half-written
record is never served), and in the end all 300 steps are there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.test_tensorboard_e2e import _tensorboard

N_STEPS = 300
SLEEP_S = 0.04  # per step: ~12 s of writing, many TensorBoard reloads
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERIES = "/data/plugin/gradient_health/series?run=live&metric=l2_norm&layer=d/kernel&max_points=20000"
STEP_SERIES = "/data/plugin/gradient_health/step_series?run=live&metric=loss_scale&max_points=20000"

# Runs in the writer process: every value is a known function of the step.
WRITER = f"""
import time
import numpy as np
from tests.fixtures import write_synthetic_run

def stats(i, step, group, n_rows, columns):
    time.sleep({SLEEP_S})
    out = np.zeros((n_rows, len(columns)))
    out[:, columns.index("count")] = 10
    out[:, columns.index("l2_norm")] = step * 1.5 + np.arange(n_rows) / 8
    return out

write_synthetic_run({{logdir!r}}, "live", steps=range({N_STEPS}), groups={{{{"float32": ("d/kernel",)}}}},
                    stats_fn=stats, hist_width=2,
                    step_fn=lambda i, step: {{{{"loss_scale": 2.0 ** (step % 16)}}}})
"""


def _expected_l2(step: int) -> float:
    return step * 1.5 + 1 / 8  # row 1 = d/kernel


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_up(base: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            _get(base + "/data/plugins_listing")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    pytest.fail("TensorBoard did not start")


def _served(base: str) -> tuple[list[int], list[float]] | None:
    try:
        out = _get(base + SERIES)
    except urllib.error.HTTPError as e:
        assert e.code == 404, (e.code, e.read()[:300])  # no data for the run yet
        return None
    (s,) = out["series"]
    return s["steps"], s["values"]


def _check_exact(steps: list[int], values: list[float]) -> None:
    # The provider keeps every step (5000-step default cap): the served steps are a
    # prefix of what was written, and each value is exactly the one written.
    assert steps == list(range(len(steps))), steps[:20]
    assert values == [_expected_l2(step) for step in steps]


@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_live_run_grows_and_is_never_partial(tmp_path, load_fast):
    if load_fast == "true":
        pytest.importorskip("tensorboard_data_server")
    logdir = str(tmp_path)
    with _tensorboard(logdir, load_fast) as base:
        _wait_up(base)
        writer = subprocess.Popen([sys.executable, "-c", WRITER.format(logdir=logdir)],
                                  cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
        counts, polls = [], 0
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                served = _served(base)
                polls += 1
                if served is not None:
                    _check_exact(*served)
                    counts.append(len(served[0]))
                    if writer.poll() is not None and counts[-1] == N_STEPS:
                        break
                time.sleep(0.25)
        finally:
            if writer.poll() is None:
                writer.kill()
            writer.wait()
        assert writer.returncode == 0
        growth = sorted(set(counts))
        print(f"load_fast={load_fast}: {polls} polls, distinct served step counts {growth}")
        assert counts, "the run never appeared"
        assert counts == sorted(counts), f"step count went down: {counts}"
        assert counts[-1] == N_STEPS, counts[-5:]
        # Seen while the writer was running: several partial sizes, not just the end.
        assert len([c for c in growth if 0 < c < N_STEPS]) >= 3, growth
        steps = _get(base + STEP_SERIES)["series"][0]
        assert steps["steps"] == list(range(N_STEPS))
        assert steps["values"] == [2.0 ** (step % 16) for step in range(N_STEPS)]
        runs = {r["run"]: r for r in _get(base + "/data/plugin/gradient_health/runs")["runs"]}
        assert runs["live"]["steps"] == {"first": 0, "last": N_STEPS - 1, "count": N_STEPS}
