"""Dashboard scale: TensorBoard load time, plugin route latency, payloads, paint time.

1. Writes (once, cached under `bench-out/scale/`) a synthetic logdir of
   `runs` runs × `layers` variables × `steps` logged steps with the TF-free
   `GradientHealthWriter` (see `benchmarks/synth.py`), and times that.
2. Starts `tensorboard --logdir` on 127.0.0.1 and times how long until
   `/data/plugin/gradient_health/runs` reports every step of every run.
3. Requests each plugin route `--requests` times (after one warm-up) and
   reports p50 / p95 latency and the payload size.
4. Opens the tab in headless Chromium (Playwright, `/usr/bin/chromium`) and
   times the overview's first paint of data and the heatmap's paint after a click.

Targets: every route < 300 ms p95, tab painted < 1 s, payload < 1 MB per view.

Usage: `python benchmarks/scale.py [--runs 4 --layers 200 --steps 10000] [--quick]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

try:  # run as a script or as `benchmarks.scale`
    from benchmarks import common, synth
except ImportError:  # pragma: no cover
    import common  # type: ignore
    import synth  # type: ignore

PLUGIN = "/data/plugin/gradient_health"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
TARGET_P95_MS = 300.0
TARGET_PAINT_S = 1.0
TARGET_PAYLOAD = 1_000_000


# --- the logdir ---------------------------------------------------------------


def cached_logdir(runs: int, layers: int, steps: int, histogram_freq: int) -> tuple[str, dict]:
    """Returns the synthetic logdir and its generation facts, writing it if needed.

    Args:
        runs: runs.
        layers: variables per run.
        steps: logged steps per run.
        histogram_freq: a histogram every this many logged steps.

    Returns:
        `(path, facts)` with facts `bytes`, `seconds` (of the original
        generation) and `runs`.
    """
    root = os.path.join(common.BENCH_OUT, "scale",
                        f"r{runs}_l{layers}_s{steps}_h{histogram_freq}")
    stamp = os.path.join(root, "generated.json")
    if os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as f:
            facts = json.load(f)
        facts["cached"] = True
        return os.path.join(root, "logdir"), facts
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating {runs} runs × {layers} layers × {steps} steps ...", flush=True)
    facts = synth.make_logdir(os.path.join(root, "logdir"), runs, layers, steps, histogram_freq)
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump(facts, f)
    facts["cached"] = False
    return os.path.join(root, "logdir"), facts


# --- tensorboard --------------------------------------------------------------


def free_port() -> int:
    """Returns a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tensorboard(logdir: str, port: int, extra: list[str]) -> subprocess.Popen:
    """Starts `tensorboard` from this interpreter's environment on 127.0.0.1.

    Its output goes to `bench-out/scale/tensorboard.log` (a pipe nobody reads
    would fill up and stall TensorBoard).
    """
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    cmd = [exe, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port)] + extra
    log = open(os.path.join(common.ensure_out("scale"), "tensorboard.log"), "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _log_tail() -> str:
    path = os.path.join(common.ensure_out("scale"), "tensorboard.log")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-2000:]


def get(base: str, route: str, params: dict | None = None, timeout: float = 120.0):
    """GETs `base + route`; returns `(status, body bytes, seconds)`."""
    query = urllib.parse.urlencode(params or {}, doseq=True)
    url = f"{base}{route}" + (f"?{query}" if query else "")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    return status, body, time.perf_counter() - start


def wait_loaded(base: str, proc: subprocess.Popen, runs: int, steps: int,
                timeout: float, settle_s: float = 30.0) -> tuple[float, dict]:
    """Polls `/runs` until every run is served with all its steps, or stops changing.

    TensorBoard may keep fewer steps than were written (its reservoir, set by
    `--samples_per_plugin` or the plugin's default), and runs the plugin cannot
    read come back under `skipped`: so "loaded" is either every step of every
    run, or an answer that has not changed for `settle_s` seconds.

    Returns:
        `(seconds until the answer was final, the last /runs answer)`.

    Raises:
        RuntimeError: if TensorBoard exits or the timeout passes.
    """
    start = time.perf_counter()
    last: dict = {}
    seen, seen_at = "", start
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited: {_log_tail()}")
        try:
            status, body, _ = get(base, PLUGIN + "/runs", timeout=120)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
            continue
        now = time.perf_counter()
        if status == 200:
            last = json.loads(body)
            counts = [r["steps"]["count"] for r in last.get("runs", [])]
            if len(counts) == runs and all(c >= steps for c in counts):
                return now - start, last
            progress = f"{len(counts)} runs, steps {counts}, {len(last.get('skipped', []))} skipped"
            if progress != seen:
                print(f"  {now - start:6.1f}s /runs: {progress}", flush=True)
                seen, seen_at = progress, now
            elif (counts or last.get("skipped")) and now - seen_at > settle_s:
                return seen_at - start, last
        time.sleep(0.5)
    raise RuntimeError(f"not loaded after {timeout:.0f}s; last /runs: {str(last)[:500]}")


# --- routes -------------------------------------------------------------------


def route_requests(runs_json: dict) -> dict[str, tuple[str, dict]]:
    """Returns name → (route, params) for every data route, using the logdir's names."""
    runs = runs_json["runs"]
    run_a, run_b = runs[0], runs[min(1, len(runs) - 1)]
    group = run_a["groups"][0]
    rows = group["rows"]
    layer = rows[len(rows) // 2]
    names = [r["run"] for r in runs]
    return {
        "runs": ("/runs", {}),
        "formats": ("/formats", {}),
        "overview": ("/overview", {}),
        "alerts": ("/alerts", {}),
        "series (all runs, 1 layer)": ("/series", {"run": names, "metric": "l2_norm",
                                                   "layer": layer}),
        "series (group row)": ("/series", {"run": run_a["run"], "metric": "zero_fraction",
                                           "layer": "*", "group": group["group"]}),
        "step_series (all runs)": ("/step_series", {"run": names, "metric": "loss_scale"}),
        "heatmap": ("/heatmap", {"run": run_a["run"], "group": group["group"],
                                 "metric": "l2_norm"}),
        "histogram (latest)": ("/histogram", {"run": run_a["run"], "layer": layer}),
        "compare": ("/compare", {"run_a": run_a["run"], "run_b": run_b["run"],
                                 "metric": "l2_norm"}),
        "export.csv (heatmap)": ("/export.csv", {"view": "heatmap", "run": run_a["run"],
                                                 "group": group["group"],
                                                 "metric": "l2_norm"}),
    }


def time_routes(base: str, runs_json: dict, requests: int) -> list[dict]:
    """Times every route; returns one dict per route with p50/p95 ms and bytes."""
    out = []
    for name, (route, params) in route_requests(runs_json).items():
        status, body, _ = get(base, PLUGIN + route, params)  # warm-up (and cache fill)
        seconds = [get(base, PLUGIN + route, params)[2] for _ in range(requests)]
        out.append(dict(name=name, route=route, status=status, bytes=len(body),
                        p50_ms=common.percentile(seconds, 50) * 1e3,
                        p95_ms=common.percentile(seconds, 95) * 1e3))
    return out


# --- browser ------------------------------------------------------------------

_PAINTED = """async () => {
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now();
}"""


def _plugin_frame(page, timeout_s: float):
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        for frame in page.frames:
            if "plugin_entry" in frame.url and frame != page.main_frame:
                return frame
        page.wait_for_timeout(20)
    raise RuntimeError("the Gradient Health iframe never appeared")


def time_browser(base: str, n_runs: int, timeout_s: float = 60.0) -> dict:
    """Measures the overview's and the heatmap's paint in headless Chromium.

    Returns:
        Dict of seconds: `overview_wall` (goto → run cards with data painted),
        `overview_page` (the same, from the TensorBoard page's navigation start),
        `overview_iframe` (from the plugin iframe's navigation start), and
        `heatmap_click` (click on the Heatmap tab → heatmap canvas painted).
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            responses: list = []
            page.on("response", lambda r: responses.append(r) if PLUGIN in r.url else None)
            start = time.perf_counter()
            page.goto(f"{base}/#gradient_health", wait_until="commit")
            frame = _plugin_frame(page, timeout_s)
            frame.wait_for_function(
                f"document.querySelectorAll('.run-card').length >= {n_runs}"
                " && !document.querySelector('main .loading')", timeout=timeout_s * 1e3)
            iframe_ms = frame.evaluate(_PAINTED)
            overview_wall = time.perf_counter() - start
            page_ms = page.evaluate("performance.now()")
            overview_bytes = _payload(responses)
            responses.clear()
            click = time.perf_counter()
            frame.click("button[data-view=heatmap]")
            frame.wait_for_function(
                "document.querySelector('main[data-view=heatmap] .view canvas')"
                " && !document.querySelector('main .loading')", timeout=timeout_s * 1e3)
            frame.evaluate(_PAINTED)
            heatmap = time.perf_counter() - click
            heatmap_bytes = _payload(responses)
            shot = os.path.join(common.ensure_out("scale"), "heatmap.png")
            page.screenshot(path=shot)
        finally:
            browser.close()
    return dict(overview_wall=overview_wall, overview_page=page_ms / 1e3,
                overview_iframe=iframe_ms / 1e3, heatmap_click=heatmap, screenshot=shot,
                overview_bytes=overview_bytes, heatmap_bytes=heatmap_bytes)


def _payload(responses: list) -> tuple[int, int, int]:
    """Returns `(requests, decoded bytes, bytes on the wire)` of the plugin's responses."""
    decoded = wire = 0
    for r in responses:
        try:
            decoded += len(r.body())
        except Exception:  # noqa: BLE001 - e.g. a redirect has no body
            pass
        wire += int(r.headers.get("content-length", 0) or 0)
    return len(responses), decoded, wire


# --- report -------------------------------------------------------------------


def tensorboard_rss_mib(proc: subprocess.Popen) -> float:
    """Returns the resident memory of TensorBoard and its children (the Rust server), MiB."""
    pids = [proc.pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        pids += [int(p) for p in out.stdout.split()]
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


def tables(result: dict) -> str:
    """Returns the markdown of the scale benchmark."""
    g = result["generation"]
    lines = [
        f"#### {result['runs']} runs × {result['layers']} layers × {result['steps']} steps, "
        f"`{' '.join(result['tb_flags']) or 'default flags'}`",
        "",
        f"Logdir: {result['runs']} runs × {result['layers']} layers × {result['steps']} logged "
        f"steps, histogram every {result['histogram_freq']} logged steps: "
        f"{common.human_bytes(g['bytes'])} of events, written in {g['seconds']:.0f} s "
        f"({g['seconds'] / max(result['runs'] * result['steps'], 1) * 1e3:.2f} ms per run-step"
        f"{', cached' if g.get('cached') else ''}).",
        f"TensorBoard (`{' '.join(result['tb_flags']) or 'default flags'}`): /runs final after "
        f"{result['load_s']:.1f} s, serving {_served(result)}; resident memory "
        f"{result['rss_mib']:.0f} MiB (TensorBoard + data server).",
        *_skipped_lines(result),
        "",
        _routes_table(result["routes"]) if result["routes"]
        else "No route timings: the plugin served no run.",
    ]
    b = result.get("browser")
    if b and "error" not in b:
        lines += ["", common.markdown_table(
            ["browser (headless Chromium)", "seconds", "< 1 s"],
            [["overview painted, from the TensorBoard page's navigation start",
              f"{b['overview_page']:.2f}", _yes(b["overview_page"])],
             ["overview painted, from the plugin iframe's navigation start",
              f"{b['overview_iframe']:.2f}", _yes(b["overview_iframe"])],
             ["overview painted, wall clock from `goto`", f"{b['overview_wall']:.2f}",
              _yes(b["overview_wall"])],
             ["heatmap painted after clicking its tab", f"{b['heatmap_click']:.2f}",
              _yes(b["heatmap_click"])]])]
        lines += ["", common.markdown_table(
            ["view as the tab loads it", "plugin requests", "decoded (JSON, JS, CSS)", "on the wire",
             "< 1 MB"],
            [[name, n, common.human_bytes(dec), common.human_bytes(wire),
              "yes" if max(dec, wire) < TARGET_PAYLOAD else "**no**"]
             for name, (n, dec, wire) in (("overview (first load)", b["overview_bytes"]),
                                          ("heatmap (after the click)", b["heatmap_bytes"]))])]
    elif b:
        lines += ["", f"Browser timing failed: {b['error']}"]
    return "\n".join(lines)


def _routes_table(routes: list[dict]) -> str:
    return common.markdown_table(
        ["route", "p50 ms", "p95 ms", "payload", "p95 < 300 ms", "payload < 1 MB"],
        [[r["name"], f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
          common.human_bytes(r["bytes"]) + ("" if r["status"] == 200
                                            else f" (HTTP {r['status']})"),
          "yes" if r["p95_ms"] < TARGET_P95_MS else "**no**",
          "yes" if r["bytes"] < TARGET_PAYLOAD else "**no**"]
         for r in routes],
    )


def _served(result: dict) -> str:
    served = result["served"]
    if not served:
        return "**no run**"
    if all(c >= result["steps"] for c in served):
        return f"all {result['steps']} steps of all {len(served)} runs"
    return f"{len(served)} runs with {served} of {result['steps']} steps (reservoir)"


def _skipped_lines(result: dict) -> list[str]:
    skipped = result["skipped"]
    if not skipped:
        return []
    first = " ".join(skipped[0]["reason"].split())[:300]
    return [f"The plugin skipped {len(skipped)} tags, e.g. `{skipped[0]['tag']}`: {first}"]


def _yes(seconds: float) -> str:
    return "yes" if seconds < TARGET_PAINT_S else "**no**"


def run(runs: int, layers: int, steps: int, histogram_freq: int, requests: int,
        tb_flags: list[str], browser: bool = True) -> dict:
    """Runs the whole scale benchmark; returns the numbers and the markdown."""
    logdir, generation = cached_logdir(runs, layers, steps, histogram_freq)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_tensorboard(logdir, port, tb_flags)
    try:
        load_s, runs_json = wait_loaded(base, proc, runs, steps, timeout=1800)
        result = dict(runs=runs, layers=layers, steps=steps, histogram_freq=histogram_freq,
                      generation=generation, tb_flags=tb_flags, load_s=load_s,
                      served=[r["steps"]["count"] for r in runs_json.get("runs", [])],
                      skipped=runs_json.get("skipped", []))
        result["rss_mib"] = tensorboard_rss_mib(proc)
        result["routes"] = time_routes(base, runs_json, requests) if result["served"] else []
        if browser and result["served"]:
            try:
                result["browser"] = time_browser(base, runs)
            except Exception as e:  # noqa: BLE001 - report, do not lose the route numbers
                result["browser"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    result["table"] = tables(result)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point; prints and returns the result of `run`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--histogram-freq", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="4 × 200 × 500, 10 requests")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--tb-flag", action="append", default=[],
                        help="extra tensorboard flag, e.g. --tb-flag=--load_fast=false")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.requests = 500, 10
    result = run(args.runs, args.layers, args.steps, args.histogram_freq, args.requests,
                 args.tb_flag, browser=not args.no_browser)
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
