"""100k logged steps in one run: TensorBoard's memory stays bounded, /series keeps the range.

The run is written TF-free with `GradientHealthWriter` (one small group). Three
`tensorboard --load_fast=false` processes load it side by side: with no
sampling flag (the plugin's `fix_flags` default of `DEFAULT_SAMPLES` steps),
with `gradient_health=0` (keep all: what the default protects against) and with
`gradient_health=1` (the baseline of TensorBoard itself). The default must cost
a small fraction of keep-all. Repeated requests, also under made-up experiment
ids, must not grow the plugin's caches.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import tracemalloc
import urllib.error
import urllib.request

import numpy as np
import pytest
from tensorboard.backend import application, experiment_id
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from tb_gradstats import metadata, plugin
from tb_gradstats.summary import GradientHealthWriter, GroupData
from tests.test_tensorboard_e2e import _free_port, _tensorboard_binary

N_STEPS = 100_000
WHAT_IF = ("float16",)
COLUMNS = metadata.metric_names(WHAT_IF)
ROWS = ["*", "d/kernel"]
HIST_W = 3
API = "/data/plugin/gradient_health"


def write_long_run(path: str, n_steps: int) -> tuple[float, int]:
    """Writes `n_steps`; row 0 l2_norm = step, row 1 = step + 0.5. Returns (seconds, bytes)."""
    start = time.perf_counter()
    writer = GradientHealthWriter(path)
    stats = np.zeros((len(ROWS), len(COLUMNS)))
    stats[:, COLUMNS.index("count")] = 100
    l2 = COLUMNS.index("l2_norm")
    info = {"policy": "float32", "what_if": list(WHAT_IF), "replicas": 1}
    for step in range(n_steps):
        stats[:, l2] = (step, step + 0.5)
        group = GroupData(ROWS, ["group", "dense"], COLUMNS, stats, -20,
                          np.ones((len(ROWS), HIST_W)), info)
        writer.write(step, {"float32": group}, {"loss_scale": 1.0})
    writer.close()
    return time.perf_counter() - start, writer.bytes_written


@pytest.fixture(scope="module")
def long_logdir(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("long")
    seconds, size = write_long_run(str(logdir / "long"), N_STEPS)
    print(f"\ngenerated {N_STEPS} steps ({size / 2**20:.1f} MiB of events) in {seconds:.1f}s")
    return str(logdir)


def _rss_mib(pid: int) -> float:
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS") from None
    return psutil.Process(pid).memory_info().rss / 2**20


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def _tensorboards(logdir: str, flag_sets: dict[str, list[str]]):
    procs = {}
    try:
        for name, flags in flag_sets.items():
            port = _free_port()
            cmd = [_tensorboard_binary(), "--logdir", logdir, "--host", "127.0.0.1", "--port",
                   str(port), "--load_fast=false", "--reload_interval", "0", *flags]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            procs[name] = (proc, f"http://127.0.0.1:{port}")
        yield procs
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_loaded(base: str, timeout_s: float = 240) -> dict:
    """Waits until the last step is served and the answer is stable.

    While TensorBoard still loads, the tags of a run are sampled at slightly
    different moments (their union can exceed the cap); once the last step is in
    and two answers 1.5 s apart (past the listing TTL) agree, loading is over.
    """
    deadline, last, previous = time.monotonic() + timeout_s, None, None
    while time.monotonic() < deadline:
        try:
            last = _get(base + API + "/runs")
            if last["runs"] and last["runs"][0]["steps"]["last"] == N_STEPS - 1:
                if last == previous:
                    return last["runs"][0]["steps"]
                previous = last
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.5)
    pytest.fail(f"{base} did not load all steps; last /runs: {str(last)[:300]}")


def test_100k_steps_memory_is_bounded_and_series_keeps_the_range(long_logdir):
    flags = {"default": [], "keep_all": ["--samples_per_plugin=gradient_health=0"],
             "baseline": ["--samples_per_plugin=gradient_health=1"]}
    with _tensorboards(long_logdir, flags) as procs:
        steps = {name: _wait_loaded(base) for name, (_, base) in procs.items()}
        time.sleep(1)
        rss = {name: _rss_mib(proc.pid) for name, (proc, _) in procs.items()}
        assert steps["default"]["count"] == plugin.DEFAULT_SAMPLES
        assert steps["keep_all"]["count"] == N_STEPS
        assert steps["baseline"]["count"] == 1

        proc, base = procs["default"]
        # Full range, downsampled: the sampled first step and the last step, exact values.
        out = _get(base + API + "/series?run=long&metric=l2_norm&layer=d/kernel&max_points=1000")
        (s,) = out["series"]
        assert len(s["steps"]) <= 1000
        assert s["steps"][0] == steps["default"]["first"] and s["steps"][-1] == N_STEPS - 1
        assert steps["default"]["first"] < 1000  # uniform sample: early steps are kept
        assert s["values"] == [step + 0.5 for step in s["steps"]]
        full = _get(base + API + "/series?run=long&metric=l2_norm&layer=*&group=float32"
                    "&max_points=20000")["series"][0]
        assert len(full["steps"]) == plugin.DEFAULT_SAMPLES
        assert full["values"] == [float(step) for step in full["steps"]]

        # Repeated requests, under many experiment ids too: the plugin's caches stay bounded.
        before = _rss_mib(proc.pid)
        for i in range(30):
            _get(base + f"/experiment/e{i}" + API + "/series?run=long&metric=l2_norm"
                 "&layer=d/kernel&max_points=100")
            _get(base + API + "/heatmap?run=long&group=float32&metric=l2_norm")
        growth = _rss_mib(proc.pid) - before

    base_rss = rss["baseline"]
    default_cost = rss["default"] - base_rss
    keep_all_cost = rss["keep_all"] - base_rss
    # Independent estimate of keep-all: the tensor bytes alone of every step, twice
    # (the provider's protos and the reader's float64 arrays hold one copy each).
    tensor_bytes = 8 * (len(ROWS) * len(COLUMNS) + len(ROWS) * (1 + HIST_W)
                        + len(metadata.STEP_METRICS))
    estimate = 2 * N_STEPS * tensor_bytes / 2**20
    print(f"RSS MiB: baseline {base_rss:.0f}, default cap {rss['default']:.0f} "
          f"(+{default_cost:.0f}), keep-all {rss['keep_all']:.0f} (+{keep_all_cost:.0f}); "
          f"keep-all tensor-bytes estimate +{estimate:.0f}; growth after 60 requests "
          f"{growth:.1f}")
    assert keep_all_cost > estimate  # the measurement sees at least the raw data
    assert default_cost < 0.25 * keep_all_cost
    assert default_cost < estimate
    assert growth < 40  # one reader copy per id would be ~30 x 2.7 MiB


def _small_client(tmp_path):
    path = str(tmp_path / "r")
    write_long_run(path, 2000)
    mux = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    ctx = base_plugin.TBContext(
        logdir=str(tmp_path), data_provider=data_provider.MultiplexerDataProvider(
            mux, str(tmp_path)))
    p = plugin.GradientHealthLoader().load(ctx)
    app = experiment_id.ExperimentIdMiddleware(application.TensorBoardWSGI([p]))
    return p, werkzeug_test.Client(app)


def test_plugin_cache_does_not_grow_with_requests(tmp_path):
    p, client = _small_client(tmp_path)

    def series(eid: str = ""):
        prefix = f"/experiment/{eid}" if eid else ""
        resp = client.get(prefix + API + "/series?run=r&metric=l2_norm&layer=d/kernel")
        assert resp.status_code == 200, resp.get_data(as_text=True)

    for _ in range(5):
        series()
    tracemalloc.start()
    try:
        for _ in range(3):
            series()
        start, _ = tracemalloc.get_traced_memory()
        for i in range(40):
            series()
            series(f"made-up-{i}")  # each id could hold a copy of every run's arrays
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_copy = 2000 * len(ROWS) * len(COLUMNS) * 8
    print(f"traced growth over 80 requests: {(end - start) / 1024:.0f} KiB "
          f"(one cached copy of the run: {one_copy / 1024:.0f} KiB)")
    assert len(p._readers) <= plugin.MAX_READERS
    assert all(len(r._cache) <= 1 for r in p._readers.values())
    # Bounded: a few readers' copies (stats plus histograms), not one per experiment id.
    assert end - start < 20 * one_copy
