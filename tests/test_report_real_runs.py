"""`tb-gradstats report` on real demo runs: a diverging float16 run fails, float32 passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("demo"))
    subprocess.run(
        [sys.executable, os.path.join(HERE, "..", "demo", "run_demo.py"), "--no-serve",
         "--steps", "120", "--policies", "float32", "float16", "--logdir", logdir],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return logdir


def _report(logdir, run):
    exe = os.path.join(os.path.dirname(sys.executable), "tb-gradstats")
    return subprocess.run([exe, "report", logdir, "--run", run], capture_output=True, text=True)


def test_diverging_float16_run_fails_and_names_layer_and_step(demo_runs):
    out = _report(demo_runs, "float16")
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "non_finite" in ln)
    assert re.search(r"digits_mlp/\w+/(kernel|bias)", line), line
    assert re.search(r"first at step \d+", line), line
    assert "Traceback" not in out.stderr


def test_healthy_float32_run_passes(demo_runs):
    out = _report(demo_runs, "float32")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 error(s)" in out.stdout
