// Time series of one metric of one layer (or a whole dtype group, layer "*"), several runs
// overlaid, with a log-y toggle and hover values. Step metrics (loss scale, skipped steps…)
// come from ./step_series and are listed as "step/<name>".

import { h, clear, fmt, message, select, toggle, lineChart } from "../charts.js";

const LOG_DEFAULT = new Set(["l2_norm", "abs_max", "abs_min_nonzero", "variance", "std", "update_ratio", "step/loss_scale"]);

export async function render(el, ctx) {
  const alive = ctx.aliveFn();
  const st = ctx.state.series;
  const all = ctx.runNames();
  st.runs = (st.runs || []).filter((r) => all.includes(r));
  if (!st.runs.length) {
    const first = ctx.defaultRun();
    const g = (ctx.run(first).groups || [])[0]?.group;
    st.runs = all.filter((r) => r === first || ctx.group(r, g)).slice(0, 6);
  }
  const groups = ctx.groups(st.runs);
  if (!groups.includes(st.group)) {
    st.group = st.layer && st.layer !== "*" ? ctx.groupOfLayer(st.runs[0], st.layer) : undefined;
    if (!groups.includes(st.group)) st.group = groups[0];
  }
  const rows = ctx.rows(st.runs, st.group);
  if (!rows.includes(st.layer)) st.layer = rows.includes("*") ? "*" : rows[0];
  const columns = ctx.columns(st.runs, st.group);
  const metrics = [...columns, ...ctx.stepMetrics.map((m) => `step/${m}`)];
  if (!metrics.includes(st.metric)) st.metric = columns.includes("l2_norm") ? "l2_norm" : metrics[0];
  if (st.logY === undefined) st.logY = LOG_DEFAULT.has(st.metric);
  const isStep = st.metric.startsWith("step/");

  const runBoxes = h("fieldset", { class: "control run-picker" }, h("legend", {}, "runs"));
  for (const r of all) {
    const box = h("input", { type: "checkbox", checked: st.runs.includes(r), onChange: () => {
      const next = box.checked ? [...st.runs, r] : st.runs.filter((x) => x !== r);
      ctx.go("series", { runs: all.filter((x) => next.includes(x)) });
    } });
    runBoxes.appendChild(h("label", { class: "run-check" }, box,
      h("span", { class: "swatch", style: { background: ctx.color(r) } }), r));
  }
  const controls = h("div", { class: "controls" },
    select("metric", metrics, st.metric, (v) => ctx.go("series", { metric: v, logY: LOG_DEFAULT.has(v), highlight: null })),
    select("group", groups, st.group, (v) => ctx.go("series", { group: v, layer: "*" })),
    select("layer", rows.map((r) => [r, r === "*" ? "* (whole group)" : r]), st.layer, (v) => ctx.go("series", { layer: v })),
    toggle("log y", st.logY, (v) => ctx.go("series", { logY: v })),
    h("a", { class: "link", download: "gradient_health_series.csv",
      href: ctx.api.exportUrl({ view: "series", run: st.runs, metric: st.metric, layer: st.layer, group: st.group }) }, "CSV"));
  if (isStep) for (const c of controls.querySelectorAll("select")) if (c !== controls.querySelector("select")) c.disabled = true;
  el.appendChild(controls);
  el.appendChild(runBoxes);
  const body = h("div", { class: "chart-box" }, h("div", { class: "loading" }, "loading…"));
  el.appendChild(body);
  if (!st.runs.length) { clear(body).appendChild(message("empty", "Pick at least one run.")); return; }

  // only the runs that have this layer (or group) can answer
  const has = (r) => (st.layer === "*" ? !!ctx.group(r, st.group) : ctx.groupOfLayer(r, st.layer) !== undefined);
  const asked = isStep ? st.runs : st.runs.filter(has);
  const missing = st.runs.filter((r) => !asked.includes(r));
  if (!asked.length) {
    clear(body).appendChild(message("empty", "None of the selected runs logs this layer."));
    return;
  }
  const width = Math.max(300, Math.floor(body.getBoundingClientRect().width || 800));
  const maxPoints = Math.min(20000, Math.max(200, width * 2));
  let data;
  if (isStep) {
    data = await ctx.api.stepSeries({ run: asked, metric: st.metric.slice(5), max_points: maxPoints });
  } else {
    const params = { run: asked, metric: st.metric, layer: st.layer, max_points: maxPoints };
    if (st.layer === "*") params.group = st.group;
    data = await ctx.api.series(params);
  }
  if (!alive()) return;
  clear(body);
  const lines = (data.series || []).map((s) => ({
    name: data.series.length > 1 || isStep ? s.run : `${s.run} · ${s.layer === "*" ? s.group : s.layer}`,
    color: ctx.color(s.run), xs: s.steps || [], ys: s.values || [],
  }));
  const title = isStep ? st.metric.slice(5) : `${st.metric} of ${st.layer === "*" ? `group ${st.group}` : st.layer}`;
  body.appendChild(h("div", { class: "chart-title" }, title));
  if (!lines.some((l) => l.xs.length)) { body.appendChild(message("empty", "No points for this selection.")); return; }
  const hl = st.highlight && Number.isFinite(st.highlight[0]) ? st.highlight : null;
  lineChart(body, {
    series: lines, logY: st.logY, height: 320, xLabel: "step", yLabel: isStep ? st.metric.slice(5) : st.metric,
    bands: hl ? [{ from: hl[0], to: hl[1] }] : [],
    onClick: isStep ? null : (x) => {
      ctx.go("histogram", { run: st.runs[0], group: st.group, layer: st.layer, step: Math.round(x) });
    },
  });
  body.appendChild(h("div", { class: "hint" },
    missing.length ? `Not in ${missing.join(", ")}. ` : "",
    hl ? `Shaded: alert steps ${fmt(hl[0])}–${fmt(hl[1])}. ` : "",
    isStep ? "" : "Click the chart to open the histogram of this layer at that step. ",
    "Server-side downsampling keeps each bucket's min, max and any NaN/Inf."));
}
