// Two runs compared layer by layer: paired bars of one metric and the ratio B/A.

import { h, clear, fmt, message, select, toggle } from "../charts.js";

function barWidth(v, max, log, minLog) {
  if (!Number.isFinite(v) || !(max > 0)) return 0;
  if (log) {
    if (v <= 0) return 0;
    const top = Math.log10(max), bottom = minLog;
    return Math.max(1, ((Math.log10(v) - bottom) / (top - bottom || 1)) * 100);
  }
  return (Math.abs(v) / max) * 100;
}

export async function render(el, ctx) {
  const alive = ctx.aliveFn();
  const st = ctx.state.compare;
  const runNames = ctx.runNames();
  if (!runNames.includes(st.run_a) || !runNames.includes(st.run_b)) {
    // default: the pair of runs sharing the most layer names
    const layersOf = (r) => new Set((ctx.run(r).groups || []).flatMap((g) => (g.rows || []).filter((x) => x !== "*")));
    let best = [runNames[0], runNames[1] || runNames[0]], most = -1;
    for (let i = 0; i < runNames.length; i++) {
      for (let j = i + 1; j < runNames.length; j++) {
        const a = layersOf(runNames[i]);
        const shared = [...layersOf(runNames[j])].filter((x) => a.has(x)).length;
        if (shared > most) { most = shared; best = [runNames[i], runNames[j]]; }
      }
    }
    if (!runNames.includes(st.run_a)) st.run_a = best[0];
    if (!runNames.includes(st.run_b)) st.run_b = best[0] === st.run_a ? best[1] : runNames.find((r) => r !== st.run_a) || st.run_a;
  }
  const columns = ctx.columns([st.run_a, st.run_b]);
  if (!columns.includes(st.metric)) st.metric = columns.includes("l2_norm") ? "l2_norm" : columns[0];
  if (st.log === undefined) st.log = true;
  el.appendChild(h("div", { class: "controls" },
    select("run A", runNames, st.run_a, (v) => ctx.go("compare", { run_a: v, step: undefined })),
    select("run B", runNames, st.run_b, (v) => ctx.go("compare", { run_b: v, step: undefined })),
    select("metric", columns, st.metric, (v) => ctx.go("compare", { metric: v })),
    select("sort", [["model", "model order"], ["ratio", "ratio B/A"], ["a", "value A"]], st.sort || "model",
      (v) => ctx.go("compare", { sort: v })),
    toggle("log bars", st.log, (v) => ctx.go("compare", { log: v })),
    h("a", { class: "link", download: "gradient_health_compare.csv",
      href: ctx.api.exportUrl({ view: "compare", run_a: st.run_a, run_b: st.run_b, metric: st.metric }) }, "CSV")));
  const body = h("div", { class: "chart-box" }, h("div", { class: "loading" }, "loading…"));
  el.appendChild(body);
  if (runNames.length < 2) { clear(body).appendChild(message("empty", "Comparing needs two runs.")); return; }
  const data = await ctx.api.compare({ run_a: st.run_a, run_b: st.run_b, metric: st.metric, step: st.step });
  if (!alive()) return;
  clear(body);
  const layers = data.layers || [];
  if (!layers.length) { body.appendChild(message("empty", "The two runs share no layer names.")); return; }
  let idx = layers.map((_, i) => i);
  const ratio = (i) => data.b[i] / data.a[i];
  const key = (v) => (Number.isFinite(v) ? v : -Infinity);
  if (st.sort === "ratio") idx.sort((x, y) => key(Math.abs(Math.log(ratio(y)))) - key(Math.abs(Math.log(ratio(x)))));
  if (st.sort === "a") idx.sort((x, y) => key(data.a[y]) - key(data.a[x]));
  const finite = [...data.a, ...data.b].filter((v) => Number.isFinite(v));
  const max = Math.max(0, ...finite.map(Math.abs));
  const pos = finite.filter((v) => v > 0);
  const minLog = pos.length ? Math.floor(Math.log10(Math.min(...pos))) - 0.5 : -1;
  body.appendChild(h("div", { class: "chart-title" },
    `${st.metric} · A = ${st.run_a} (step ${fmt(data.step_a)}) · B = ${st.run_b} (step ${fmt(data.step_b)})`));
  const table = h("table", { class: "data-table compare-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "layer"),
      h("th", { class: "num" }, h("span", { class: "swatch", style: { background: ctx.color(st.run_a) } }), "A"),
      h("th", { class: "num" }, h("span", { class: "swatch", style: { background: ctx.color(st.run_b) } }), "B"),
      h("th", { class: "num" }, "B / A"), h("th", { class: "bars-col" }, st.log ? "bars (log)" : "bars"))));
  const tb = h("tbody");
  for (const i of idx) {
    const r = ratio(i);
    const far = Number.isFinite(r) && (r > 2 || r < 0.5);
    const cell = (v) => h("td", { class: `num${Number.isFinite(v) ? "" : " bad"}` }, fmt(v));
    tb.appendChild(h("tr", { class: "clickable", title: "Open both runs' time series of this layer",
      onClick: () => ctx.go("series", { runs: [st.run_a, st.run_b], layer: layers[i], group: ctx.groupOfLayer(st.run_a, layers[i]), metric: st.metric }) },
      h("td", { class: "layer-name", title: layers[i] }, layers[i]),
      cell(data.a[i]), cell(data.b[i]),
      h("td", { class: `num${far ? " warn" : ""}${Number.isFinite(r) ? "" : " muted"}` }, Number.isFinite(r) ? `${fmt(r, 3)}×` : fmt(r)),
      h("td", { class: "bars-col" },
        h("div", { class: "pair-bar", style: { width: `${barWidth(data.a[i], max, st.log, minLog)}%`, background: ctx.color(st.run_a) } }),
        h("div", { class: "pair-bar", style: { width: `${barWidth(data.b[i], max, st.log, minLog)}%`, background: ctx.color(st.run_b) } }))));
  }
  table.appendChild(tb);
  body.appendChild(table);
}
