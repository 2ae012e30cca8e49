"""The Gradient Health TensorBoard plugin: routes of `API.md` (TF-free).

TensorBoard imports this module at start-up through the `tensorboard_plugins`
entry point, so nothing on its import path may import TensorFlow or Keras.
All data comes through TensorBoard's data provider (`reader.Reader`), so the
plugin works the same under `--load_fast=false` (Python multiplexer) and
`--load_fast=true` (Rust data server).

Sampling: TensorBoard keeps only 10 (Python) or 100 (Rust) points per tag of a
plugin it does not know. `GradientHealthLoader.fix_flags` therefore sets
`--samples_per_plugin=gradient_health=DEFAULT_SAMPLES` when the user gave no
value for us; `--samples_per_plugin=gradient_health=0` keeps every step.
"""

from __future__ import annotations

import collections
import csv
import importlib.util
import io
import json
import logging
import os
import re
import threading

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util, json_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradstats import alerts as alerts_lib
from tb_gradstats import formats, metadata, reader

logger = logging.getLogger("tb_gradstats")

# Logged steps kept per tag when the user sets nothing. A cap rather than 0
# ("keep all") bounds memory: one logged step costs about
# (1 + layers) x (columns + histogram bins) x 8 bytes per dtype group, i.e.
# ~70 KB for a 100-layer model, so 5000 steps stay below ~350 MB per group.
# Both providers sample uniformly and always keep the latest step.
DEFAULT_SAMPLES = 5000

# New data shows up within this many seconds (TensorBoard reloads every 5 s by default).
LIST_TTL_S = 1.0

# Readers (each with a cache of every run's arrays) kept for the most recently
# used experiment ids. Any URL `/experiment/<id>/...` names one, so the map must
# not grow with the number of ids a client makes up.
MAX_READERS = 4

# /heatmap JSON: values rounded to this many significant digits (the tab's colour
# scale has 256 steps and its tooltip shows 4 digits; NaN/Inf are kept), and at
# most this many cells (columns are aggregated further when rows x max_steps is
# more). Together they keep the view under ~1 MB: 201 rows x 1100 columns of
# full-precision floats were 4.8 MB. The CSV export keeps exact values.
HEATMAP_DIGITS = 4
MAX_HEATMAP_CELLS = 100_000

CSV_HEADER = ("run", "step", "group", "layer", "metric", "value")
STEP_GROUP = "_step"

_STATIC = {
    "/index.js": "index.js",
    "/api.js": "api.js",
    "/charts.js": "charts.js",
    "/style.css": "style.css",
}
_VIEW_NAME = re.compile(r"^[a-z][a-z0-9_]*\.js$")
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}
_KNOWN_METRICS = frozenset(metadata.metric_names(sorted(formats.FORMATS)))


def frontend_dir() -> str | None:
    """Returns the directory of the frontend files.

    The wheel ships them as the package `tb_gradstats.frontend`; a source
    checkout has them in the top-level `frontend/`.
    """
    try:
        spec = importlib.util.find_spec("tb_gradstats.frontend")
    except (ImportError, ValueError):
        spec = None
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = list(spec.submodule_search_locations or []) if spec else []
    candidates += [os.path.join(here, "frontend"), os.path.join(os.path.dirname(here), "frontend")]
    for path in candidates:
        if os.path.isfile(os.path.join(path, "index.js")):
            return path
    return None


class GradientHealthLoader(base_plugin.TBLoader):
    """Loads `GradientHealthPlugin` and gives it a sane sampling default."""

    def fix_flags(self, flags) -> None:
        """Keeps `DEFAULT_SAMPLES` steps per tag unless the user chose a number.

        Runs in `program.configure`, before the data provider (Python or
        Rust) is built, so both providers honour it.

        Args:
            flags: the parsed TensorBoard flags.
        """
        samples = getattr(flags, "samples_per_plugin", None)
        if not isinstance(samples, dict):
            samples = {}
            flags.samples_per_plugin = samples
        samples.setdefault(metadata.PLUGIN_NAME, DEFAULT_SAMPLES)

    def load(self, context: base_plugin.TBContext) -> GradientHealthPlugin:
        """Returns the plugin.

        Args:
            context: the `TBContext`.
        """
        return GradientHealthPlugin(context)


class GradientHealthPlugin(base_plugin.TBPlugin):
    """Serves the Gradient Health tab.

    Args:
        context: a `TBContext` with a `data_provider`.
    """

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._provider = context.data_provider
        self._readers: collections.OrderedDict[str, reader.Reader] = collections.OrderedDict()
        self._readers_lock = threading.Lock()
        self._frontend = frontend_dir()
        # Damaged event files TensorBoard silently stops reading (local logdirs only).
        self._scanner = reader.EventFileScanner(getattr(context, "logdir", None))

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """Returns the ES module entry point and the tab name."""
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Gradient Health")

    def is_active(self) -> bool:
        """True when any run has Gradient Health data."""
        return bool(self._provider and self._reader("").runs())

    def get_plugin_apps(self) -> dict:
        """Returns route → WSGI app, per `API.md`."""
        apps = {
            "/runs": self._serve_runs,
            "/formats": self._serve_formats,
            "/series": self._serve_series,
            "/step_series": self._serve_step_series,
            "/heatmap": self._serve_heatmap,
            "/histogram": self._serve_histogram,
            "/compare": self._serve_compare,
            "/alerts": self._serve_alerts,
            "/overview": self._serve_overview,
            "/export.csv": self._serve_export,
            "/views/*": self._serve_static,
        }
        apps.update(dict.fromkeys(_STATIC, self._serve_static))
        return apps

    # --- data access ---------------------------------------------------------

    def _reader(self, experiment_id: str) -> reader.Reader:
        # One reader (and cache) per experiment; a plain logdir has experiment "".
        with self._readers_lock:
            found = self._readers.get(experiment_id)
            if found is None:
                found = reader.Reader(self._provider, experiment_id, list_ttl_s=LIST_TTL_S)
                self._readers[experiment_id] = found
                while len(self._readers) > MAX_READERS:
                    self._readers.popitem(last=False)  # least recently used
            self._readers.move_to_end(experiment_id)
            return found

    def _all(self, request) -> tuple[dict[str, reader.RunData], list[reader.Skipped]]:
        ctx = plugin_util.context(request.environ)
        return self._reader(plugin_util.experiment_id(request.environ)).read_all(ctx)

    def _runs(self, request, names: list[str]) -> list[reader.RunData]:
        data, _ = self._all(request)
        missing = [n for n in names if n not in data]
        if missing:
            raise errors.NotFoundError(f"no Gradient Health data for run(s) {missing}")
        return [data[n] for n in names]

    # --- routes --------------------------------------------------------------

    def _skipped(self, request, skipped: list[reader.Skipped]) -> list[reader.Skipped]:
        if plugin_util.experiment_id(request.environ):
            return skipped  # not the plain logdir of the context
        return skipped + self._scanner.scan()

    @wrappers.Request.application
    def _serve_runs(self, request):
        data, skipped = self._all(request)
        skipped = self._skipped(request, skipped)
        return _json(request, {
            "runs": [_run_summary(d) for d in data.values()],
            "skipped": [s.as_json() for s in skipped],
        })

    @wrappers.Request.application
    def _serve_formats(self, request):
        return _json(request, {"formats": [f.as_json() for f in formats.FORMATS.values()]})

    @wrappers.Request.application
    def _serve_series(self, request):
        return _json(request, self._series(request, _int(request, "max_points", 1000, 2, 20000)))

    def _series(self, request, max_points: int | None) -> dict:
        metric = _metric(request)
        layer, group = _layer(request)
        series = []
        for data in self._runs(request, _list(request, "run", 1)):
            g, row = _find(data, layer, group)
            steps, values = g.steps, _values(g, metric)[:, row]
            if max_points is not None:
                steps, values = downsample_minmax(steps, values, max_points)
            series.append({"run": data.run, "group": g.group, "layer": layer,
                           "steps": steps.tolist(), "values": values.tolist()})
        return {"metric": metric, "series": series}

    @wrappers.Request.application
    def _serve_step_series(self, request):
        metric = _arg(request, "metric")
        if metric not in metadata.STEP_METRICS:
            raise errors.InvalidArgumentError(
                f"metric must be one of {list(metadata.STEP_METRICS)}, got {metric!r}")
        max_points = _int(request, "max_points", 1000, 2, 20000)
        series = []
        for data in self._runs(request, _list(request, "run", 1)):
            values = (data.step_metric(metric) if metric in data.step_columns
                      else np.full(len(data.step_steps), np.nan))
            steps, values = downsample_minmax(data.step_steps, values, max_points)
            series.append({"run": data.run, "steps": steps.tolist(), "values": values.tolist()})
        return _json(request, {"metric": metric, "series": series})

    @wrappers.Request.application
    def _serve_heatmap(self, request):
        return _json(request, self._heatmap(request, digits=HEATMAP_DIGITS,
                                            max_cells=MAX_HEATMAP_CELLS))

    def _heatmap(self, request, digits: int | None = None, max_cells: int | None = None) -> dict:
        (data,) = self._runs(request, [_arg(request, "run")])
        group_name, metric = _arg(request, "group"), _metric(request)
        max_steps = _int(request, "max_steps", 400, 1, 20000)
        max_rows = _int(request, "max_rows", 200, 2, 20000)
        g, _ = _find(data, metadata.GROUP_ROW, group_name)
        return {"run": data.run, "group": g.group, "metric": metric, "aggregate": "max",
                **heatmap(g, _values(g, metric), max_steps, max_rows, digits, max_cells)}

    @wrappers.Request.application
    def _serve_histogram(self, request):
        (data,) = self._runs(request, [_arg(request, "run")])
        layer, group = _layer(request)
        g, row = _find(data, layer, group)
        if not len(g.hist_steps):
            raise errors.NotFoundError(f"no histograms logged for group {g.group!r}")
        want = _int(request, "step", None, 0, None)
        i = len(g.hist_steps) - 1 if want is None else _at_or_before(g.hist_steps, want)
        if i < 0:
            raise errors.NotFoundError(f"no histogram at or before step {want}")
        step = int(g.hist_steps[i])
        first, counts = g.hist[i]
        stats = _stats_at(g, step, row)
        return _json(request, {
            "run": data.run, "group": g.group, "layer": layer, "step": step,
            "steps": g.hist_steps.tolist(), "first_exponent": first,
            "counts": counts[row].tolist(), **stats,
        })

    @wrappers.Request.application
    def _serve_compare(self, request):
        return _json(request, self._compare(request))

    def _compare(self, request) -> dict:
        a, b = self._runs(request, [_arg(request, "run_a"), _arg(request, "run_b")])
        metric = _metric(request)
        want = _int(request, "step", None, 0, None)
        step_a, step_b = _compare_steps(a, b, want)
        layers = [name for name in _layer_names(a) if name in set(_layer_names(b))]
        return {"metric": metric, "step_a": step_a, "step_b": step_b, "layers": layers,
                "a": [_value_at(a, name, metric, step_a) for name in layers],
                "b": [_value_at(b, name, metric, step_b) for name in layers]}

    @wrappers.Request.application
    def _serve_alerts(self, request):
        severity = request.args.get("severity") or None
        if severity is not None and severity not in alerts_lib.SEVERITIES:
            raise errors.InvalidArgumentError(
                f"severity must be one of {list(alerts_lib.SEVERITIES)}, got {severity!r}")
        data, skipped = self._all(request)
        skipped = self._skipped(request, skipped)
        chosen = _list(request, "run", 0)
        found = []
        for run in self._runs(request, chosen or list(data)):
            found += alerts_lib.at_least(run_alerts(run), severity)
        skipped = [s for s in skipped if not chosen or s.run in chosen]
        return _json(request, {"alerts": [a.as_json() for a in found],
                               "skipped": [s.as_json() for s in skipped]})

    @wrappers.Request.application
    def _serve_overview(self, request):
        data, _ = self._all(request)
        return _json(request, {"runs": [_memo(d, "overview", _overview) for d in data.values()]})

    @wrappers.Request.application
    def _serve_export(self, request):
        view = _arg(request, "view")
        if view == "series":
            mp = _int(request, "max_points", None, 2, 20000)
            rows = _series_rows(self._series(request, mp))
        elif view == "heatmap":
            rows = _heatmap_rows(self._heatmap(request))
        elif view == "compare":
            rows = self._compare_rows(request, self._compare(request))
        elif view == "all":
            data, _ = self._all(request)
            names = _list(request, "run", 0) or list(data)
            rows = (r for d in self._runs(request, names) for r in reader.long_rows(d))
        else:
            raise errors.InvalidArgumentError(
                f"view must be series, heatmap, compare or all, got {view!r}")
        return http_util.Respond(request, to_csv(rows), "text/csv")

    def _compare_rows(self, request, result: dict):
        runs = self._runs(request, [request.args["run_a"], request.args["run_b"]])
        for side, data in zip("ab", runs, strict=True):
            for layer, value in zip(result["layers"], result[side], strict=True):
                group = data.find_layer(layer)[0].group
                yield data.run, result[f"step_{side}"], group, layer, result["metric"], value

    @wrappers.Request.application
    def _serve_static(self, request):
        prefix = "/data/plugin/" + metadata.PLUGIN_NAME
        path = request.path[request.path.find(prefix) + len(prefix):]
        name = _STATIC.get(path)
        if name is None and path.startswith("/views/") and _VIEW_NAME.match(path[7:]):
            name = "views/" + path[7:]
        if name is None or self._frontend is None:
            raise errors.NotFoundError(f"no such file: {path}")
        full = os.path.join(self._frontend, name)
        if not os.path.isfile(full):
            raise errors.NotFoundError(f"no such file: {path}")
        with open(full, "rb") as f:
            body = f.read()
        return http_util.Respond(request, body, _CONTENT_TYPES[os.path.splitext(name)[1]])


# --- request parsing -------------------------------------------------------------


def _json(request, obj):
    # What `http_util.Respond` does with a dict, without the blanks after `,` and `:`
    # (one byte per number: ~10% of a heatmap).
    body = json.dumps(json_util.Cleanse(obj), separators=(",", ":"))
    return http_util.Respond(request, body, "application/json")


def _arg(request, name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise errors.InvalidArgumentError(f"missing parameter {name!r}")
    return value


def _list(request, name: str, minimum: int) -> list[str]:
    values = [v for v in request.args.getlist(name) if v]
    if len(values) < minimum:
        raise errors.InvalidArgumentError(f"missing parameter {name!r}")
    return list(dict.fromkeys(values))  # repeated names select a run once


def _int(request, name: str, default, lo: int, hi: int | None):
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.InvalidArgumentError(f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise errors.InvalidArgumentError(f"{name} must be {bounds}, got {value}")
    return value


def _metric(request) -> str:
    metric = _arg(request, "metric")
    if metric not in _KNOWN_METRICS:
        raise errors.InvalidArgumentError(f"unknown metric {metric!r}")
    return metric


def _layer(request) -> tuple[str, str | None]:
    layer = _arg(request, "layer")
    group = request.args.get("group") or None
    if layer == metadata.GROUP_ROW and group is None:
        raise errors.InvalidArgumentError("layer=* needs a group parameter")
    return layer, group


def _find(data: reader.RunData, layer: str, group: str | None):
    try:
        return data.find_layer(layer, group)
    except KeyError as e:
        raise errors.NotFoundError(e.args[0]) from None


def _values(g: reader.GroupData, metric: str) -> np.ndarray:
    if metric not in g.columns:
        raise errors.NotFoundError(f"metric {metric!r} is not logged for group {g.group!r}")
    return g.metric(metric)


# --- computations ----------------------------------------------------------------


def downsample_minmax(
    steps: np.ndarray, values: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keeps each bucket's min and max, and its first NaN/+Inf/-Inf if any.

    Spikes survive downsampling (a random sample would drop them), and a
    non-finite value is never hidden.

    Args:
        steps: `[T]` steps, ascending.
        values: `[T]` values.
        max_points: target number of points.

    Returns:
        `(steps, values)` subsequences, at most `max(max_points, 5)` long.

    Example:

    >>> s, v = downsample_minmax(np.arange(10), np.arange(10.0), 4)
    >>> s.tolist()
    [0, 4, 5, 9]
    """
    n = len(steps)
    if n <= max_points:
        return steps, values
    for per_bucket in (2, 5):
        keep = _bucket_picks(values, max(1, max_points // per_bucket))
        if len(keep) <= max_points:
            break
    return steps[keep], values[keep]


def _bucket_picks(values: np.ndarray, n_buckets: int) -> np.ndarray:
    n = len(values)
    bucket = (np.arange(n) * n_buckets) // n
    finite = np.isfinite(values)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    lo = np.lexsort((np.where(finite, values, np.inf), bucket))[starts]
    hi = np.lexsort((-np.where(finite, values, -np.inf), bucket))[starts]
    picks = [lo, hi]
    for mask in (np.isnan(values), values == np.inf, values == -np.inf):
        idx = np.flatnonzero(mask)
        if len(idx):
            picks.append(idx[np.unique(bucket[idx], return_index=True)[1]])
    return np.unique(np.concatenate(picks))


def _bucket_starts(n: int, n_buckets: int) -> np.ndarray:
    return np.unique((np.arange(n_buckets) * n) // n_buckets)


def heatmap(g: reader.GroupData, values: np.ndarray, max_steps: int, max_rows: int,
            digits: int | None = None, max_cells: int | None = None) -> dict:
    """Aggregates a `[T, rows]` metric into at most `max_steps` x `max_rows` cells by max.

    NaN wins a cell (it must stay visible). Row 0 (`*`) is always its own row;
    layer rows beyond the limit are grouped into contiguous bands.

    Args:
        g: the group.
        values: `[T, rows]` values of one metric.
        max_steps: most columns.
        max_rows: most rows, the group row included.
        digits: round the cells to this many significant digits (None: exact).
        max_cells: fewer columns than `max_steps` if rows x columns would exceed it.

    Returns:
        `rows`, `row_index`, `steps`, `step_ranges` and `values` (`[rows][columns]`).
    """
    n_steps, n_rows = values.shape
    if max_cells:
        max_steps = max(1, min(max_steps, max_cells // max(1, min(max_rows, n_rows))))
    if n_steps == 0:
        return {"rows": list(g.rows), "row_index": list(range(n_rows)), "steps": [],
                "step_ranges": [], "values": [[] for _ in range(n_rows)]}
    cols = _bucket_starts(n_steps, min(max_steps, n_steps))
    ends = np.r_[cols[1:], n_steps] - 1
    by_col = np.maximum.reduceat(values, cols, axis=0)  # NaN propagates
    band = 1 + _bucket_starts(n_rows - 1, min(max_rows - 1, n_rows - 1)) if n_rows > 1 else []
    starts = np.r_[0, band].astype(int)
    last = np.r_[starts[1:], n_rows] - 1
    cells = np.maximum.reduceat(by_col, starts, axis=1).T
    names = [g.rows[s] if s == e else f"{g.rows[s]} … {g.rows[e]}" for s, e in zip(
        starts.tolist(), last.tolist(), strict=True)]
    return {"rows": names, "row_index": starts.tolist(), "steps": g.steps[cols].tolist(),
            "step_ranges": np.stack([g.steps[cols], g.steps[ends]], 1).tolist(),
            "values": (cells if digits is None else round_significant(cells, digits)).tolist()}


def round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Rounds to `digits` significant digits; zeros, NaN and ±Inf stay as they are.

    Each result is the float nearest to a `digits`-digit decimal, so JSON writes
    it short (`0.02457`, `1.234e-05`) instead of 17 digits.

    Example:

    >>> round_significant(np.array([0.024570558817, 123456.0, -1.23456e-5]), 4).tolist()
    [0.02457, 123500.0, -1.235e-05]
    """
    values = np.asarray(values, dtype=np.float64)
    out = values.copy()
    ok = np.isfinite(values) & (values != 0)
    x = values[ok]
    shift = (digits - 1) - np.floor(np.log10(np.abs(x))).astype(np.int64)
    up = shift >= 0  # multiply/divide by exact powers of ten in the right order
    with np.errstate(over="ignore", invalid="ignore"):  # near the float64 limits
        scale = 10.0 ** np.abs(shift).astype(np.float64)
        x = np.where(up, np.round(x * scale) / scale, np.round(x / scale) * scale)
    out[ok] = np.where(np.isfinite(x), x, values[ok])  # 10**308-ish overflow: keep as is
    return out


def _at_or_before(steps: np.ndarray, step: int) -> int:
    return int(np.searchsorted(steps, step, side="right")) - 1


def _stats_at(g: reader.GroupData, step: int, row: int) -> dict:
    names = ("count", "zero_count", "nan_count", "inf_count")
    hit = np.flatnonzero(g.steps == step)
    if not len(hit):
        return dict.fromkeys(names, float("nan"))
    return {n: float(g.stats[hit[0], row, g.columns.index(n)]) if n in g.columns
            else float("nan") for n in names}


def _layer_names(data: reader.RunData) -> list[str]:
    return [name for g in data.groups.values() for name in g.rows[1:]]


def _compare_steps(a: reader.RunData, b: reader.RunData, want: int | None):
    sa, sb = a.all_steps(), b.all_steps()
    if not len(sa) or not len(sb):
        raise errors.NotFoundError("a run has no logged steps")
    if want is None:
        common = np.intersect1d(sa, sb)
        if len(common):
            return int(common[-1]), int(common[-1])
        return int(sa[-1]), int(sb[-1])
    ia, ib = _at_or_before(sa, want), _at_or_before(sb, want)
    if ia < 0 or ib < 0:
        raise errors.NotFoundError(f"a run has no logged step at or before {want}")
    return int(sa[ia]), int(sb[ib])


def _value_at(data: reader.RunData, layer: str, metric: str, step: int) -> float:
    g, row = data.find_layer(layer)
    hit = np.flatnonzero(g.steps == step)
    if not len(hit) or metric not in g.columns:
        return float("nan")
    return float(g.stats[hit[0], row, g.columns.index(metric)])


def _run_summary(data: reader.RunData) -> dict:
    steps = data.all_steps()
    return {
        "run": data.run,
        "policy": data.facts.get("policy"),
        "replicas": data.facts.get("replicas"),
        "what_if": list(data.facts.get("what_if") or []),
        "steps": {"first": int(steps[0]) if len(steps) else None,
                  "last": int(steps[-1]) if len(steps) else None, "count": int(len(steps))},
        "last_logged": data.last_logged,
        "capped": bool(data.capped),
        "note": _capped_note(data),
        "groups": [{"group": g.group, "rows": g.rows, "row_kinds": g.row_kinds,
                    "columns": g.columns} for g in data.groups.values()],
    }


def _capped_note(data: reader.RunData) -> str | None:
    """Says (for the user) that fewer steps are served than TensorBoard stores, or None."""
    if not data.capped:
        return None
    tag, points = min(data.capped.items(), key=lambda item: item[1])
    return (f"Serving a uniform sample of the stored steps (latest kept): one read of a tag is "
            f"limited to {data.budget_bytes / (1 << 20):.0f} MiB, i.e. {points} steps of "
            f"{tag}. Set {reader.READ_BUDGET_ENV} (MiB) to change the limit; TensorBoard's "
            f"Rust data server (--load_fast=true) rejects reads over 256 MiB.")


def global_norm(data: reader.RunData) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(steps, norm)`: the L2 norm over every group, at steps all groups logged."""
    groups = [g for g in data.groups.values() if "l2_norm" in g.columns]
    if not groups:
        return np.zeros(0, np.int64), np.zeros(0)
    steps = groups[0].steps
    for g in groups[1:]:
        steps = np.intersect1d(steps, g.steps)
    total = np.zeros(len(steps))
    for g in groups:
        norm = g.metric("l2_norm")[np.isin(g.steps, steps), 0]
        total += norm**2
    return steps, np.sqrt(total)


def _memo(data: reader.RunData, key: str, compute):
    """Returns `compute(data)`, computed once per version of the run's data.

    The reader hands out the same `RunData` until the run's tags get new data,
    then a new one with an empty `derived`: so a memo is never stale, and
    repeated requests (the tab polls) do not redo the work. Two threads may
    both compute a missing entry; they get equal results.
    """
    try:
        return data.derived[key]
    except KeyError:
        value = data.derived[key] = compute(data)
        return value


def run_alerts(data: reader.RunData) -> list[alerts_lib.Alert]:
    """Returns `alerts.evaluate(data)`, evaluated once per version of the run's data."""
    return _memo(data, "alerts", alerts_lib.evaluate)


def _overview(data: reader.RunData, n_worst: int = 5) -> dict:
    found = run_alerts(data)
    worst, seen = [], set()
    for a in found:  # errors first
        if a.group != STEP_GROUP and (a.group, a.layer) not in seen and len(worst) < n_worst:
            seen.add((a.group, a.layer))
            worst.append({"layer": a.layer, "group": a.group,
                          "metric": a.metric or a.rule, "value": a.value})
    scale = (data.step_metric("loss_scale") if "loss_scale" in data.step_columns
             else np.zeros(0))
    ls_steps, ls_values = downsample_minmax(data.step_steps, scale, 500)
    gn_steps, gn_values = downsample_minmax(*global_norm(data), 500)
    skipped = (data.step_metric("skipped_step") if "skipped_step" in data.step_columns
               else np.zeros(0))
    return {
        "run": data.run, "policy": data.facts.get("policy"),
        "alerts": alerts_lib.counts(found), "worst_layers": worst,
        "loss_scale": {"steps": ls_steps.tolist(), "values": ls_values.tolist()},
        "global_norm": {"steps": gn_steps.tolist(), "values": gn_values.tolist()},
        "skipped_steps": int(np.nansum(skipped)),
    }


# --- CSV -------------------------------------------------------------------------


def to_csv(rows) -> str:
    """Returns long-form CSV text with the header `run,step,group,layer,metric,value`.

    Floats use `repr` so that every float64 survives the round trip exactly.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for run, step, group, layer, metric, value in rows:
        writer.writerow((run, int(step), group, layer, metric, repr(float(value))))
    return out.getvalue()


def _series_rows(result: dict):
    for s in result["series"]:
        for step, value in zip(s["steps"], s["values"], strict=True):
            yield s["run"], step, s["group"], s["layer"], result["metric"], value


def _heatmap_rows(result: dict):
    for name, row in zip(result["rows"], result["values"], strict=True):
        for step, value in zip(result["steps"], row, strict=True):
            yield result["run"], step, result["group"], name, result["metric"], value


