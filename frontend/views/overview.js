// Health overview: one compact card per run with its dtype policy, alert counts, worst layers
// and sparklines of the loss scale and the global gradient norm.

import { h, fmt, message, sparkline } from "../charts.js";

function lastFinite(values) {
  for (let i = (values || []).length - 1; i >= 0; i--) if (Number.isFinite(values[i])) return values[i];
  return values && values.length ? values[values.length - 1] : undefined;
}

function spark(label, data, opts, onClick) {
  const steps = (data && data.steps) || [];
  const values = (data && data.values) || [];
  const box = h("div", { class: "spark-row", onClick, title: onClick ? "Open as time series" : null });
  box.appendChild(h("span", { class: "spark-label" }, label));
  if (steps.length) {
    sparkline(box, steps, values, { width: 140, height: 28, ...opts, title: `${label}: ${steps.length} points` });
    const nonFinite = values.filter((v) => !Number.isFinite(v)).length;
    box.appendChild(h("span", { class: "spark-value", title: fmt(lastFinite(values), 8) }, fmt(lastFinite(values), 3),
      nonFinite ? h("span", { class: "bad" }, ` · ${nonFinite} non-finite`) : null));
  } else {
    box.appendChild(h("span", { class: "muted" }, "not logged"));
  }
  return box;
}

function card(r, ctx) {
  const info = ctx.run(r.run) || {};
  const a = r.alerts || {};
  const chip = (sev, n) => h("button", {
    type: "button", class: `chip chip-${sev}${n ? "" : " chip-zero"}`,
    title: `Show ${sev} alerts of this run`,
    onClick: () => ctx.go("alerts", { run: r.run, severity: sev }),
  }, `${n || 0} ${sev}`);
  const steps = info.steps || {};
  const el = h("article", { class: "card run-card", "data-run": r.run },
    h("div", { class: "card-head" },
      h("span", { class: "swatch", style: { background: ctx.color(r.run) } }),
      h("span", { class: "card-title", title: r.run }, r.run),
      h("span", { class: "badge" }, r.policy || info.policy || "?")),
    h("div", { class: "card-meta" },
      steps.count
        ? `steps ${steps.first}–${steps.last} (${steps.count} ${info.capped ? "shown" : "logged"})`
        : "no steps",
      info.replicas > 1 ? ` · ${info.replicas} replicas` : "",
      r.skipped_steps ? h("span", { class: "bad" }, ` · ${r.skipped_steps} skipped steps`) : ""),
    info.note ? h("div", { class: "card-meta muted", title: info.note }, info.note) : "",
    h("div", { class: "chips" }, chip("error", a.error), chip("warning", a.warning), chip("info", a.info)));
  el.appendChild(spark("loss scale", r.loss_scale, { logY: true, color: "#1976d2" },
    () => ctx.go("series", { runs: [r.run], metric: "step/loss_scale" })));
  el.appendChild(spark("global norm", r.global_norm, { logY: true, color: "#f57c00" },
    () => ctx.go("series", { runs: [r.run], metric: "l2_norm", layer: "*", group: (info.groups || [])[0]?.group })));
  const worst = r.worst_layers || [];
  const list = h("table", { class: "mini-table" });
  list.appendChild(h("tr", {}, h("th", {}, "worst layers"), h("th", {}, "metric"), h("th", { class: "num" }, "value")));
  for (const w of worst.slice(0, 5)) {
    list.appendChild(h("tr", {
      class: "clickable", title: "Open this layer's time series",
      onClick: () => ctx.go("series", { runs: [r.run], group: w.group, layer: w.layer, metric: w.metric }),
    },
    h("td", { class: "layer-name", title: w.layer }, w.layer),
    h("td", {}, w.metric),
    h("td", { class: `num${Number.isFinite(w.value) ? "" : " bad"}` }, fmt(w.value))));
  }
  if (worst.length) el.appendChild(list);
  else el.appendChild(h("div", { class: "muted" }, "no layer stands out"));
  const links = h("div", { class: "card-links" },
    h("button", { type: "button", class: "link", onClick: () => ctx.go("heatmap", { run: r.run }) }, "heatmap"),
    h("button", { type: "button", class: "link", onClick: () => ctx.go("histogram", { run: r.run }) }, "histogram"),
    h("button", { type: "button", class: "link", onClick: () => ctx.go("series", { runs: [r.run] }) }, "series"));
  el.appendChild(links);
  return el;
}

export async function render(el, ctx) {
  const alive = ctx.aliveFn();
  const body = h("div", { class: "loading" }, "loading…");
  el.appendChild(body);
  const data = await ctx.api.overview();
  if (!alive()) return;
  body.remove();
  const runs = data.runs || [];
  if (!runs.length) { el.appendChild(message("empty", "No runs.")); return; }
  const grid = h("div", { class: "card-grid" });
  for (const r of runs) grid.appendChild(card(r, ctx));
  el.appendChild(grid);
}
