// Gradient Health tab: entry point loaded by TensorBoard's plugin iframe
// (`import("./index.js").then(m => m.render())`). Builds the page, holds the view state,
// switches views and polls ./runs every 30 s so new steps appear without a reload.

import { api } from "./api.js";
import { h, clear, message, RUN_COLORS } from "./charts.js";
import * as overview from "./views/overview.js";
import * as alerts from "./views/alerts.js";
import * as series from "./views/series.js";
import * as heatmap from "./views/heatmap.js";
import * as histogram from "./views/histogram.js";
import * as compare from "./views/compare.js";

const VIEWS = [
  ["overview", "Overview", overview],
  ["alerts", "Alerts", alerts],
  ["series", "Time series", series],
  ["heatmap", "Heatmap", heatmap],
  ["histogram", "Histogram", histogram],
  ["compare", "Compare runs", compare],
];
const POLL_MS = 30000;
const STEP_METRICS = ["loss_scale", "skipped_step", "replicas", "nonfinite_replicas", "nonfinite_applied"];

/** Shared state and helpers handed to every view. */
function makeContext(root) {
  const ctx = {
    api,
    runs: [],
    skipped: [],
    formats: [],
    stepMetrics: STEP_METRICS,
    state: { view: "overview", overview: {}, alerts: {}, series: {}, heatmap: {}, histogram: {}, compare: {} },
    generation: 0,
    root,
  };
  ctx.run = (name) => ctx.runs.find((r) => r.run === name);
  ctx.runNames = () => ctx.runs.map((r) => r.run);
  ctx.color = (name) => {
    const i = ctx.runs.findIndex((r) => r.run === name);
    return RUN_COLORS[(i < 0 ? 0 : i) % RUN_COLORS.length];
  };
  ctx.groups = (runNames) => {
    const out = [];
    for (const n of runNames) for (const g of ctx.run(n)?.groups || []) if (!out.includes(g.group)) out.push(g.group);
    return out;
  };
  ctx.group = (runName, group) => (ctx.run(runName)?.groups || []).find((g) => g.group === group);
  ctx.rows = (runNames, group) => {
    const out = [];
    for (const n of runNames) for (const r of ctx.group(n, group)?.rows || []) if (!out.includes(r)) out.push(r);
    return out;
  };
  ctx.columns = (runNames, group) => {
    const out = [];
    for (const n of runNames) {
      for (const g of ctx.run(n)?.groups || []) {
        if (group && g.group !== group) continue;
        for (const c of g.columns || []) if (!out.includes(c)) out.push(c);
      }
    }
    return out;
  };
  ctx.groupOfLayer = (runName, layer) => {
    for (const g of ctx.run(runName)?.groups || []) if ((g.rows || []).includes(layer)) return g.group;
    return undefined;
  };
  /** The run with the most data (rows × logged steps): the default for single-run views. */
  ctx.defaultRun = () => {
    let best = ctx.runs[0], size = -1;
    for (const r of ctx.runs) {
      const rows = (r.groups || []).reduce((s, g) => s + (g.rows || []).length, 0);
      const n = rows * ((r.steps && r.steps.count) || 0);
      if (n > size) { best = r; size = n; }
    }
    return best && best.run;
  };
  ctx.format = (name) => ctx.formats.find((f) => f.name === name);
  /** Switches to `view` with `patch` merged into its state. */
  ctx.go = (view, patch = {}) => {
    ctx.state[view] = { ...ctx.state[view], ...patch };
    ctx.state.view = view;
    renderView(ctx);
  };
  /** True while the render that captured `gen` is still the current one. */
  ctx.aliveFn = () => {
    const gen = ctx.generation;
    return () => gen === ctx.generation;
  };
  return ctx;
}

function renderTabs(ctx) {
  clear(ctx.tabs);
  for (const [id, label] of VIEWS) {
    ctx.tabs.appendChild(h("button", {
      class: `tab${ctx.state.view === id ? " tab-active" : ""}`,
      type: "button",
      "data-view": id,
      onClick: () => ctx.go(id),
    }, label));
  }
}

async function renderView(ctx) {
  ctx.generation += 1;
  renderTabs(ctx);
  const main = clear(ctx.main);
  main.setAttribute("data-view", ctx.state.view);
  if (!ctx.runs.length) {
    main.appendChild(message("empty", ctx.loadError
      ? `Could not load runs: ${ctx.loadError}`
      : "No Gradient Health data in this logdir yet. Add the GradientHealthCallback to model.fit() " +
        "(or write with GradientHealthWriter); this page checks for new data every 30 s."));
    return;
  }
  const entry = VIEWS.find(([id]) => id === ctx.state.view) || VIEWS[0];
  const view = h("section", { class: `view view-${entry[0]}` });
  main.appendChild(view);
  try {
    await entry[2].render(view, ctx);
  } catch (e) {
    console.warn("gradient_health view failed", e);
    view.appendChild(message("error", `Could not show ${entry[1]}: ${e.message || e}`));
  }
}

function runsSignature(data) {
  return JSON.stringify([
    (data.runs || []).map((r) => [r.run, r.steps && r.steps.last, r.steps && r.steps.count,
      (r.groups || []).map((g) => [g.group, (g.rows || []).length])]),
    (data.skipped || []).length,
  ]);
}

function renderSkipped(ctx) {
  clear(ctx.notice);
  if (!ctx.skipped.length) return;
  const details = h("details", { class: "notice" },
    h("summary", {}, `${ctx.skipped.length} tag(s) skipped while reading`));
  const list = h("ul");
  for (const s of ctx.skipped) list.appendChild(h("li", {}, `${s.run} · ${s.tag}: ${s.reason}`));
  details.appendChild(list);
  ctx.notice.appendChild(details);
}

async function loadRuns(ctx, { force = false } = {}) {
  let data;
  try {
    data = await api.runs();
    ctx.loadError = null;
  } catch (e) {
    ctx.loadError = e.message;
    ctx.status.textContent = `update failed: ${e.message}`;
    if (!ctx.runs.length || force) renderView(ctx);
    return;
  }
  const sig = runsSignature(data);
  const changed = sig !== ctx.signature;
  ctx.signature = sig;
  ctx.runs = data.runs || [];
  ctx.skipped = data.skipped || [];
  const last = Math.max(-1, ...ctx.runs.map((r) => (r.steps ? r.steps.last : -1)));
  ctx.status.textContent = `${ctx.runs.length} run(s)${last >= 0 ? `, last step ${last}` : ""} · checked ${new Date().toLocaleTimeString()}`;
  if (force) {
    renderSkipped(ctx);
    await renderView(ctx);
  } else if (changed) {
    // New steps arrived: redraw the current view in place, keeping the scroll position,
    // unless the user is in the middle of using a control (then the next poll does it).
    const active = document.activeElement;
    if (active && ctx.root.contains(active) && /^(SELECT|INPUT)$/.test(active.tagName)) {
      ctx.signature = null;
      return;
    }
    const y = window.scrollY;
    renderSkipped(ctx);
    await renderView(ctx);
    window.scrollTo(0, y);
  }
}

function injectStylesheet() {
  if (document.querySelector("link[data-gradient-health]")) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "./style.css";
  link.setAttribute("data-gradient-health", "");
  document.head.appendChild(link);
}

/** Builds the tab inside document.body; called once by TensorBoard's loader. */
export async function render() {
  injectStylesheet();
  const root = h("div", { class: "gh-root", id: "gradient-health-root" });
  document.body.appendChild(root);
  const ctx = makeContext(root);
  ctx.tabs = h("nav", { class: "tabs", role: "tablist" });
  ctx.status = h("span", { class: "status" }, "loading…");
  const refresh = h("button", { class: "button", type: "button", title: "Check for new data now",
    onClick: () => loadRuns(ctx, { force: true }) }, "Refresh");
  root.appendChild(h("header", { class: "topbar" },
    h("span", { class: "title" }, "Gradient Health"), ctx.tabs,
    h("span", { class: "spacer" }), ctx.status, refresh));
  ctx.notice = h("div", { class: "notices" });
  ctx.main = h("main", { class: "content" });
  root.appendChild(ctx.notice);
  root.appendChild(ctx.main);
  renderTabs(ctx);
  try {
    ctx.formats = (await api.formats()).formats || [];
  } catch (e) {
    console.warn("gradient_health: /formats failed", e);
  }
  await loadRuns(ctx, { force: true });
  setInterval(() => {
    if (!document.hidden) loadRuns(ctx);
  }, POLL_MS);
  window.__gradientHealth = ctx; // for debugging and the browser test
  return ctx;
}
