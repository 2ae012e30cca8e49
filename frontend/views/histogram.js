// Log2-magnitude histogram of one layer at one step, with the zones of the what-if float
// formats shaded (normal, subnormal, underflow to zero, overflow) from ./formats, a step
// slider, and the share of the layer's values that falls in each zone of each format.

import { h, clear, fmt, message, select, toggle, barHistogram } from "../charts.js";

const SHOWN = ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"];
const ZONE_COLORS = {
  underflow: "rgba(211, 47, 47, 0.16)",
  subnormal: "rgba(255, 179, 0, 0.28)",
  normal: "rgba(67, 160, 71, 0.12)",
  overflow: "rgba(123, 31, 162, 0.20)",
};
const STRIP_COLORS = {
  underflow: "rgba(211, 47, 47, 0.55)",
  subnormal: "rgba(255, 179, 0, 0.75)",
  normal: "rgba(67, 160, 71, 0.45)",
  overflow: "rgba(123, 31, 162, 0.6)",
};

/** The four zones of a format on the log2|g| axis. */
export function formatZones(f) {
  const under = f.underflow_max > 0 ? Math.log2(f.underflow_max) : -Infinity;
  const normal = Number.isFinite(f.log2_min_normal) ? f.log2_min_normal : Math.log2(f.min_normal);
  const over = Number.isFinite(f.overflow_at) ? Math.log2(f.overflow_at) : Infinity;
  return [
    { kind: "underflow", from: -Infinity, to: under, label: "→ 0" },
    { kind: "subnormal", from: under, to: normal, label: "subnormal" },
    { kind: "normal", from: normal, to: over, label: "normal" },
    { kind: "overflow", from: over, to: Infinity, label: f.has_inf ? "→ inf" : "→ NaN" },
  ];
}

/** Share of histogram mass per zone (a bin counts where its lower edge lies). */
function zoneShares(zones, firstExp, counts) {
  const total = counts.reduce((s, c) => s + (c > 0 ? c : 0), 0);
  const out = {};
  for (const z of zones) out[z.kind] = 0;
  counts.forEach((c, k) => {
    const e = firstExp + k;
    const z = zones.find((zz) => e >= zz.from && e < zz.to) || zones[zones.length - 1];
    out[z.kind] += c > 0 ? c : 0;
  });
  for (const k of Object.keys(out)) out[k] = total > 0 ? out[k] / total : NaN;
  return out;
}

function defaultFormat(ctx, run, group) {
  const text = `${ctx.run(run)?.policy || ""} ${group || ""}`;
  if (text.includes("bfloat16")) return "bfloat16";
  if (text.includes("e4m3")) return "float8_e4m3fn";
  if (text.includes("e5m2")) return "float8_e5m2";
  return "float16";
}

function pct(x) {
  if (!Number.isFinite(x)) return "–";
  if (x === 0) return "0";
  return x < 0.001 ? "<0.1%" : `${(x * 100).toFixed(1)}%`;
}

export async function render(el, ctx) {
  const st = ctx.state.histogram;
  const runNames = ctx.runNames();
  if (!runNames.includes(st.run)) st.run = ctx.defaultRun();
  const groups = ctx.groups([st.run]);
  if (!groups.includes(st.group)) st.group = ctx.groupOfLayer(st.run, st.layer) || groups[0];
  const rows = ctx.group(st.run, st.group)?.rows || [];
  if (!rows.includes(st.layer)) st.layer = rows.includes("*") ? "*" : rows[0];
  const formats = SHOWN.map((n) => ctx.format(n)).filter(Boolean);
  if (!formats.some((f) => f.name === st.format)) st.format = defaultFormat(ctx, st.run, st.group);

  const controls = h("div", { class: "controls" },
    select("run", runNames, st.run, (v) => ctx.go("histogram", { run: v, step: undefined })),
    select("group", groups, st.group, (v) => ctx.go("histogram", { group: v, layer: "*" })),
    select("layer", rows.map((r) => [r, r === "*" ? "* (whole group)" : r]), st.layer, (v) => ctx.go("histogram", { layer: v })),
    select("shade format", formats.map((f) => f.name), st.format, (v) => { st.format = v; load(); }),
    toggle("log counts", st.logY, (v) => { st.logY = v; load(); }));
  el.appendChild(controls);
  const sliderBox = h("div", { class: "controls slider-box" });
  el.appendChild(sliderBox);
  const body = h("div", { class: "chart-box" }, h("div", { class: "loading" }, "loading…"));
  el.appendChild(body);
  let data = null;
  let slider = null;

  async function load(stepChanged = false) {
    const alive = ctx.aliveFn();
    if (stepChanged || !data) {
      const params = { run: st.run, layer: st.layer, step: st.step };
      if (st.layer === "*") params.group = st.group;
      try {
        data = await ctx.api.histogram(params);
      } catch (e) {
        if (!alive()) return;
        clear(body).appendChild(message("error", `No histogram: ${e.message}`));
        return;
      }
      if (!alive()) return;
      buildSlider();
    }
    draw();
  }

  function buildSlider() {
    const steps = data.steps || [];
    const idx = Math.max(0, steps.indexOf(data.step));
    if (!slider || Number(slider.max) !== steps.length - 1) {
      clear(sliderBox);
      const label = h("span", { class: "step-label" });
      slider = h("input", { type: "range", min: 0, max: Math.max(0, steps.length - 1), step: 1, value: idx,
        class: "step-slider", "aria-label": "step" });
      const setLabel = () => { label.textContent = `step ${fmt(steps[Number(slider.value)])}  (${Number(slider.value) + 1} of ${steps.length} with a histogram)`; };
      slider.addEventListener("input", setLabel);
      slider.addEventListener("change", () => { st.step = steps[Number(slider.value)]; load(true); });
      const nudge = (d) => {
        slider.value = String(Math.min(steps.length - 1, Math.max(0, Number(slider.value) + d)));
        setLabel();
        st.step = steps[Number(slider.value)];
        load(true);
      };
      sliderBox.appendChild(h("span", { class: "control-label" }, "step"));
      sliderBox.appendChild(h("button", { type: "button", class: "button small", title: "previous step", onClick: () => nudge(-1) }, "◀"));
      sliderBox.appendChild(slider);
      sliderBox.appendChild(h("button", { type: "button", class: "button small", title: "next step", onClick: () => nudge(1) }, "▶"));
      sliderBox.appendChild(label);
      slider.setLabel = setLabel;
    }
    slider.value = String(idx);
    slider.setLabel();
  }

  function draw() {
    clear(body);
    const counts = data.counts || [];
    const e0 = data.first_exponent;
    const active = formats.find((f) => f.name === st.format) || formats[0];
    const layerText = data.layer === "*" ? `group ${data.group}` : data.layer;
    body.appendChild(h("div", { class: "chart-title" }, `${layerText} · ${data.run} · step ${fmt(data.step)}`));
    const total = data.count || 0;
    const share = (n) => (total > 0 ? ` (${pct(n / total)})` : "");
    body.appendChild(h("div", { class: "chips" },
      h("span", { class: "chip" }, `values ${fmt(total)}`),
      h("span", { class: "chip" }, `zeros ${fmt(data.zero_count)}${share(data.zero_count)}`),
      h("span", { class: `chip${data.nan_count > 0 ? " chip-error" : ""}` }, `NaN ${fmt(data.nan_count)}`),
      h("span", { class: `chip${data.inf_count > 0 ? " chip-error" : ""}` }, `Inf ${fmt(data.inf_count)}`)));
    if (!counts.some((c) => c > 0) || !Number.isFinite(e0)) {
      body.appendChild(message("empty", "No nonzero finite values at this step."));
      return;
    }
    let lo = e0, hi = e0 + counts.length;
    const first = counts.findIndex((c) => c > 0);
    let last = counts.length - 1;
    while (last > 0 && !(counts[last] > 0)) last--;
    if (first >= 0) { lo = e0 + first; hi = e0 + last + 1; }
    const zonesOf = (f) => formatZones(f);
    let xa = lo - 3, xb = hi + 3;
    if (active) {
      const z = zonesOf(active);
      xa = Math.min(xa, Math.floor(z[1].from) - 2);
      xb = Math.max(xb, Math.ceil(z[3].from) + 2);
    }
    xa = Math.max(-152, xa); xb = Math.min(130, xb);
    const strips = formats.map((f) => ({
      label: f.name, active: f === active,
      zones: zonesOf(f).map((z) => ({ from: z.from, to: z.to, color: STRIP_COLORS[z.kind] })),
    }));
    barHistogram(body, {
      firstX: e0, counts, logY: !!st.logY, xDomain: [xa, xb], height: 280, xLabel: "log2|g|",
      zones: active ? zonesOf(active).map((z) => ({ ...z, color: ZONE_COLORS[z.kind], label: `${active.name} ${z.label}` })) : [],
      strips,
      describeX: (e) => formats.map((f) => {
        const z = zonesOf(f).find((zz) => e >= zz.from && e < zz.to);
        return { text: `${f.name}: ${z ? z.kind : "?"}` };
      }),
    });
    // zone shares per format
    const table = h("table", { class: "data-table zone-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "format"),
        ...["underflow", "subnormal", "normal", "overflow"].map((k) => h("th", { class: "num" },
          h("span", { class: "swatch", style: { background: STRIP_COLORS[k] } }), k === "underflow" ? "underflow → 0" : k)))));
    const tb = h("tbody");
    for (const f of formats) {
      const s = zoneShares(zonesOf(f), e0, counts);
      tb.appendChild(h("tr", { class: f === active ? "row-active" : "" }, h("td", {}, f.name),
        ...["underflow", "subnormal", "normal", "overflow"].map((k) => h("td", {
          class: `num${(k === "underflow" || k === "overflow") && s[k] > 0 ? " bad" : ""}` }, pct(s[k])))));
    }
    table.appendChild(tb);
    body.appendChild(h("div", { class: "hint" },
      "Share of the nonzero finite values per zone, estimated from the log2 bins (a bin straddling a " +
      "threshold is counted by its lower edge; the exact what-if fractions are the *_fraction/<dtype> metrics). " +
      "Bin −127 holds all float32 subnormals."));
    body.appendChild(table);
  }

  await load(true);
}
