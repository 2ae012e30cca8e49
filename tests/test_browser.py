"""Browser test of the Gradient Health tab: real TensorBoard + plugin + headless Chromium.

Writes a synthetic logdir (a healthy float32 run, a mixed_float16 run with NaN/Inf steps and
loss-scale drops, a bfloat16 run with a dead layer, and a run directory literally named
`<img src=x onerror=alert(1)>` with a hostile layer name), starts `tensorboard` on loopback,
opens `#gradient_health` and drives every view through the plugin iframe. Checks: each view draws
(canvas pixels / table rows), no console errors, no CSP violations, hostile names are inert
text, and a heatmap click opens the histogram of that layer/step. Screenshots go to
`test-artifacts/`; `--docs` (or GH_WRITE_DOCS=1) also refreshes the README images in `docs/`.

Run by hand: `python tests/test_browser.py --serve DIR` writes the logdir and serves it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tb_gradstats import metadata
from tb_gradstats.summary import GradientHealthWriter, GroupData

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
HOSTILE_RUN = "<img src=x onerror=alert(1)>"
HOSTILE_LAYER = "<script>window.__pwned=1</script>/kernel"
WHAT_IF = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
HIST_FIRST = -48
HIST_BINS = 64

# ----------------------------------------------------------------------------- synthetic data


def _layer_names(n: int) -> list[str]:
    names = []
    for i in range(n):
        names += [f"dense_{i}/kernel", f"dense_{i}/bias"]
    return names


def _write_run(logdir, run, *, policy, group, layers, steps, seed, center, spread=3.0,
               nan_steps=(), dead_layer=None, loss_scale=None, replicas=1):
    """Writes one run with plausible stats and log2 histograms, returns nothing."""
    rng = np.random.default_rng(seed)
    columns = metadata.metric_names(WHAT_IF)
    col = {c: k for k, c in enumerate(columns)}
    rows = [metadata.GROUP_ROW, *layers]
    n = len(rows)
    exps = np.arange(HIST_FIRST, HIST_FIRST + HIST_BINS) + 0.5
    writer = GradientHealthWriter(os.path.join(logdir, run))
    scale = loss_scale
    for step in steps:
        centers = center - 0.15 * np.arange(n) - 0.004 * step + rng.normal(0, 0.2, n)
        centers[0] = center - 0.004 * step
        hist = np.exp(-0.5 * ((exps[None, :] - centers[:, None]) / spread) ** 2)
        size = 200.0 + 50 * np.arange(n)
        size[0] = size[1:].sum() if n > 1 else 1000.0
        hist = np.floor(hist / hist.sum(1, keepdims=True) * size[:, None])
        stats = rng.uniform(0.0, 1.0, size=(n, len(columns)))
        total = hist.sum(1)
        depth = np.arange(n) / max(1, n - 1)
        frac = 0.002 + 0.03 * depth * (0.5 + step / len(steps)) + rng.uniform(0, 0.004, n)
        frac[0] = frac[1:].mean() if n > 1 else frac[0]
        if dead_layer is not None:
            k = rows.index(dead_layer)
            frac[k] = min(0.97, 0.2 + 0.8 * step / len(steps))
        zero = np.floor(total * frac / (1 - frac))
        stats[:, col["count"]] = total + zero
        stats[:, col["zero_count"]] = zero
        stats[:, col["zero_fraction"]] = zero / np.maximum(1, total + zero)
        stats[:, col["scaled_zero_fraction"]] = stats[:, col["zero_fraction"]]
        stats[:, col["nan_count"]] = 0.0
        stats[:, col["inf_count"]] = 0.0
        stats[:, col["l2_norm"]] = 2.0 ** (centers + 0.5 * np.log2(np.maximum(1, total)))
        stats[:, col["abs_max"]] = 2.0 ** (centers + 2 * spread)
        stats[:, col["abs_min_nonzero"]] = 2.0 ** (centers - 2 * spread)
        stats[:, col["update_ratio"]] = 10.0 ** rng.normal(-3, 0.3, n)
        for d in WHAT_IF:
            fmt = {"float16": -25, "bfloat16": -134, "float8_e4m3fn": -10, "float8_e5m2": -17}[d]
            under = hist[:, : max(0, fmt - HIST_FIRST)].sum(1) / np.maximum(1, total)
            stats[:, col[f"underflow_fraction/{d}"]] = under
            stats[:, col[f"subnormal_fraction/{d}"]] = under * 0.5
            stats[:, col[f"overflow_fraction/{d}"]] = 0.0
        skipped = 0.0
        if step in nan_steps:
            bad = min(n, 4)
            stats[:bad, col["nan_count"]] = [4, 3, 0, 1][:bad]
            stats[:bad, col["inf_count"]] = [2, 0, 2, 0][:bad]
            for c in ("l2_norm", "mean", "variance", "std"):
                stats[:bad, col[c]] = [math.nan, math.nan, math.inf, math.nan][:bad]
            stats[[0, bad - 1], col["abs_max"]] = math.inf
            skipped = 1.0 if scale else 0.0
        if scale:
            if skipped:
                scale = scale / 2
            elif step % 50 == 49:
                scale = min(scale * 2, 2.0 ** 16)
        group_data = GroupData(
            rows=rows, row_kinds=[metadata.ROW_GROUP] + [metadata.ROW_DENSE] * (n - 1),
            columns=columns, stats=stats, hist_first_exponent=HIST_FIRST, hist=hist,
            info={"what_if": list(WHAT_IF), "policy": policy,
                  "grad_dtype": metadata.split_group(group)[0],
                  "compute_dtype": metadata.split_group(group)[1], "replicas": replicas},
        )
        writer.write(step, {group: group_data}, {
            "loss_scale": scale or 1.0, "skipped_step": skipped, "replicas": float(replicas),
            "nonfinite_replicas": 1.0 if step in nan_steps else 0.0,
            "nonfinite_applied": 0.0 if scale else float(step in nan_steps)},
            {"policy": policy})
    writer.close()


def write_logdir(logdir: str, steps: int = 300, layers: int = 24) -> None:
    """Writes the four demo runs used by the browser test and the screenshots."""
    names = _layer_names(layers // 2)
    _write_run(logdir, "mixed_float16", policy="mixed_float16", group="float32@float16",
               layers=names, steps=range(steps), seed=1, center=-14.0,
               nan_steps={120, 121, 250}, loss_scale=32768.0)
    _write_run(logdir, "float32_baseline", policy="float32", group="float32",
               layers=names, steps=range(steps), seed=2, center=-11.0)
    _write_run(logdir, "bfloat16", policy="mixed_bfloat16", group="bfloat16",
               layers=names, steps=range(0, steps, 2), seed=3, center=-12.0,
               dead_layer=names[5])
    _write_run(logdir, HOSTILE_RUN, policy="float32", group="float32",
               layers=[HOSTILE_LAYER, "dense/bias"], steps=range(0, steps, 10), seed=4,
               center=-10.0, nan_steps={50})


# ----------------------------------------------------------------------------- tensorboard

_LAUNCHER = (
    "import sys\n"
    "from tensorboard import default, program\n"
    "from tb_gradstats.plugin import GradientHealthLoader\n"
    "plugins = default.get_plugins()\n"
    "if not any('GradientHealth' in repr(p) for p in plugins):\n"
    "    plugins.append(GradientHealthLoader())\n"
    "tb = program.TensorBoard(plugins=plugins)\n"
    "tb.configure(argv=[''] + sys.argv[1:])\n"
    "sys.exit(tb.main())\n"
)


def _entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points(group="tensorboard_plugins")
    return any(ep.name == metadata.PLUGIN_NAME for ep in eps)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tensorboard_server(logdir: str, log_path: str, runs=()):
    """Starts TensorBoard on loopback (the installed entry point when there is one).

    Yields its base URL once the plugin lists every run in `runs` (or any run).
    """
    port = _free_port()
    args = ["--logdir", logdir, "--host", "127.0.0.1", "--port", str(port), "--load_fast=false",
            "--reload_interval", "2"]
    if _entry_point_installed():
        cmd = [sys.executable, "-m", "tensorboard.main", *args]
    else:  # a source checkout without `pip install -e .`: register the plugin by hand
        cmd = [sys.executable, "-c", _LAUNCHER, *args]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited: {open(log_path).read()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/data/plugin/gradient_health/runs", timeout=5) as r:
                    listed = {x["run"] for x in json.loads(r.read())["runs"]}
                if listed and listed >= set(runs):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"tensorboard not ready: {open(log_path).read()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        # TensorBoard's serving thread does not exit on SIGTERM; nothing of it needs saving.
        proc.kill()
        proc.wait(10)



# ----------------------------------------------------------------------------- the test

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (`make chromium` installs it)")

ARTIFACTS = os.path.join(ROOT, "test-artifacts")
DOCS = os.path.join(ROOT, "docs")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync"]

# Runs in every frame before its scripts: trap alert(), watch CSP violations.
INIT_SCRIPT = """
window.__alerts = [];
window.alert = (m) => { window.__alerts.push(String(m)); };
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sample || '')));
"""

INK_JS = """(sel) => [...document.querySelectorAll(sel)].map((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
})"""


def _wait(page, predicate, what, timeout=20.0):
    """Polls `predicate` while letting Playwright process events."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for {what}")


def _ink(frame, selector):
    return frame.evaluate(INK_JS, selector)


def _select(frame, label, value):
    control = f"main label.control:has(span.control-label:text-is('{label}'))"
    frame.locator(f"{control} select").select_option(value)


def _appears(frame, selector, what):
    return _wait(frame.page, lambda: frame.query_selector(selector), what)


def _open_view(frame, view):
    frame.click(f"button.tab[data-view={view}]")
    _wait(frame.page, lambda: frame.query_selector(f"main[data-view={view}] .view"), f"view {view}")


def _settled(frame):
    """Waits until the current view has nothing loading."""
    _wait(frame.page, lambda: not frame.query_selector("main .loading"), "view to finish loading")


def _shot(page, name, docs=False):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)
    if docs:
        page.screenshot(path=os.path.join(DOCS, f"{name}.png"))


def _plugin_frame(page):
    for f in page.frames:
        if "plugin_entry" in f.url and f.query_selector(".gh-root"):
            return f
    return None


@contextlib.contextmanager
def gradient_health_tab(url: str, *init_scripts: str):
    """Opens the Gradient Health tab in headless Chromium.

    Yields `(page, frame, console, page_errors)`: the plugin's iframe, and lists that
    collect console messages and uncaught page errors while the block runs.
    """
    from playwright.sync_api import sync_playwright  # imported late: skipped without chromium

    console, page_errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            for script in (INIT_SCRIPT, *init_scripts):
                page.add_init_script(script)
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(url + "/#gradient_health")
            frame = _wait(page, lambda: _plugin_frame(page), "the plugin iframe", timeout=45)
            yield page, frame, console, page_errors
        finally:
            browser.close()


@pytest.fixture(scope="module")
def tensorboard_url(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("logdir"))
    write_logdir(logdir, steps=200, layers=24)
    os.makedirs(ARTIFACTS, exist_ok=True)
    runs = ("mixed_float16", "float32_baseline", "bfloat16", HOSTILE_RUN)
    with tensorboard_server(logdir, os.path.join(ARTIFACTS, "tensorboard.log"), runs) as url:
        yield url, logdir


def test_gradient_health_tab(tensorboard_url):

    url, logdir = tensorboard_url
    docs = os.environ.get("GH_WRITE_DOCS") == "1"
    with gradient_health_tab(url) as (page, frame, console, page_errors):

        # (1) overview: one card per run, sparklines drawn, hostile name as inert text
        _wait(page, lambda: len(frame.query_selector_all(".run-card")) == 4, "4 run cards")
        titles = [t.text_content() for t in frame.query_selector_all(".run-card .card-title")]
        assert HOSTILE_RUN in titles
        assert sum(1 for n in _ink(frame, ".run-card canvas.sparkline") if n > 20) >= 8
        assert frame.locator(".run-card .layer-name", has_text=HOSTILE_LAYER).count() == 1
        assert frame.evaluate("document.querySelectorAll('img').length") == 0
        _shot(page, "overview", docs)

        # polling/refresh: new steps show up without a page reload
        _write_run(logdir, "float32_baseline", policy="float32", group="float32",
                   layers=_layer_names(12), steps=range(200, 230), seed=9, center=-11.0)

        def sees_new_steps():
            frame.click("button:text-is('Refresh')")
            page.wait_for_timeout(500)
            return "last step 229" in frame.text_content(".status")

        _wait(page, sees_new_steps, "new steps after Refresh", timeout=30)

        # (2) alerts: rows, hostile row inert, a row opens its evidence
        _open_view(frame, "alerts")
        _wait(page, lambda: frame.query_selector_all(".alerts-table tbody tr"), "alert rows")
        assert frame.locator(".alerts-table td.run-name", has_text=HOSTILE_RUN).count() >= 1
        _shot(page, "alerts")
        frame.locator(".alerts-table tbody tr", has_text="non_finite").filter(
            has_text="mixed_float16").first.click()
        _appears(frame, "main[data-view=series] .line-chart canvas", "evidence chart")
        _settled(frame)
        assert _ink(frame, ".line-chart canvas")[0] > 500
        assert "nan_count of dense_0/" in frame.text_content(".view-series .chart-title")
        assert "Shaded: alert steps" in frame.text_content(".view-series .hint")

        # (3) series: one layer, several runs overlaid, log y, NaN steps marked
        _open_view(frame, "series")
        _select(frame, "metric", "l2_norm")
        _settled(frame)
        _select(frame, "layer", "dense_0/kernel")
        _settled(frame)
        for run in ("float32_baseline", "bfloat16"):
            frame.locator(".run-check", has_text=run).locator("input").check()
            _settled(frame)
        _wait(page, lambda: frame.locator(".line-chart .legend-item").count() == 3, "3 series")
        assert frame.locator(".line-chart .legend-item", has_text="non-finite").count() == 1
        assert _ink(frame, ".line-chart canvas")[0] > 500
        box = frame.locator(".line-chart canvas").bounding_box()
        frame.locator(".line-chart canvas").hover(
            position={"x": box["width"] * 0.6, "y": box["height"] / 2})
        assert "step" in frame.text_content(".chart-tooltip")
        _shot(page, "series", docs)

        # (4) heatmap of mixed_float16; click a cell -> (5) histogram of that layer/step
        _open_view(frame, "heatmap")
        _select(frame, "run", "mixed_float16")
        _appears(frame, ".heatmap canvas.chart-canvas", "heatmap")
        _settled(frame)
        assert _ink(frame, ".heatmap canvas.chart-canvas")[0] > 10000
        heat = frame.locator(".heatmap canvas.chart-canvas")
        box = heat.bounding_box()
        pos = {"x": box["width"] * 0.6, "y": 8 + 14 * 3.5}  # row 3 (row 0 is "*")
        heat.hover(position=pos)
        tip = frame.locator(".heatmap .chart-tooltip").inner_text()
        layer = tip.splitlines()[0].strip()
        step = int(tip.splitlines()[1].split()[1].split("–")[0])
        assert layer == "dense_1/kernel", tip
        _shot(page, "heatmap", docs)
        heat.click(position=pos)
        _appears(frame, "main[data-view=histogram] .histogram canvas", "histogram")
        _settled(frame)
        title = frame.text_content(".view-histogram .chart-title")
        assert f"{layer} · mixed_float16 · step {step}" == title, (title, tip)
        assert _ink(frame, ".histogram canvas")[0] > 5000
        assert frame.locator(".zone-table tbody tr").count() == 4
        _shot(page, "histogram", docs)
        frame.click("button[title='previous step']")
        _wait(page, lambda: f"step {step - 1}" in frame.text_content(".view-histogram .chart-title"),
              "previous step")

        # hostile layer name in the histogram view
        _select(frame, "run", HOSTILE_RUN)
        _appears(frame, "main[data-view=histogram] .histogram canvas", "hostile histogram")
        _select(frame, "layer", HOSTILE_LAYER)
        _wait(page, lambda: HOSTILE_LAYER in frame.text_content(".view-histogram .chart-title"),
              "hostile layer title")

        # (6) compare two runs layer by layer
        _open_view(frame, "compare")
        _wait(page, lambda: frame.query_selector_all(".compare-table tbody tr"), "compare rows")
        assert frame.locator(".compare-table tbody tr").count() == 24
        assert frame.locator(".pair-bar").count() == 48
        _shot(page, "compare")

        # nothing injected ran, nothing was blocked, nothing failed
        for f in page.frames:
            assert f.evaluate("window.__alerts || []") == [], f.url
            assert f.evaluate("window.__csp || []") == [], f.url
            assert f.evaluate("window.__pwned === undefined"), f.url
    errors = [text for kind, text in console if kind == "error"]
    assert not errors, errors
    assert not page_errors, page_errors
    assert not any("Content Security Policy" in text for _, text in console)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", metavar="DIR", help="write the synthetic logdir there and serve it")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", type=int, default=24)
    ns = parser.parse_args()
    os.makedirs(ns.serve, exist_ok=True)
    write_logdir(ns.serve, ns.steps, ns.layers)
    with tensorboard_server(ns.serve, os.path.join(ns.serve, "tensorboard.log")) as url:
        print(url, flush=True)
        while True:
            time.sleep(3600)
