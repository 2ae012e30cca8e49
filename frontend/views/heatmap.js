// Layer × step heatmap of one metric for one run and dtype group. Readable at 500 layers ×
// 2000 steps: the server aggregates columns (max) and bands rows beyond max_rows; the canvas
// is drawn pixel-exact. Clicking a cell opens the histogram of that layer at that step.

import { h, clear, fmt, message, select, toggle, heatmap as drawHeatmap } from "../charts.js";

const LOG_DEFAULT = new Set(["l2_norm", "abs_max", "abs_min_nonzero", "variance", "std", "update_ratio", "count", "zero_count"]);

export async function render(el, ctx) {
  const alive = ctx.aliveFn();
  const st = ctx.state.heatmap;
  const runNames = ctx.runNames();
  if (!runNames.includes(st.run)) st.run = ctx.defaultRun();
  const groups = ctx.groups([st.run]);
  if (!groups.includes(st.group)) st.group = groups[0];
  const columns = ctx.columns([st.run], st.group);
  if (!columns.includes(st.metric)) st.metric = columns.includes("zero_fraction") ? "zero_fraction" : columns[0];
  if (st.log === undefined) st.log = LOG_DEFAULT.has(st.metric);
  el.appendChild(h("div", { class: "controls" },
    select("run", runNames, st.run, (v) => ctx.go("heatmap", { run: v })),
    select("group", groups, st.group, (v) => ctx.go("heatmap", { group: v })),
    select("metric", columns, st.metric, (v) => ctx.go("heatmap", { metric: v, log: LOG_DEFAULT.has(v) })),
    toggle("log colour", st.log, (v) => ctx.go("heatmap", { log: v })),
    h("a", { class: "link", download: "gradient_health_heatmap.csv",
      href: ctx.api.exportUrl({ view: "heatmap", run: st.run, group: st.group, metric: st.metric }) }, "CSV")));
  const body = h("div", { class: "chart-box" }, h("div", { class: "loading" }, "loading…"));
  el.appendChild(body);
  if (!st.run || !st.group || !st.metric) { clear(body).appendChild(message("empty", "Nothing to show.")); return; }
  const width = Math.floor(body.getBoundingClientRect().width || 1000);
  const data = await ctx.api.heatmap({
    run: st.run, group: st.group, metric: st.metric,
    max_steps: Math.min(2000, Math.max(50, width - 200)), max_rows: 500,
  });
  if (!alive()) return;
  clear(body);
  const rows = data.rows || [];
  const values = data.values || [];
  if (!rows.length || !values.length || !values[0].length) { body.appendChild(message("empty", "No data for this metric.")); return; }
  const allRows = ctx.group(st.run, st.group)?.rows || [];
  const ranges = data.step_ranges || [];
  const steps = data.steps || [];
  const layerOf = (i) => {
    const idx = data.row_index ? data.row_index[i] : i;
    return allRows[idx] !== undefined ? allRows[idx] : rows[i];
  };
  body.appendChild(h("div", { class: "chart-title" },
    `${st.metric} · ${st.run} · ${st.group} · ${rows.length} rows × ${steps.length} columns (${data.aggregate || "max"} per cell)`));
  drawHeatmap(body, {
    rows: rows.map((r) => (r === "*" ? `* (${st.group})` : r)),
    values, log: st.log, cellHeight: 14, maxHeight: 1000,
    colLabel: (j) => fmt(steps[j]),
    describe: (i, j) => {
      const r = ranges[j] || [steps[j], steps[j]];
      return [
        { text: rows[i] === "*" ? `* (whole ${st.group})` : rows[i], bold: true },
        { text: r[0] === r[1] ? `step ${fmt(r[0])}` : `steps ${fmt(r[0])}–${fmt(r[1])}` },
        { text: `${st.metric} = ${fmt(values[i][j])}` },
        { text: "click: histogram" },
      ];
    },
    onClick: (i, j) => {
      const layer = layerOf(i);
      ctx.go("histogram", { run: st.run, group: st.group, layer, step: steps[j] });
    },
  });
  body.appendChild(h("div", { class: "hint" },
    "Each cell is the max over the logged steps it covers (NaN kept); rows beyond 500 are banded. ",
    "Hover for values, click for the log2 histogram of that layer at that step."));
}
