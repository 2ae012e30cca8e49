"""Browser test of a NaN/Inf storm: no non-finite number may leak into a chart, axis or layout.

One run (`nan_storm`, mixed_float16) where every gradient value of every layer is NaN or Inf for
100 logged steps: counts > 0 with `nan_count + inf_count = count`, every moment/norm NaN, every
fraction 0, all-zero histograms (the shape the real writer produces, and a wide empty one), the
loss scale halving each step down to ~5e-26, every step skipped. Next to it one healthy run with
the same layer names. Every view is driven against it while an init script (it runs in the
plugin iframe too) wraps the 2D canvas API, style writes, numeric attributes and the slider and
canvas size setters, recording any non-finite number handed to them. Asserts: nothing recorded,
no canvas text that looks like a number is NaN/Inf, no inline style / numeric or SVG attribute
holds NaN/Infinity, the alerts table has a `non_finite` error for every storm layer, the storm
card shows its skipped/non-finite counts, and no console error, page error or CSP violation.
Screenshots go to `test-artifacts/storm_*.png`.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest

from tb_gradstats import metadata
from tb_gradstats.summary import GradientHealthWriter, GroupData
from tests.test_browser import (
    ARTIFACTS,
    CHROMIUM,
    WHAT_IF,
    _appears,
    _ink,
    _layer_names,
    _open_view,
    _select,
    _settled,
    _shot,
    _wait,
    _write_run,
    gradient_health_tab,
    tensorboard_server,
)

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (`make chromium` installs it)")

STORM = "nan_storm"
HEALTHY = "healthy"
GROUP = "float32@float16"
STEPS = 100
LAYERS = _layer_names(6)

# ----------------------------------------------------------------------------- synthetic data


def write_storm_run(logdir: str, run: str = STORM) -> None:
    """Every value of every layer NaN or Inf at every step; the loss scale halves each step."""
    columns = metadata.metric_names(WHAT_IF)
    col = {c: k for k, c in enumerate(columns)}
    rows = [metadata.GROUP_ROW, *LAYERS]
    n = len(rows)
    size = np.array([0.0] + [float(64 * (k + 1)) for k in range(n - 1)])
    size[0] = size[1:].sum()
    writer = GradientHealthWriter(os.path.join(logdir, run))
    for step in range(STEPS):
        stats = np.full((n, len(columns)), math.nan)
        # layer k: a share of NaN that cycles with the step, the rest +/-Inf (some all NaN, some all Inf)
        share = ((np.arange(n) + step) % 4) / 3.0
        nan = np.floor(size * share)
        nan[0] = nan[1:].sum()
        stats[:, col["count"]] = size
        stats[:, col["nan_count"]] = nan
        stats[:, col["inf_count"]] = size - nan
        for c in columns:
            if c in ("zero_count", "zero_fraction", "scaled_zero_fraction") or "_fraction/" in c:
                stats[:, col[c]] = 0.0
        # the real writer's empty histogram is one bin at exponent 0; also a wide all-zero one
        first, width = (0, 1) if step % 2 == 0 else (-48, 64)
        data = GroupData(
            rows=rows, row_kinds=[metadata.ROW_GROUP] + [metadata.ROW_DENSE] * (n - 1),
            columns=columns, stats=stats, hist_first_exponent=first, hist=np.zeros((n, width)),
            info={"what_if": list(WHAT_IF), "policy": "mixed_float16", "grad_dtype": "float32",
                  "compute_dtype": "float16", "replicas": 1},
        )
        writer.write(step, {GROUP: data}, {
            "loss_scale": 32768.0 * 2.0 ** -step, "skipped_step": 1.0, "replicas": 1.0,
            "nonfinite_replicas": 1.0, "nonfinite_applied": 0.0}, {"policy": "mixed_float16"})
    writer.close()


def write_logdir(logdir: str) -> None:
    write_storm_run(logdir)
    _write_run(logdir, HEALTHY, policy="float32", group="float32", layers=LAYERS,
               steps=range(STEPS), seed=7, center=-11.0)


# ----------------------------------------------------------------------------- instrumentation

# Runs in every frame before its scripts. Records, in window.__nf.bad, each call that hands a
# non-finite number (or a string with NaN/Infinity) to the canvas API, an inline style, a numeric
# attribute, a canvas size or a range input; records every canvas text in window.__nf.texts.
INSTRUMENT = r"""
(() => {
  const rec = { bad: [], texts: [], hooks: 0 };
  window.__nf = rec;
  const BAD_TEXT = /NaN|Infinity|undefined/;
  const nonFinite = (v) => typeof v === "number" && !Number.isFinite(v);
  const badValue = (v) => nonFinite(v) || (v !== null && v !== undefined && BAD_TEXT.test(String(v)));
  const note = (what, args) => {
    if (rec.bad.length >= 200) return;
    const caller = (new Error().stack || "").split("\n").slice(3, 5).map((s) => s.trim()).join(" < ");
    const shown = args.map((a) => (typeof a === "string" ? JSON.stringify(a) : String(a)));
    rec.bad.push(`${what}(${shown.join(", ")}) ${caller}`);
  };
  const P = CanvasRenderingContext2D.prototype;
  for (const name of ["moveTo", "lineTo", "rect", "fillRect", "strokeRect", "clearRect", "arc", "arcTo",
                      "ellipse", "bezierCurveTo", "quadraticCurveTo", "fillText", "strokeText", "drawImage",
                      "translate", "scale", "rotate", "setTransform", "transform", "putImageData",
                      "createImageData", "setLineDash"]) {
    const orig = P[name];
    if (typeof orig !== "function") continue;
    rec.hooks++;
    P[name] = function (...args) {
      const flat = name === "setLineDash" ? [...(args[0] || [])] : args;
      if (flat.some(nonFinite)) note(name, args);
      if (name === "fillText" || name === "strokeText") {
        if (rec.texts.length < 50000) {
          rec.texts.push({ text: String(args[0]), x: args[1], y: args[2], align: this.textAlign,
                           canvas: this.canvas.className });
        }
      }
      return orig.apply(this, args);
    };
  }
  for (const prop of ["fillStyle", "strokeStyle", "lineWidth", "font", "globalAlpha", "lineDashOffset"]) {
    const d = Object.getOwnPropertyDescriptor(P, prop);
    if (!d || !d.set) continue;
    rec.hooks++;
    Object.defineProperty(P, prop, {
      ...d, set(v) { if (badValue(v)) note(`ctx.${prop}=`, [v]); d.set.call(this, v); } });
  }
  // element.style.<prop> = v, Object.assign(el.style, {...}), setProperty, cssText. Chrome keeps
  // the CSS properties on each declaration (not its prototype): hand out a recording Proxy.
  const proxies = new WeakMap();
  const styleProxy = (decl) => {
    if (!proxies.has(decl)) {
      proxies.set(decl, new Proxy(decl, {
        get(target, prop) {
          const v = Reflect.get(target, prop, target);
          if (prop === "setProperty") {
            return (n, val, prio) => {
              if (badValue(val)) note(`style.setProperty ${n}`, [val]);
              return v.call(target, n, val, prio);
            };
          }
          return typeof v === "function" ? v.bind(target) : v;
        },
        set(target, prop, v) {
          if (badValue(v)) note(`style.${String(prop)}=`, [v]);
          return Reflect.set(target, prop, v, target);
        },
      }));
    }
    return proxies.get(decl);
  };
  for (const proto of [HTMLElement.prototype, SVGElement.prototype]) {
    const d = Object.getOwnPropertyDescriptor(proto, "style");
    if (!d || !d.get || !d.configurable) continue;
    rec.hooks++;
    Object.defineProperty(proto, "style", {
      ...d,
      get() { return styleProxy(d.get.call(this)); },
      set(v) {
        if (badValue(v)) note(`<${this.tagName}>.style=`, [v]);
        d.set.call(this, v);
      },
    });
  }
  // attributes that hold numbers or layout (names, titles and text may say "NaN" on purpose)
  const NUMERIC_ATTRS = new Set(["style", "width", "height", "min", "max", "value", "step", "x", "y", "x1",
                                 "x2", "y1", "y2", "cx", "cy", "r", "d", "points", "transform", "viewbox"]);
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (n, v) {
    const numeric = NUMERIC_ATTRS.has(String(n).toLowerCase()) && !(this instanceof HTMLOptionElement);
    if ((numeric || this instanceof SVGElement) && badValue(v)) {
      note(`<${this.tagName}>.setAttribute ${n}`, [v]);
    }
    return setAttribute.call(this, n, v);
  };
  const hookSetter = (proto, prop, check) => {
    const d = Object.getOwnPropertyDescriptor(proto, prop);
    if (!d || !d.set) return;
    rec.hooks++;
    Object.defineProperty(proto, prop, {
      ...d,
      set(v) {
        if (check(this) && badValue(v)) note(`<${this.tagName}>.${prop}=`, [v]);
        d.set.call(this, v);
      },
    });
  };
  hookSetter(HTMLCanvasElement.prototype, "width", () => true);
  hookSetter(HTMLCanvasElement.prototype, "height", () => true);
  for (const prop of ["value", "min", "max", "step", "valueAsNumber"]) {
    hookSetter(HTMLInputElement.prototype, prop, (el) => el.type === "range" || el.type === "number");
  }
})();
"""

# Every element's inline style, numeric attributes and (if any) SVG attributes.
DOM_SCAN = r"""() => {
  const out = [];
  const bad = /NaN|Infinity/;
  const numeric = ["width", "height", "min", "max", "value", "step"];
  for (const el of document.querySelectorAll("*")) {
    const style = el.getAttribute("style");
    if (style && bad.test(style)) out.push(`<${el.tagName} class=${el.className}> style="${style}"`);
    for (const a of el.attributes) {
      if ((el instanceof SVGElement || (numeric.includes(a.name) && !(el instanceof HTMLOptionElement)))
          && bad.test(a.value)) out.push(`<${el.tagName}> ${a.name}="${a.value}"`);
    }
    if (el instanceof HTMLInputElement && bad.test(el.value)) out.push(`<input> .value=${el.value}`);
  }
  return out;
}"""

# Deliberate non-finite labels drawn on canvases: the line chart's marker legend and the
# histogram's zone label for formats without Inf ("float8_e4m3fn → NaN").
LEGEND_TEXTS = {"● NaN  ▲ +Inf  ▼ −Inf"}
ZONE_LABEL = re.compile("^({}) (→ 0|subnormal|normal|→ inf|→ NaN)$".format("|".join(map(re.escape, WHAT_IF))))
NUMERIC_LOOKING = re.compile(r"^[-+−]?(\d|\.\d|NaN|Inf|∞)")
BAD_LABEL = re.compile(r"NaN|Inf|undefined|null|∞")


def _label_problems(texts):
    """Canvas texts that are a non-finite or unparsable number where an axis label belongs."""
    out = set()
    for t in texts:
        s = t["text"].strip()
        if s in LEGEND_TEXTS or ZONE_LABEL.match(s):
            continue
        if BAD_LABEL.search(s):
            out.add(f"{t['canvas']}: {s!r} at ({t['x']}, {t['y']})")
        elif NUMERIC_LOOKING.match(s):
            try:
                ok = math.isfinite(float(s.replace("−", "-")))
            except ValueError:
                ok = False
            if not ok:
                out.add(f"{t['canvas']}: {s!r} at ({t['x']}, {t['y']})")
    return sorted(out)


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def storm_url(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("storm_logdir"))
    write_logdir(logdir)
    os.makedirs(ARTIFACTS, exist_ok=True)
    with tensorboard_server(logdir, os.path.join(ARTIFACTS, "tensorboard_storm.log"),
                            (STORM, HEALTHY)) as url:
        yield url


def _toggle(frame, label, on):
    frame.locator("main label.toggle", has_text=label).locator("input").set_checked(on)


def test_nan_storm_never_reaches_axes_or_layout(storm_url):
    dom_problems = []
    with gradient_health_tab(storm_url, INSTRUMENT) as (page, frame, console, page_errors):
        # the hooks are live in the plugin iframe: a canary is recorded, then forgotten
        assert frame.evaluate("window.__nf.hooks") > 30  # canvas API, style, sizes, slider
        canary = frame.evaluate("""() => {
          const n = window.__nf.bad.length;
          document.createElement('canvas').getContext('2d').lineTo(NaN, 0);
          document.createElement('div').style.width = 'NaN%';
          return window.__nf.bad.splice(n);
        }""")
        assert len(canary) == 2, canary

        def scan(what):
            for f in page.frames:
                dom_problems.extend(f"{what}: {x}" for x in f.evaluate(DOM_SCAN))

        # (1) overview: the storm card shows its skipped steps and non-finite norms
        _wait(page, lambda: len(frame.query_selector_all(".run-card")) == 2, "2 run cards")
        card = frame.locator(f".run-card[data-run={STORM}]")
        meta = card.locator(".card-meta").text_content()
        assert f"steps 0–{STEPS - 1} ({STEPS} logged)" in meta, meta
        assert f"{STEPS} skipped steps" in meta, meta
        norm_row = card.locator(".spark-row", has_text="global norm").text_content()
        assert f"{STEPS} non-finite" in norm_row, norm_row
        errors_chip = card.locator(".chip-error").text_content()
        assert int(errors_chip.split()[0]) >= len(LAYERS), errors_chip
        # the loss scale sparkline (2^15 … 2^-84 on a log axis) is drawn
        assert _ink(frame, f".run-card[data-run={STORM}] canvas.sparkline")[0] > 20
        scan("overview")
        _shot(page, "storm_overview")

        # (2) alerts: a non_finite error for every storm layer; a row opens its evidence
        _open_view(frame, "alerts")
        _wait(page, lambda: frame.query_selector_all(".alerts-table tbody tr"), "alert rows")
        flagged = set()
        for row in frame.query_selector_all(".alerts-table tbody tr"):
            cells = [c.text_content() for c in row.query_selector_all("td")]
            if cells[1] == STORM and cells[3] == "non_finite":
                assert cells[0] == "error", cells
                assert cells[4] == f"0–{STEPS - 1}", cells
                flagged.add(cells[2])
        assert flagged == set(LAYERS), flagged
        assert frame.locator(".alerts-table tbody tr", has_text="skipped_steps").filter(
            has_text=STORM).count() == 1
        scan("alerts")
        _shot(page, "storm_alerts")
        frame.locator(".alerts-table tbody tr", has_text="non_finite").filter(
            has_text=STORM).first.click()
        _appears(frame, "main[data-view=series] .line-chart canvas", "evidence chart")
        _settled(frame)
        assert _ink(frame, ".line-chart canvas")[0] > 500
        scan("alert evidence")

        # (3) time series: all-NaN next to healthy, log and linear y; tiny loss scales
        _open_view(frame, "series")
        for run in (STORM, HEALTHY):
            frame.locator(".run-check", has_text=run).locator("input").check()
            _settled(frame)
        for metric, layer in (("l2_norm", "dense_0/kernel"), ("mean", "dense_1/bias"),
                              ("update_ratio", "*"), ("zero_fraction", "dense_2/kernel")):
            _select(frame, "metric", metric)
            _settled(frame)
            if layer == "*":
                _select(frame, "group", GROUP)
                _settled(frame)
            _select(frame, "layer", layer)
            _settled(frame)
            for log_y in (True, False):
                _toggle(frame, "log y", log_y)
                _settled(frame)
                _wait(page, lambda: frame.query_selector(".line-chart canvas"), f"{metric} chart")
                box = frame.locator(".line-chart canvas").bounding_box()
                for fx in (0.1, 0.5, 0.95):
                    frame.locator(".line-chart canvas").hover(
                        position={"x": box["width"] * fx, "y": box["height"] / 2})
                assert "step" in frame.text_content(".chart-tooltip")
                scan(f"series {metric} {layer} log={log_y}")
        # only the storm run: no finite y at all, on a log and a linear axis
        frame.locator(".run-check", has_text=HEALTHY).locator("input").uncheck()
        _settled(frame)
        _select(frame, "metric", "l2_norm")
        _settled(frame)
        for log_y in (True, False):
            _toggle(frame, "log y", log_y)
            _settled(frame)
            legend = frame.text_content(".line-chart .legend")
            assert f"({STEPS} non-finite)" in legend, legend
            scan(f"series storm-only log={log_y}")
        _shot(page, "storm_series_nan")
        for metric in ("step/loss_scale", "step/skipped_step"):
            _select(frame, "metric", metric)
            _settled(frame)
            _toggle(frame, "log y", True)
            _settled(frame)
            assert _ink(frame, ".line-chart canvas")[0] > 300
            scan(f"series {metric}")
            if metric == "step/loss_scale":
                _shot(page, "storm_series_loss_scale")

        # (4) heatmap of the storm run: all NaN, all 0 (log and linear), counts
        _open_view(frame, "heatmap")
        _select(frame, "run", STORM)
        _settled(frame)
        for metric in ("l2_norm", "zero_fraction", "nan_count", "inf_count"):
            _select(frame, "metric", metric)
            _settled(frame)
            for log in (True, False):
                _toggle(frame, "log colour", log)
                _settled(frame)
                heat = _appears(frame, ".heatmap canvas.chart-canvas", f"heatmap {metric}")
                assert _ink(frame, ".heatmap canvas.chart-canvas")[0] > 1000
                box = heat.bounding_box()
                frame.locator(".heatmap canvas.chart-canvas").hover(
                    position={"x": box["width"] * 0.7, "y": 8 + 14 * 2.5})
                scan(f"heatmap {metric} log={log}")
                if metric == "l2_norm" and not log:
                    tip = frame.locator(".heatmap .chart-tooltip").inner_text()
                    assert "l2_norm = NaN" in tip, tip
                    _shot(page, "storm_heatmap")

        # (5) histogram: all-zero counts (no finite value to bin) -> the empty message, not
        # an empty chart; step through with the buttons and the slider
        _open_view(frame, "histogram")
        _select(frame, "run", STORM)
        _settled(frame)
        _select(frame, "layer", "dense_0/kernel")
        _settled(frame)
        title = lambda: frame.text_content(".view-histogram .chart-title") or ""  # noqa: E731
        empty = "No nonzero finite values at this step."

        def shows_empty(step):
            _wait(page, lambda: title().endswith(f"step {step}"), f"histogram of step {step}")
            _settled(frame)
            assert frame.text_content(".view-histogram .message-empty") == empty
            assert not frame.query_selector(".view-histogram .histogram canvas")
            chips = frame.text_content(".view-histogram .chips")
            assert "values 64" in chips and "NaN" in chips and "Inf" in chips, chips
            scan(f"histogram step {step}")

        shows_empty(STEPS - 1)
        for log in (True, False):
            _toggle(frame, "log counts", log)
            shows_empty(STEPS - 1)
        for k in range(1, 4):  # odd steps: 64 empty bins; even steps: one empty bin at 2^0
            frame.click("button[title='previous step']")
            shows_empty(STEPS - 1 - k)
        frame.click("button[title='next step']")
        shows_empty(STEPS - 3)
        frame.evaluate("""() => {
          const s = document.querySelector('input.step-slider');
          s.value = '0'; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));
        }""")
        shows_empty(0)
        assert "(1 of 100 with a histogram)" in frame.text_content(".step-label")
        _shot(page, "storm_histogram")
        _select(frame, "layer", "*")
        _wait(page, lambda: title().startswith(f"group {GROUP}"), "group histogram")
        _settled(frame)
        assert frame.text_content(".view-histogram .message-empty") == empty
        scan("histogram group")

        # (6) compare storm vs healthy, log and linear bars, sorted by ratio
        _open_view(frame, "compare")
        _select(frame, "run A", STORM)
        _settled(frame)
        _select(frame, "run B", HEALTHY)
        _settled(frame)
        for metric in ("l2_norm", "mean", "zero_fraction", "nan_count"):
            _select(frame, "metric", metric)
            _settled(frame)
            for log in (True, False):
                _toggle(frame, "log bars", log)
                _settled(frame)
                assert frame.locator(".compare-table tbody tr").count() == len(LAYERS)
                scan(f"compare {metric} log={log}")
        _select(frame, "metric", "l2_norm")
        _settled(frame)
        _select(frame, "sort", "ratio")
        _settled(frame)
        cells = frame.locator(".compare-table tbody tr").first.locator("td").all_text_contents()
        assert cells[1] == "NaN" and cells[3] == "NaN", cells
        scan("compare sorted")
        _shot(page, "storm_compare")

        bad_calls = frame.evaluate("window.__nf.bad")
        texts = frame.evaluate("window.__nf.texts")
        other_bad = [(f.url, f.evaluate("(window.__nf || {bad: []}).bad"))
                     for f in page.frames if f != frame]
        csp = [(f.url, f.evaluate("window.__csp || []")) for f in page.frames]

    bad_calls = sorted(set(bad_calls))
    assert not bad_calls, "non-finite numbers reached the canvas/style/attributes:\n" + "\n".join(bad_calls)
    assert not [b for _, b in other_bad if b], other_bad
    assert len(texts) > 500 and any(t["canvas"] == "chart-canvas" for t in texts)
    problems = _label_problems(texts)
    assert not problems, problems
    assert not dom_problems, dom_problems
    assert not [c for _, c in csp if c], csp
    errors = [text for kind, text in console if kind == "error"]
    assert not errors, errors
    assert not page_errors, page_errors
    assert not any("Content Security Policy" in text for _, text in console)
