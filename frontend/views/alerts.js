// Alerts table: every finding of the health rules; a row opens its evidence (the layer's time
// series of the metric the rule looked at, or its heatmap / histogram).

import { h, fmt, message, select } from "../charts.js";

const SEVERITIES = ["info", "warning", "error"];
const RANK = { info: 0, warning: 1, error: 2 };

/** The metric an alert is about: the server names it; older servers' alerts are guessed from the text. */
export function alertMetric(alert, columns, stepMetrics) {
  if (alert.metric && stepMetrics.includes(alert.metric)) return `step/${alert.metric}`;
  if (alert.metric && columns.includes(alert.metric)) return alert.metric;
  const text = `${alert.rule || ""} ${alert.message || ""}`.toLowerCase();
  for (const m of stepMetrics) if (text.includes(m)) return `step/${m}`;
  const hits = columns.filter((c) => text.includes(c.toLowerCase())).sort((a, b) => b.length - a.length);
  if (hits.length) return hits[0];
  const dtype = ((alert.group || "").split("@")[1]) || "float16";
  const guesses = [
    ["skip", "step/skipped_step"], ["loss scale", "step/loss_scale"], ["loss_scale", "step/loss_scale"],
    ["nan", "nan_count"], ["nonfinite", "nan_count"], ["non-finite", "nan_count"], ["inf", "inf_count"],
    ["underflow", `underflow_fraction/${dtype}`], ["subnormal", `subnormal_fraction/${dtype}`],
    ["overflow", `overflow_fraction/${dtype}`], ["dead", "zero_fraction"], ["zero", "zero_fraction"],
    ["update", "update_ratio"], ["explod", "l2_norm"], ["vanish", "l2_norm"], ["norm", "l2_norm"],
  ];
  for (const [word, metric] of guesses) {
    if (text.includes(word) && (metric.startsWith("step/") || columns.includes(metric))) return metric;
  }
  return "l2_norm";
}

function evidence(a, ctx) {
  const columns = ctx.columns([a.run], a.group);
  const metric = alertMetric(a, columns, ctx.stepMetrics);
  const group = a.group || ctx.groupOfLayer(a.run, a.layer);
  const layer = a.layer || "*";
  const band = { highlight: [a.first_step, a.last_step] };
  return {
    series: () => ctx.go("series", { runs: [a.run], group, layer, metric, ...band }),
    heatmap: () => ctx.go("heatmap", { run: a.run, group, metric: metric.startsWith("step/") ? "zero_fraction" : metric }),
    histogram: () => ctx.go("histogram", { run: a.run, group, layer, step: a.last_step }),
    metric,
  };
}

export async function render(el, ctx) {
  const alive = ctx.aliveFn();
  const st = ctx.state.alerts;
  const runNames = ctx.runNames();
  if (st.run && !runNames.includes(st.run)) st.run = "";
  const controls = h("div", { class: "controls" },
    select("run", [["", "all runs"], ...runNames.map((r) => [r, r])], st.run || "", (v) => ctx.go("alerts", { run: v })),
    select("min severity", [["", "all"], ...SEVERITIES.map((s) => [s, s])], st.severity || "",
      (v) => ctx.go("alerts", { severity: v })));
  el.appendChild(controls);
  const data = await ctx.api.alerts({ run: st.run ? [st.run] : [], severity: st.severity || undefined });
  if (!alive()) return;
  let list = data.alerts || [];
  if (st.severity) list = list.filter((a) => (RANK[a.severity] ?? 0) >= RANK[st.severity]);
  list = list.slice().sort((x, y) => (RANK[y.severity] ?? 0) - (RANK[x.severity] ?? 0) || x.first_step - y.first_step);
  controls.appendChild(h("span", { class: "muted" }, `${list.length} alert(s)`));
  if (!list.length) {
    el.appendChild(message("empty", "No alerts: every rule passed for the selected runs."));
  } else {
    const table = h("table", { class: "data-table alerts-table" },
      h("thead", {}, h("tr", {}, ["severity", "run", "layer", "rule", "steps", "value", "threshold", "message", "evidence"]
        .map((t) => h("th", { class: ["value", "threshold"].includes(t) ? "num" : "" }, t)))));
    const tbody = h("tbody");
    for (const a of list) {
      const ev = evidence(a, ctx);
      tbody.appendChild(h("tr", { class: `clickable sev-${a.severity}`, title: `Open ${ev.metric} of this layer`, onClick: ev.series },
        h("td", {}, h("span", { class: `chip chip-${a.severity}` }, a.severity)),
        h("td", { class: "run-name" }, h("span", { class: "swatch", style: { background: ctx.color(a.run) } }), a.run),
        h("td", { class: "layer-name", title: a.layer }, a.layer === "*" ? `${a.group} (all)` : a.layer),
        h("td", {}, a.rule),
        h("td", { class: "num" }, a.first_step === a.last_step ? fmt(a.first_step) : `${fmt(a.first_step)}–${fmt(a.last_step)}`),
        h("td", { class: `num${Number.isFinite(a.value) ? "" : " bad"}` }, fmt(a.value)),
        h("td", { class: "num" }, fmt(a.threshold)),
        h("td", { class: "message-cell" }, a.message),
        h("td", { class: "evidence" },
          h("button", { type: "button", class: "link", onClick: (e) => { e.stopPropagation(); ev.series(); } }, "series"),
          // step-level alerts (loss scale, skipped steps) have no layer to map or histogram
          ev.metric.startsWith("step/") ? null : [
            h("button", { type: "button", class: "link", onClick: (e) => { e.stopPropagation(); ev.heatmap(); } }, "heatmap"),
            h("button", { type: "button", class: "link", onClick: (e) => { e.stopPropagation(); ev.histogram(); } }, "histogram")])));
    }
    table.appendChild(tbody);
    el.appendChild(table);
  }
  const skipped = data.skipped || [];
  if (skipped.length) {
    el.appendChild(h("h3", {}, "Skipped"));
    const ul = h("ul", { class: "skipped" });
    for (const s of skipped) ul.appendChild(h("li", {}, `${s.run} · ${s.tag}: ${s.reason}`));
    el.appendChild(ul);
  }
}
