// Fetch wrappers for the Gradient Health routes (API.md).
//
// Every URL is relative ("./runs"): the iframe page has <base href="plugin/gradient_health/">,
// so this keeps --path_prefix and experiment URLs working. TensorBoard's JSON cleanser sends
// NaN/±Inf as the strings "NaN", "Infinity", "-Infinity"; `decodeNumbers` turns them back into
// numbers everywhere except in name fields (a run may literally be called "NaN").

const NON_FINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

// Keys whose values (or array elements) are names, never numbers.
const NAME_KEYS = new Set([
  "run", "runs", "group", "groups", "layer", "layers", "rows", "row_kinds", "columns", "metric",
  "rule", "message", "policy", "what_if", "severity", "reason", "tag", "name", "run_a", "run_b",
  "skipped", "aggregate", "kind",
]);

/** Returns `value` with non-finite number strings decoded, leaving name fields alone. */
export function decodeNumbers(value, key = "") {
  if (Array.isArray(value)) {
    if (NAME_KEYS.has(key)) return value.map((v) => (typeof v === "object" && v !== null ? decodeNumbers(v, "") : v));
    return value.map((v) => decodeNumbers(v, key));
  }
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = NAME_KEYS.has(k) && typeof v === "string" ? v : decodeNumbers(v, k);
    }
    return out;
  }
  if (typeof value === "string" && !NAME_KEYS.has(key) && Object.prototype.hasOwnProperty.call(NON_FINITE, value)) {
    return NON_FINITE[value];
  }
  return value;
}

/** An HTTP error with the server's plain-text message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Builds "./route?k=v&k=v2" from a params object; array values repeat the key. */
export function url(route, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, String(x)));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return `./${route}${s ? "?" + s : ""}`;
}

async function getJson(route, params) {
  let resp;
  try {
    resp = await fetch(url(route, params), { credentials: "same-origin" });
  } catch (e) {
    throw new ApiError(0, `network error: ${e.message}`);
  }
  const text = await resp.text();
  if (!resp.ok) throw new ApiError(resp.status, `${resp.status}: ${text.slice(0, 300).trim()}`);
  try {
    return decodeNumbers(JSON.parse(text));
  } catch (e) {
    throw new ApiError(resp.status, `bad JSON from ./${route}: ${e.message}`);
  }
}

export const api = {
  runs: () => getJson("runs"),
  formats: () => getJson("formats"),
  overview: () => getJson("overview"),
  alerts: (p = {}) => getJson("alerts", p),
  series: (p) => getJson("series", p),
  stepSeries: (p) => getJson("step_series", p),
  heatmap: (p) => getJson("heatmap", p),
  histogram: (p) => getJson("histogram", p),
  compare: (p) => getJson("compare", p),
  exportUrl: (p) => url("export.csv", p),
};
