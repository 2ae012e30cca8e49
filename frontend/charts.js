// Small chart and DOM toolkit for the Gradient Health tab: canvas line charts, heatmap,
// bar histogram with shaded x-ranges, sparklines, plus `h()` for building DOM safely.
//
// Safety: `h()` inserts every string child with createTextNode and sets attributes with
// setAttribute; event handlers are only ever functions (addEventListener). Nothing here
// uses innerHTML, so run/layer names can be anything.
// Non-finite values never enter a scale: they are skipped and drawn as markers.

// ---------------------------------------------------------------------------- DOM helpers

/** Creates an element. props: class, style (object|string), on<Event> (functions), else attributes. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2).toLowerCase(), v);
    else if (k === "checked" || k === "selected" || k === "disabled" || k === "value") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** A labelled <select>; options: [value] or [[value, label]]. */
export function select(label, options, value, onChange) {
  const sel = h("select", { onChange: () => onChange(sel.value) });
  for (const o of options) {
    const [v, text] = Array.isArray(o) ? o : [o, o];
    sel.appendChild(h("option", { value: v, selected: v === value }, text));
  }
  if (value !== undefined && value !== null) sel.value = value;
  return h("label", { class: "control" }, h("span", { class: "control-label" }, label), sel);
}

/** A labelled checkbox. */
export function toggle(label, checked, onChange) {
  const box = h("input", { type: "checkbox", checked: !!checked, onChange: () => onChange(box.checked) });
  return h("label", { class: "control toggle" }, box, h("span", {}, label));
}

/** A message box; kind: "error" | "empty" | "info". */
export function message(kind, text) {
  return h("div", { class: `message message-${kind}` }, text);
}

/** Removes all children of `el`. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Formats a number for labels and tooltips; NaN and ±Inf spelled out. */
export function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "−Inf";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (Number.isInteger(v) && a < 1e7) return String(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(Math.max(1, digits - 2)).replace("e+", "e");
  return String(Number(v.toPrecision(digits)));
}

export const RUN_COLORS = [
  "#f57c00", "#1976d2", "#388e3c", "#7b1fa2", "#c2185b", "#0097a7", "#5d4037", "#616161",
  "#fbc02d", "#303f9f",
];

// ---------------------------------------------------------------------------- scales

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}

/** Linear ticks covering [lo, hi]. */
export function linearTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return out;
}

function extent(values, positiveOnly) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) {
    if (!Number.isFinite(v) || (positiveOnly && v <= 0)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : null;
}

/** y scale: linear or log10; returns {map(v)->px or null, ticks, lo, hi}. */
function makeYScale(values, log, top, bottom) {
  let ext = extent(values, log);
  if (!ext) ext = log ? [1e-3, 1] : [0, 1];
  let [lo, hi] = ext;
  if (log) {
    let a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    if (a === b) { a -= 1; b += 1; }
    const map = (v) => (Number.isFinite(v) && v > 0 ? bottom - ((Math.log10(v) - a) / (b - a)) * (bottom - top) : null);
    const stride = Math.max(1, Math.ceil((b - a) / 6));
    const ticks = [];
    for (let e = a; e <= b; e += stride) ticks.push(Math.pow(10, e));
    return { map, ticks, lo: Math.pow(10, a), hi: Math.pow(10, b) };
  }
  if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const pad = (hi - lo) * 0.05;
  lo -= pad; hi += pad;
  const map = (v) => (Number.isFinite(v) ? bottom - ((v - lo) / (hi - lo)) * (bottom - top) : null);
  return { map, ticks: linearTicks(lo, hi, 5), lo, hi };
}

// ---------------------------------------------------------------------------- canvas plumbing

const FONT = "11px Roboto, 'Helvetica Neue', Arial, sans-serif";

/** A hi-dpi canvas sized to its CSS box; returns {canvas, ctx, w, h, resize(w,h)}. */
function makeCanvas(parent, cssW, cssH, cls = "chart-canvas") {
  const canvas = h("canvas", { class: cls });
  parent.appendChild(canvas);
  const surface = { canvas, ctx: canvas.getContext("2d"), w: 0, h: 0 };
  surface.resize = (w, hh) => {
    const dpr = window.devicePixelRatio || 1;
    surface.w = Math.max(10, Math.floor(w));
    surface.h = Math.max(10, Math.floor(hh));
    canvas.width = Math.round(surface.w * dpr);
    canvas.height = Math.round(surface.h * dpr);
    canvas.style.width = `${surface.w}px`;
    canvas.style.height = `${surface.h}px`;
    surface.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  };
  surface.resize(cssW, cssH);
  return surface;
}

/** The content width of `el` (its box less padding and borders). */
function widthOf(el, fallback = 600) {
  const cs = getComputedStyle(el);
  const pad = (parseFloat(cs.paddingLeft) || 0) + (parseFloat(cs.paddingRight) || 0) +
    (parseFloat(cs.borderLeftWidth) || 0) + (parseFloat(cs.borderRightWidth) || 0);
  const w = el.getBoundingClientRect().width - pad;
  return w > 20 ? Math.floor(w) : fallback;
}

/** Re-runs draw() when the container width changes; returns a disconnect function. */
function onWidthChange(el, draw) {
  if (typeof ResizeObserver === "undefined") return () => {};
  let last = widthOf(el);
  let pending = 0;
  const ro = new ResizeObserver(() => {
    const w = widthOf(el);
    if (Math.abs(w - last) < 2) return;
    last = w;
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(draw);
  });
  ro.observe(el);
  return () => ro.disconnect();
}

function makeTooltip(parent) {
  const tip = h("div", { class: "chart-tooltip", role: "tooltip" });
  tip.style.display = "none";
  parent.appendChild(tip);
  return {
    show(x, y, lines) {
      clear(tip);
      for (const line of lines) {
        const row = h("div", { class: "tip-row" });
        if (line.color) row.appendChild(h("span", { class: "swatch", style: { background: line.color } }));
        row.appendChild(h("span", { class: line.bold ? "tip-strong" : "" }, line.text));
        tip.appendChild(row);
      }
      tip.style.display = "block";
      const pw = parent.clientWidth;
      const tw = tip.offsetWidth;
      tip.style.left = `${Math.max(0, Math.min(x + 12, pw - tw - 4))}px`;
      tip.style.top = `${Math.max(0, y + 12)}px`;
    },
    hide() { tip.style.display = "none"; },
  };
}

function drawNonFiniteMarker(ctx, x, y, v) {
  ctx.save();
  ctx.fillStyle = Number.isNaN(v) ? "#d32f2f" : "#000";
  ctx.beginPath();
  if (Number.isNaN(v)) { ctx.arc(x, y, 3, 0, Math.PI * 2); }
  else if (v > 0) { ctx.moveTo(x - 4, y + 3); ctx.lineTo(x + 4, y + 3); ctx.lineTo(x, y - 4); }
  else { ctx.moveTo(x - 4, y - 3); ctx.lineTo(x + 4, y - 3); ctx.lineTo(x, y + 4); }
  ctx.fill();
  ctx.restore();
}

function bisect(xs, x) {
  let lo = 0, hi = xs.length - 1;
  if (hi < 0) return -1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] <= x) lo = mid; else hi = mid;
  }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

// ---------------------------------------------------------------------------- line chart

/**
 * Line chart of several series sharing an x axis (steps).
 * opts: {series:[{name, color, xs, ys}], logY, height, xLabel, yLabel, onClick(x)}
 * Non-finite y values (and y<=0 on a log axis) break the line; NaN/±Inf are marked in a
 * strip above the plot. Returns {destroy()}.
 */
export function lineChart(parent, opts) {
  const wrap = h("div", { class: "chart line-chart" });
  parent.appendChild(wrap);
  const height = opts.height || 280;
  const surf = makeCanvas(wrap, widthOf(parent), height);
  const tip = makeTooltip(wrap);
  const series = opts.series.filter((s) => s.xs && s.xs.length);
  const M = { l: 64, r: 16, t: 30, b: 30 }; // top: legend text above the NaN/Inf marker strip
  let geom = null;
  let hoverX = null;

  function draw() {
    surf.resize(widthOf(parent), height);
    const { ctx, w } = surf;
    ctx.clearRect(0, 0, w, height);
    ctx.font = FONT;
    const left = M.l, right = w - M.r, top = M.t, bottom = height - M.b;
    const allY = [];
    let x0 = Infinity, x1 = -Infinity;
    for (const s of series) {
      for (const v of s.ys) allY.push(v);
      for (const x of s.xs) if (Number.isFinite(x)) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); }
    }
    if (!(x1 >= x0)) { x0 = 0; x1 = 1; }
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    const xmap = (x) => left + ((x - x0) / (x1 - x0)) * (right - left);
    const ys = makeYScale(allY, !!opts.logY, top, bottom);
    geom = { left, right, top, bottom, xmap, x0, x1, ys };
    for (const b of opts.bands || []) {
      const a = Math.max(x0, b.from), c = Math.min(x1, b.to);
      if (!(c >= a)) continue;
      ctx.fillStyle = b.color || "rgba(245,124,0,0.12)";
      ctx.fillRect(xmap(a) - 1, top, Math.max(2, xmap(c) - xmap(a) + 2), bottom - top);
    }

    // grid + axes
    ctx.strokeStyle = "#e0e0e0";
    ctx.fillStyle = "#616161";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of ys.ticks) {
      const y = ys.map(t);
      if (y === null || y < top - 1 || y > bottom + 1) continue;
      ctx.beginPath(); ctx.moveTo(left, Math.round(y) + 0.5); ctx.lineTo(right, Math.round(y) + 0.5); ctx.stroke();
      ctx.fillText(fmt(t, 3), left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of linearTicks(x0, x1, Math.max(2, Math.floor((right - left) / 90)))) {
      const x = xmap(t);
      ctx.beginPath(); ctx.moveTo(Math.round(x) + 0.5, top); ctx.lineTo(Math.round(x) + 0.5, bottom); ctx.stroke();
      ctx.fillText(fmt(t), x, bottom + 6);
    }
    ctx.strokeStyle = "#9e9e9e";
    ctx.strokeRect(left + 0.5, top + 0.5, right - left, bottom - top);
    if (opts.yLabel) { ctx.textAlign = "left"; ctx.textBaseline = "top"; ctx.fillText(opts.yLabel, 4, 4); }
    if (opts.xLabel) { ctx.textAlign = "right"; ctx.textBaseline = "bottom"; ctx.fillText(opts.xLabel, right, height - 1); }

    // series
    ctx.save();
    ctx.beginPath(); ctx.rect(left, top - 1, right - left, bottom - top + 2); ctx.clip();
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let pen = false;
      let lone = [];
      for (let i = 0; i < s.xs.length; i++) {
        const y = ys.map(s.ys[i]);
        if (y === null) { pen = false; continue; }
        const x = xmap(s.xs[i]);
        if (!pen) {
          ctx.moveTo(x, y);
          const nextOk = i + 1 < s.xs.length && ys.map(s.ys[i + 1]) !== null;
          if (!nextOk) lone.push([x, y]);
        } else ctx.lineTo(x, y);
        pen = true;
      }
      ctx.stroke();
      ctx.fillStyle = s.color;
      for (const [x, y] of lone) { ctx.beginPath(); ctx.arc(x, y, 2, 0, Math.PI * 2); ctx.fill(); }
    }
    ctx.restore();
    // non-finite markers in the strip above the plot
    let anyNonFinite = false;
    for (const s of series) {
      for (let i = 0; i < s.xs.length; i++) {
        const v = s.ys[i];
        if (Number.isFinite(v)) continue;
        anyNonFinite = true;
        drawNonFiniteMarker(ctx, xmap(s.xs[i]), v < 0 ? bottom - 6 : top - 10, v);
      }
    }
    if (anyNonFinite) {
      ctx.fillStyle = "#d32f2f"; ctx.textAlign = "right"; ctx.textBaseline = "top";
      ctx.fillText("● NaN  ▲ +Inf  ▼ −Inf", right, 2);
    }
    if (hoverX !== null) {
      ctx.strokeStyle = "rgba(0,0,0,0.35)";
      ctx.beginPath(); ctx.moveTo(Math.round(hoverX) + 0.5, top); ctx.lineTo(Math.round(hoverX) + 0.5, bottom); ctx.stroke();
    }
  }

  function pick(ev) {
    const r = surf.canvas.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    if (!geom || px < geom.left || px > geom.right) return null;
    const x = geom.x0 + ((px - geom.left) / (geom.right - geom.left)) * (geom.x1 - geom.x0);
    return { x, px, py };
  }

  surf.canvas.addEventListener("mousemove", (ev) => {
    const p = pick(ev);
    if (!p) { tip.hide(); hoverX = null; draw(); return; }
    const lines = [];
    let snapX = null;
    for (const s of series) {
      const i = bisect(s.xs, p.x);
      if (i < 0) continue;
      if (snapX === null) snapX = s.xs[i];
      lines.push({ color: s.color, text: `${s.name}: ${fmt(s.ys[i])}  @ ${fmt(s.xs[i])}` });
    }
    hoverX = snapX === null ? null : geom.xmap(snapX);
    lines.unshift({ text: `step ${fmt(snapX)}`, bold: true });
    draw();
    tip.show(p.px, p.py, lines);
  });
  surf.canvas.addEventListener("mouseleave", () => { tip.hide(); hoverX = null; draw(); });
  if (opts.onClick) {
    surf.canvas.style.cursor = "pointer";
    surf.canvas.addEventListener("click", (ev) => { const p = pick(ev); if (p) opts.onClick(p.x); });
  }

  const legend = h("div", { class: "legend" });
  for (const s of series) {
    const nonFinite = s.ys.filter((v) => !Number.isFinite(v)).length;
    legend.appendChild(h("span", { class: "legend-item" },
      h("span", { class: "swatch", style: { background: s.color } }), s.name,
      nonFinite ? h("span", { class: "nonfinite-note" }, ` (${nonFinite} non-finite)`) : null));
  }
  wrap.appendChild(legend);
  if (!series.length) wrap.appendChild(h("div", { class: "empty" }, "No data points."));
  draw();
  const stop = onWidthChange(parent, draw);
  return { destroy() { stop(); wrap.remove(); }, element: wrap, canvas: surf.canvas };
}

// ---------------------------------------------------------------------------- sparkline

/** Tiny line of `values` over `steps` (no axes); non-finite points marked red. */
export function sparkline(parent, steps, values, opts = {}) {
  const width = opts.width || 160, height = opts.height || 32;
  const surf = makeCanvas(parent, width, height, "sparkline");
  const { ctx } = surf;
  const ys = makeYScale(values, !!opts.logY, 3, height - 3);
  let x0 = steps.length ? steps[0] : 0, x1 = steps.length ? steps[steps.length - 1] : 1;
  if (x1 === x0) x1 = x0 + 1;
  const xmap = (x) => 2 + ((x - x0) / (x1 - x0)) * (width - 4);
  ctx.strokeStyle = opts.color || "#f57c00";
  ctx.lineWidth = 1.25;
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i < steps.length; i++) {
    const y = ys.map(values[i]);
    if (y === null) {
      pen = false;
      ctx.save(); ctx.fillStyle = "#d32f2f"; ctx.fillRect(xmap(steps[i]) - 1, 0, 2, height); ctx.restore();
      continue;
    }
    if (pen) ctx.lineTo(xmap(steps[i]), y); else ctx.moveTo(xmap(steps[i]), y);
    pen = true;
  }
  ctx.stroke();
  const tip = opts.title;
  if (tip) surf.canvas.setAttribute("title", tip);
  return surf.canvas;
}

// ---------------------------------------------------------------------------- colour maps

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

/** Viridis colour for t in [0,1] as [r,g,b]. */
export function viridis(t) {
  t = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t));
  const f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

export const NAN_RGB = [229, 57, 53];   // red
export const INF_RGB = [255, 255, 255]; // white (bordered in the legend)

// ---------------------------------------------------------------------------- heatmap

/**
 * Rows × columns heatmap drawn pixel-exact into an ImageData, scaled without smoothing.
 * opts: {rows:[names], columns:[labels], values:[[row...]], log, cellHeight, maxHeight,
 *        colLabel(j) -> string, onHover(i,j), onClick(i,j)}
 * Colour scale from finite values only (positive only on log); NaN red, ±Inf white.
 */
export function heatmap(parent, opts) {
  const wrap = h("div", { class: "chart heatmap" });
  parent.appendChild(wrap);
  const nRows = opts.rows.length, nCols = nRows ? opts.values[0].length : 0;
  const flat = [];
  for (const row of opts.values) for (const v of row) flat.push(v);
  const log = !!opts.log;
  let ext = extent(flat, log) || [0, 1];
  let [lo, hi] = ext;
  if (opts.domain) [lo, hi] = opts.domain;
  const tf = log ? (v) => Math.log10(v) : (v) => v;
  const tlo = tf(lo), thi = tf(hi) === tf(lo) ? tf(lo) + 1 : tf(hi);
  const colorOf = (v) => {
    if (Number.isNaN(v)) return NAN_RGB;
    if (!Number.isFinite(v)) return INF_RGB;
    if (log && v <= 0) return [230, 230, 230];
    return viridis((tf(v) - tlo) / (thi - tlo));
  };

  // offscreen image at data resolution
  const img = document.createElement("canvas");
  img.width = Math.max(1, nCols); img.height = Math.max(1, nRows);
  const ictx = img.getContext("2d");
  const data = ictx.createImageData(img.width, img.height);
  for (let i = 0; i < nRows; i++) {
    const row = opts.values[i];
    for (let j = 0; j < nCols; j++) {
      const c = colorOf(row[j]);
      const o = (i * nCols + j) * 4;
      data.data[o] = c[0]; data.data[o + 1] = c[1]; data.data[o + 2] = c[2]; data.data[o + 3] = 255;
    }
  }
  ictx.putImageData(data, 0, 0);

  const maxH = opts.maxHeight || 1200;
  const cellH = Math.max(1, Math.min(opts.cellHeight || 16, Math.floor(maxH / Math.max(1, nRows))) || 1);
  const maxLabel = Math.max(0, ...opts.rows.map((r) => String(r).length));
  const M = { l: Math.min(260, 12 + maxLabel * 6.2), r: 12, t: 8, b: 30 };
  const plotH = cellH * nRows;
  const height = M.t + plotH + M.b;
  const surf = makeCanvas(wrap, widthOf(parent), height);
  surf.canvas.style.cursor = opts.onClick ? "crosshair" : "default";
  const tip = makeTooltip(wrap);
  let hover = null;
  let geom = null;

  function draw() {
    surf.resize(widthOf(parent), height);
    const { ctx, w } = surf;
    ctx.clearRect(0, 0, w, height);
    ctx.font = FONT;
    const left = M.l, right = w - M.r, top = M.t, bottom = M.t + plotH;
    const cellW = (right - left) / Math.max(1, nCols);
    geom = { left, right, top, bottom, cellW };
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, left, top, right - left, plotH);
    ctx.strokeStyle = "#9e9e9e";
    ctx.strokeRect(left - 0.5, top - 0.5, right - left + 1, plotH + 1);
    // row labels: as many as fit at >= 12px apart
    ctx.fillStyle = "#424242";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(12 / cellH));
    for (let i = 0; i < nRows; i += every) {
      let label = String(opts.rows[i]);
      if (label.length > 40) label = label.slice(0, 18) + "…" + label.slice(-20);
      ctx.fillText(label, left - 6, top + (i + 0.5) * cellH);
    }
    // column ticks
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const nt = Math.max(2, Math.floor((right - left) / 100));
    for (let k = 0; k <= nt; k++) {
      const j = Math.min(nCols - 1, Math.round((k / nt) * (nCols - 1)));
      if (j < 0) break;
      const x = left + (j + 0.5) * cellW;
      ctx.fillRect(Math.round(x), bottom, 1, 4);
      ctx.fillText(opts.colLabel ? opts.colLabel(j) : String(j), x, bottom + 6);
    }
    if (hover) {
      ctx.strokeStyle = "#f57c00";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(left + hover.j * cellW, top + hover.i * cellH, Math.max(2, cellW), Math.max(2, cellH));
      ctx.lineWidth = 1;
    }
  }

  function cellAt(ev) {
    const r = surf.canvas.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    if (!geom || px < geom.left || px >= geom.right || py < geom.top || py >= geom.bottom) return null;
    const j = Math.min(nCols - 1, Math.floor((px - geom.left) / geom.cellW));
    const i = Math.min(nRows - 1, Math.floor((py - geom.top) / cellH));
    return { i, j, px, py };
  }
  surf.canvas.addEventListener("mousemove", (ev) => {
    const c = cellAt(ev);
    if (!c) { hover = null; tip.hide(); draw(); return; }
    hover = c;
    draw();
    const lines = opts.describe ? opts.describe(c.i, c.j) : [{ text: `${opts.rows[c.i]} · ${c.j}` }, { text: fmt(opts.values[c.i][c.j]) }];
    tip.show(c.px, c.py, lines);
  });
  surf.canvas.addEventListener("mouseleave", () => { hover = null; tip.hide(); draw(); });
  if (opts.onClick) surf.canvas.addEventListener("click", (ev) => { const c = cellAt(ev); if (c) opts.onClick(c.i, c.j); });

  // colour bar legend
  const bar = makeCanvas(h("div"), 160, 10, "colorbar");
  for (let x = 0; x < 160; x++) { const c = viridis(x / 159); bar.ctx.fillStyle = `rgb(${c.map(Math.round).join(",")})`; bar.ctx.fillRect(x, 0, 1, 10); }
  wrap.appendChild(h("div", { class: "legend" },
    h("span", { class: "legend-item" }, fmt(lo, 3), " ", bar.canvas, " ", fmt(hi, 3), log ? " (log)" : ""),
    h("span", { class: "legend-item" }, h("span", { class: "swatch", style: { background: `rgb(${NAN_RGB})` } }), "NaN"),
    h("span", { class: "legend-item" }, h("span", { class: "swatch swatch-border", style: { background: "#fff" } }), "±Inf"),
    log ? h("span", { class: "legend-item" }, h("span", { class: "swatch", style: { background: "#e6e6e6" } }), "≤ 0") : null));
  draw();
  const stop = onWidthChange(parent, draw);
  return { destroy() { stop(); wrap.remove(); }, element: wrap, canvas: surf.canvas };
}

// ---------------------------------------------------------------------------- bar histogram

/**
 * Histogram of log2 bins: bar k spans x in [x0+k, x0+k+1).
 * opts: {firstX, counts, logY, xDomain:[a,b], zones:[{from,to,color,label}],
 *        strips:[{label, zones:[{from,to,color}]}], markers:[{x,label}], height, xLabel}
 */
export function barHistogram(parent, opts) {
  const wrap = h("div", { class: "chart histogram" });
  parent.appendChild(wrap);
  const counts = opts.counts || [];
  const strips = opts.strips || [];
  const stripH = 16;
  const height = (opts.height || 260) + strips.length * (stripH + 4);
  const surf = makeCanvas(wrap, widthOf(parent), height);
  const tip = makeTooltip(wrap);
  const M = { l: 110, r: 16, t: 12, b: 34 + strips.length * (stripH + 4) };
  let geom = null;
  let hoverK = -1;
  const dataLo = opts.firstX, dataHi = opts.firstX + counts.length;
  let [xa, xb] = opts.xDomain || [dataLo, dataHi];
  if (!(xb > xa)) { xa = dataLo - 1; xb = dataHi + 1; }

  function draw() {
    surf.resize(widthOf(parent), height);
    const { ctx, w } = surf;
    ctx.clearRect(0, 0, w, height);
    ctx.font = FONT;
    const left = M.l, right = w - M.r, top = M.t, bottom = height - M.b;
    const xmap = (x) => left + ((x - xa) / (xb - xa)) * (right - left);
    const ys = makeYScale(opts.logY ? counts.filter((c) => c > 0) : [0, ...counts], !!opts.logY, top, bottom);
    geom = { left, right, top, bottom, xmap };
    // zones
    for (const z of opts.zones || []) {
      const a = Math.max(xa, z.from), b = Math.min(xb, z.to);
      if (!(b > a)) continue;
      ctx.fillStyle = z.color;
      ctx.fillRect(xmap(a), top, xmap(b) - xmap(a), bottom - top);
      if (z.label && xmap(b) - xmap(a) > ctx.measureText(z.label).width + 8) {
        ctx.fillStyle = "#616161"; ctx.textAlign = "center"; ctx.textBaseline = "top";
        ctx.fillText(z.label, (xmap(a) + xmap(b)) / 2, top + 2);
      }
    }
    // y grid
    ctx.strokeStyle = "rgba(0,0,0,0.08)"; ctx.fillStyle = "#616161";
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const t of ys.ticks) {
      const y = ys.map(t);
      if (y === null || y < top - 1 || y > bottom + 1) continue;
      ctx.beginPath(); ctx.moveTo(left, Math.round(y) + 0.5); ctx.lineTo(right, Math.round(y) + 0.5); ctx.stroke();
      ctx.fillText(fmt(t, 3), left - 6, y);
    }
    // bars
    const base = opts.logY ? bottom : ys.map(0);
    for (let k = 0; k < counts.length; k++) {
      const c = counts[k];
      const y = ys.map(c);
      if (y === null || !(c > 0)) continue;
      const x = xmap(opts.firstX + k), x2 = xmap(opts.firstX + k + 1);
      ctx.fillStyle = k === hoverK ? "#e65100" : "#546e7a";
      ctx.fillRect(x + 0.5, y, Math.max(1, x2 - x - 1), base - y);
    }
    ctx.strokeStyle = "#9e9e9e";
    ctx.strokeRect(left + 0.5, top + 0.5, right - left, bottom - top);
    // x ticks: log2 exponents
    ctx.fillStyle = "#616161"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    const step = Math.max(1, niceStep(xb - xa, Math.max(2, Math.floor((right - left) / 60))));
    for (let t = Math.ceil(xa / step) * step; t <= xb; t += step) {
      const x = xmap(t);
      ctx.fillRect(Math.round(x), bottom, 1, 4);
      ctx.fillText(String(t), x, bottom + 5);
    }
    if (opts.xLabel) { ctx.textAlign = "left"; ctx.fillText(opts.xLabel, 4, bottom + 5); }
    // markers (vertical dashed lines)
    ctx.save(); ctx.setLineDash([3, 3]);
    for (const m of opts.markers || []) {
      if (m.x < xa || m.x > xb) continue;
      const x = xmap(m.x);
      ctx.strokeStyle = m.color || "#424242";
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
    }
    ctx.restore();
    // strips: one per format
    let sy = bottom + 22;
    for (const s of strips) {
      ctx.fillStyle = "#f5f5f5"; ctx.fillRect(left, sy, right - left, stripH);
      for (const z of s.zones) {
        const a = Math.max(xa, z.from), b = Math.min(xb, z.to);
        if (!(b > a)) continue;
        ctx.fillStyle = z.color; ctx.fillRect(xmap(a), sy, xmap(b) - xmap(a), stripH);
      }
      ctx.fillStyle = s.active ? "#e65100" : "#424242"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(s.label, left - 6, sy + stripH / 2);
      sy += stripH + 4;
    }
  }
  surf.canvas.addEventListener("mousemove", (ev) => {
    const r = surf.canvas.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    if (!geom || px < geom.left || px > geom.right) { hoverK = -1; tip.hide(); draw(); return; }
    const x = xa + ((px - geom.left) / (geom.right - geom.left)) * (xb - xa);
    const e = Math.floor(x);
    const k = e - opts.firstX;
    hoverK = k >= 0 && k < counts.length ? k : -1;
    draw();
    const lines = [{ text: `2^${e} ≤ |g| < 2^${e + 1}`, bold: true },
      { text: `count ${hoverK >= 0 ? fmt(counts[hoverK]) : 0}` }];
    if (opts.describeX) for (const l of opts.describeX(e)) lines.push(l);
    tip.show(px, py, lines);
  });
  surf.canvas.addEventListener("mouseleave", () => { hoverK = -1; tip.hide(); draw(); });
  draw();
  const stop = onWidthChange(parent, draw);
  return { destroy() { stop(); wrap.remove(); }, element: wrap, canvas: surf.canvas };
}
