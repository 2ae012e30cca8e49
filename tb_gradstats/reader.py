"""Reads Gradient Health summaries into numpy arrays, without TensorFlow.

One code path for the plugin and the CLI: both go through a TensorBoard data
provider (`list_tensors` / `read_tensors`). The plugin gets its provider from
TensorBoard; the CLI builds one over a logdir with `logdir_provider`.

Tags that this version cannot read (newer schema, bad metadata, odd shapes)
are skipped and reported in `Reader.skipped`, never raised: one bad run must
not hide the others.

Example:

```python
reader = Reader(logdir_provider("runs/"))
for run in reader.runs():
    data = reader.run_data(run)
    print(run, data.steps_range(), list(data.groups))
```
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
from tensorboard import context as context_lib
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.data import provider as provider_lib

from tb_gradstats import metadata

logger = logging.getLogger("tb_gradstats")

# `read_tensors` needs a point count; the reservoir (samples_per_plugin) is the
# real cap, so ask for everything it kept. 0 would mean "nothing" to providers.
KEEP_ALL = 1 << 30

# Most bytes of tensor data one `read_tensors` call may return. The Rust data
# server (`--load_fast=true`, TensorBoard's default) answers in one gRPC message
# and the client rejects messages over 256 MiB (RESOURCE_EXHAUSTED), so an
# unbounded read of a wide tag (4 runs x 200 layers x 5000 steps: ~300 MB per
# stats tag) served nothing at all. The reader reads one tag per call and asks
# for at most `budget // bytes per step` points, the bytes per step coming from
# the tag's metadata (rows x columns x 8). Fewer steps than stored are then
# served, uniformly sampled by the provider (latest step kept); `/runs` says so.
# Override with the environment variable `TB_GRADSTATS_READ_BUDGET_MB`.
READ_BUDGET_BYTES = 128 << 20
READ_BUDGET_ENV = "TB_GRADSTATS_READ_BUDGET_MB"
# A histogram's width (bins) is not in its metadata: it is probed from the
# latest step and given this much headroom, up to the widest possible histogram
# (float32 exponents -149..127 plus the first-exponent column).
_HIST_WIDTH_HEADROOM = 2
_HIST_MAX_COLUMNS = 280
# A read that fails anyway (a wider tensor than estimated) is retried with this
# fraction of the points, this many times.
_RETRY_SHRINK = 4
_RETRIES = 3


def read_budget_bytes() -> int:
    """Returns the per-call read budget: `TB_GRADSTATS_READ_BUDGET_MB` or `READ_BUDGET_BYTES`."""
    raw = os.environ.get(READ_BUDGET_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            logger.warning("tb_gradstats: ignoring %s=%r (not a number)", READ_BUDGET_ENV, raw)
        else:
            if value > 0:
                return max(1, int(value * (1 << 20)))
    return READ_BUDGET_BYTES

# Content keys that describe the tensor layout rather than the run.
_LAYOUT_KEYS = frozenset({"kind", "group", "rows", "row_kinds", "columns", "schema_version"})
# Content keys that describe the whole run (the same in every tag of a run).
_RUN_KEYS = ("policy", "replicas", "what_if")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A tag the reader did not use, and why.

    Attributes:
        run: run name.
        tag: tag name.
        reason: a sentence for the user.
    """

    run: str
    tag: str
    reason: str

    def as_json(self) -> dict:
        """Returns the entry as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class GroupData:
    """All logged values of one dtype group of one run.

    Attributes:
        group: group id (`float32`, `float32@float16`, ...).
        rows: row names; `rows[0]` is `metadata.GROUP_ROW`.
        row_kinds: one `metadata.ROW_*` kind per row.
        columns: stats column names.
        facts: the other metadata facts (policy, dtypes, replicas, what_if).
        steps: int64 `[T]`, the logged steps, ascending.
        stats: float64 `[T, len(rows), len(columns)]`.
        hist_steps: int64 `[H]`, steps that have a histogram.
        hist: one `(first_exponent, counts[len(rows), W])` per `hist_steps` entry.
    """

    group: str
    rows: list[str]
    row_kinds: list[str]
    columns: list[str]
    facts: dict
    steps: np.ndarray
    stats: np.ndarray
    hist_steps: np.ndarray
    hist: list[tuple[int, np.ndarray]]

    def metric(self, name: str) -> np.ndarray:
        """Returns `[T, rows]` values of stats column `name`.

        Raises:
            KeyError: if the column is not logged for this group.
        """
        return self.stats[:, :, self.columns.index(name)]

    @property
    def compute_dtype(self) -> str:
        """The dtype the group's layers compute in (from the group id)."""
        return metadata.split_group(self.group)[1]


@dataclasses.dataclass
class RunData:
    """Everything logged for one run.

    Attributes:
        run: run name.
        groups: group id → `GroupData`, in tag order.
        step_steps: int64 `[S]` steps of the step tensor.
        step_values: float64 `[S, len(step_columns)]`.
        step_columns: names of the step tensor columns.
        facts: run-level facts (policy, replicas, what_if) merged from the tags.
        capped: tag → points read, for tags whose read hit the per-call byte
            budget (`READ_BUDGET_BYTES`): the provider may hold more steps.
        budget_bytes: the per-call byte budget the run was read with.
        last_logged: the largest step any tag of the run has stored.
        version: the reader's data version of this run; a new `RunData` (with a
            higher version) replaces this one when the run's tags get new data.
        derived: memo of results computed from this data (e.g. the plugin's
            alerts); it lives and dies with this version of the data.
    """

    run: str
    groups: dict[str, GroupData]
    step_steps: np.ndarray
    step_values: np.ndarray
    step_columns: list[str]
    facts: dict
    capped: dict[str, int] = dataclasses.field(default_factory=dict)
    budget_bytes: int = 0
    last_logged: int | None = None
    version: int = 0
    derived: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def step_metric(self, name: str) -> np.ndarray:
        """Returns `[S]` values of step column `name` (KeyError if absent)."""
        return self.step_values[:, self.step_columns.index(name)]

    def all_steps(self) -> np.ndarray:
        """Returns the sorted union of every logged step of the run."""
        parts = [g.steps for g in self.groups.values()] + [self.step_steps]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def find_layer(self, layer: str, group: str | None = None) -> tuple[GroupData, int]:
        """Returns `(group data, row index)` of a layer.

        Args:
            layer: a variable path, or `metadata.GROUP_ROW` together with `group`.
            group: required when `layer` is the group row; else optional.

        Raises:
            KeyError: with a user-facing message when nothing matches.
        """
        if layer == metadata.GROUP_ROW:
            if group not in self.groups:
                raise KeyError(f"run {self.run!r} has no group {group!r}")
            return self.groups[group], 0
        for data in self.groups.values():
            if group is not None and data.group != group:
                continue
            if layer in data.rows[1:]:
                return data, data.rows.index(layer, 1)
        where = f" in group {group!r}" if group is not None else ""
        raise KeyError(f"run {self.run!r} has no layer {layer!r}{where}")


class Reader:
    """Reads and caches our data from a TensorBoard data provider.

    The cache is keyed by each tag's `max_step` and `max_wall_time`, so a
    growing run is re-read only when it got new data.

    Args:
        data_provider: a `tensorboard.data.provider.DataProvider`.
        experiment_id: the experiment id (`""` for a plain logdir).
        downsample: most points to ask the provider for per tag.
        list_ttl_s: seconds a tag listing is reused (0: list on every call).
        read_budget: most bytes of tensor data one `read_tensors` call may
            return (None: `read_budget_bytes()`). Tags are read one per call,
            each asking for at most `read_budget // bytes per step` points.
    """

    def __init__(
        self,
        data_provider,
        experiment_id: str = "",
        downsample: int = KEEP_ALL,
        list_ttl_s: float = 0.0,
        read_budget: int | None = None,
    ):
        self.read_budget = int(read_budget) if read_budget else read_budget_bytes()
        self._provider = data_provider
        self._list_ttl_s = list_ttl_s
        self._listing: tuple[float, dict] | None = None
        self._experiment_id = experiment_id
        self._downsample = int(downsample) if downsample else KEEP_ALL
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[object, RunData, list[Skipped]]] = {}
        self._versions = itertools.count(1)
        self.skipped: list[Skipped] = []

    def _list(self, ctx=None) -> dict:
        # A gRPC `list_tensors` to the Rust data server costs up to ~45 ms and
        # one page load makes several requests: reuse a listing for a moment.
        now = time.monotonic()
        with self._lock:
            if self._listing is not None and now - self._listing[0] < self._list_ttl_s:
                return self._listing[1]
        ctx = ctx or context_lib.RequestContext()
        try:
            listing = self._provider.list_tensors(
                ctx, experiment_id=self._experiment_id, plugin_name=metadata.PLUGIN_NAME
            )
        except Exception as e:  # noqa: BLE001 - a broken logdir must not crash the caller
            logger.warning("tb_gradstats: cannot list tensors: %s", e)
            return {}
        with self._lock:
            self._listing = (now, listing)
        return listing

    def runs(self, ctx=None) -> list[str]:
        """Returns the sorted names of the runs that have our data."""
        return sorted(run for run, tags in self._list(ctx).items() if tags)

    def read_all(self, ctx=None) -> tuple[dict[str, RunData], list[Skipped]]:
        """Reads every run.

        Returns:
            `(run → RunData, skipped)`; runs whose every tag was skipped are absent.
        """
        listing = self._list(ctx)
        with self._lock:  # forget runs that are gone
            for run in set(self._cache) - set(listing):
                del self._cache[run]
        out, skipped = {}, []
        for run in sorted(listing):
            data, run_skipped = self._run_from_listing(ctx, run, listing[run])
            skipped += run_skipped
            if data is not None:
                out[run] = data
        self.skipped = skipped
        return out, skipped

    def run_data(self, run: str, ctx=None) -> RunData | None:
        """Returns one run's data, or `None` if the run has none we can read."""
        listing = self._list(ctx)
        if run not in listing:
            return None
        data, _ = self._run_from_listing(ctx, run, listing[run])
        return data

    def _run_from_listing(self, ctx, run: str, tags: dict):
        key = tuple(sorted((t, ts.max_step, ts.max_wall_time) for t, ts in tags.items()))
        with self._lock:
            cached = self._cache.get(run)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        data, skipped = self._read_run(ctx or context_lib.RequestContext(), run, tags)
        with self._lock:
            self._cache[run] = (key, data, skipped)
        return data, skipped

    def _read_run(self, ctx, run: str, tags: dict) -> tuple[RunData | None, list[Skipped]]:
        skipped: list[Skipped] = []
        contents = {}
        for tag, ts in tags.items():
            try:
                contents[tag] = _check_content(tag, ts.plugin_content)
            except metadata.SchemaError as e:
                skipped.append(Skipped(run, tag, str(e)))
        if not contents:
            return None, skipped
        tensors, capped = {}, {}
        for tag, limit in self._limits(ctx, run, contents).items():
            # Steps are distinct and >= 0, so a tag holds at most max_step + 1 points.
            most = max(1, int(tags[tag].max_step) + 1)
            try:
                tensors[tag], limit = self._read_tag(ctx, run, tag, limit, most)
            except Exception as e:  # noqa: BLE001 - corrupt data must not raise
                skipped.append(Skipped(run, tag, f"cannot read tensors: {e}"))
                continue
            if limit < min(self._downsample, most) and len(tensors[tag]) >= limit:
                capped[tag] = len(tensors[tag])
        if not tensors:
            return None, skipped
        data = _assemble(run, {t: c for t, c in contents.items() if t in tensors},
                         tensors, skipped)
        if data is not None:
            data.capped, data.budget_bytes = capped, self.read_budget
            data.version = next(self._versions)
            data.last_logged = max((int(tags[t].max_step) for t in contents), default=None)
        return data, skipped

    def _limits(self, ctx, run: str, contents: dict) -> dict[str, int]:
        """Returns tag → points to ask for so that one read stays within the budget.

        The stats tags and the step tag share one count (the smallest), so
        that a provider that samples by (stored points, count), as both of
        TensorBoard's do, keeps the same steps in each and the groups line up.
        """
        limits, hist = {}, {}
        for tag, info in contents.items():
            if tag == metadata.STEP_TAG:
                values = len(info["columns"])
            elif info["kind"] == metadata.KIND_STATS:
                values = len(info["rows"]) * len(info["columns"])
            else:
                width = self._hist_columns(ctx, run, tag)
                hist[tag] = self._points_within_budget(len(info["rows"]) * width)
                continue
            limits[tag] = self._points_within_budget(values)
        shared = min(limits.values(), default=self._downsample)
        return {**dict.fromkeys(limits, shared), **hist}

    def _points_within_budget(self, values_per_point: int) -> int:
        # float64 values plus the step, wall time and message framing of each point.
        per_point = 8 * max(1, values_per_point) + 64
        return max(1, min(self._downsample, self.read_budget // per_point))

    def _hist_columns(self, ctx, run: str, tag: str) -> int:
        """Estimates a histogram tag's columns per row from its latest step."""
        try:
            latest = self._read(ctx, run, tag, 1)
            width = max((np.shape(d.numpy)[-1] for d in latest if np.ndim(d.numpy) == 2),
                        default=_HIST_MAX_COLUMNS)
        except Exception:  # noqa: BLE001 - the real read reports the problem
            width = _HIST_MAX_COLUMNS
        return int(min(_HIST_MAX_COLUMNS, max(2, width * _HIST_WIDTH_HEADROOM)))

    def _read(self, ctx, run: str, tag: str, downsample: int) -> list:
        return self._provider.read_tensors(
            ctx,
            experiment_id=self._experiment_id,
            plugin_name=metadata.PLUGIN_NAME,
            downsample=downsample,
            run_tag_filter=provider_lib.RunTagFilter(runs=[run], tags=[tag]),
        ).get(run, {}).get(tag, [])

    def _read_tag(self, ctx, run: str, tag: str, limit: int, most: int) -> tuple[list, int]:
        """Reads one tag; a failed read is retried with fewer points.

        Args:
            limit: points to ask for.
            most: an upper bound of the points the tag holds.

        Returns:
            `(data, the point count that was asked for)`.
        """
        for attempt in range(_RETRIES + 1):
            try:
                return self._read(ctx, run, tag, limit), limit
            except Exception as e:  # noqa: BLE001 - e.g. gRPC RESOURCE_EXHAUSTED
                if attempt == _RETRIES or limit <= 1:
                    raise
                logger.warning("tb_gradstats: reading %s/%s with %d points failed (%s); "
                               "retrying with fewer", run, tag, limit, e)
                limit = max(1, min(limit, most) // _RETRY_SHRINK)
        raise AssertionError("unreachable")


def _check_content(tag: str, content: bytes) -> dict:
    """Parses and validates one tag's metadata (raises `SchemaError`)."""
    info = metadata.parse_plugin_content(content or b"")
    kind = info.get("kind")
    if tag == metadata.STEP_TAG:
        _require(kind == metadata.KIND_STEP, f"kind {kind!r} for the step tag")
        _require_str_list(info, "columns")
        return info
    _require(kind in (metadata.KIND_STATS, metadata.KIND_HIST), f"unknown kind {kind!r}")
    for key in ("rows", "row_kinds") + (("columns",) if kind == metadata.KIND_STATS else ()):
        _require_str_list(info, key)
    _require(len(info["rows"]) == len(info["row_kinds"]), "rows and row_kinds differ in length")
    _require(info["rows"][:1] == [metadata.GROUP_ROW], "row 0 is not the group row '*'")
    _require(isinstance(info.get("group"), str), "missing group")
    return info


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise metadata.SchemaError(why)


def _require_str_list(info: dict, key: str) -> None:
    value = info.get(key)
    _require(
        isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value),
        f"missing or bad {key!r}",
    )


def _assemble(run: str, contents: dict, tensors: dict, skipped: list[Skipped]) -> RunData | None:
    stats, hists, facts = {}, {}, {}
    step = (np.zeros(0, np.int64), np.zeros((0, len(metadata.STEP_METRICS))))
    step_columns = list(metadata.STEP_METRICS)
    for tag, info in contents.items():
        for key in _RUN_KEYS:  # the first tag that states a run fact wins
            if key in info:
                facts.setdefault(key, info[key])
        data = tensors.get(tag, [])
        if tag == metadata.STEP_TAG:
            step_columns = info["columns"]
            step = _stack(run, tag, data, (len(step_columns),), skipped)
        elif info["kind"] == metadata.KIND_STATS:
            shape = (len(info["rows"]), len(info["columns"]))
            stats[info["group"]] = (info, _stack(run, tag, data, shape, skipped))
        else:
            hists[info["group"]] = _hist_list(run, tag, data, len(info["rows"]), skipped)
    groups = {}
    for group, (info, (steps, values)) in stats.items():
        hist_steps, hist = hists.pop(group, (np.zeros(0, np.int64), []))
        groups[group] = GroupData(
            group=group, rows=list(info["rows"]), row_kinds=list(info["row_kinds"]),
            columns=list(info["columns"]),
            facts={k: v for k, v in info.items() if k not in _LAYOUT_KEYS},
            steps=steps, stats=values, hist_steps=hist_steps, hist=hist,
        )
    for group in hists:
        skipped.append(Skipped(run, metadata.hist_tag(group), "histogram without stats tag"))
    if not groups and not len(step[0]):
        return None
    return RunData(run, groups, step[0], step[1], step_columns, facts)


def _stack(run, tag, data, shape, skipped) -> tuple[np.ndarray, np.ndarray]:
    """Stacks the tensors of one tag; drops (and reports) ones of another shape."""
    steps, values, bad = [], [], 0
    for datum in data:
        try:
            value = np.asarray(datum.numpy, dtype=np.float64)
        except (TypeError, ValueError):
            value = None
        if value is None or value.shape != shape:
            bad += 1
            continue
        steps.append(datum.step)
        values.append(value)
    if bad:
        skipped.append(Skipped(run, tag, f"{bad} step(s) with a shape other than {list(shape)}"))
    if not values:
        return np.zeros(0, np.int64), np.zeros((0,) + shape)
    return _sorted_unique(np.asarray(steps, np.int64), np.stack(values))


def _sorted_unique(steps: np.ndarray, values: np.ndarray):
    # Providers return data sorted by step with one datum per step; be safe anyway.
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    keep = np.append(steps[1:] != steps[:-1], True)  # last write of a step wins
    return steps[keep], values[keep]


def _hist_list(run, tag, data, n_rows, skipped):
    steps, hist, bad = [], [], 0
    for datum in data:
        try:
            value = np.asarray(datum.numpy, dtype=np.float64)
        except (TypeError, ValueError):
            value = None
        if value is None or value.ndim != 2 or value.shape[0] != n_rows or value.shape[1] < 1:
            bad += 1
            continue
        first = value[0, 0]
        if not np.isfinite(first):
            bad += 1
            continue
        steps.append(datum.step)
        hist.append((int(first), value[:, 1:]))
    if bad:
        skipped.append(Skipped(run, tag, f"{bad} histogram step(s) with a bad shape"))
    return np.asarray(steps, np.int64), hist


class EventFileScanner:
    """Finds event files that TensorBoard silently stops reading, and says why.

    TensorBoard's loaders stop at the first record they cannot frame (a bad
    length CRC, a truncated tail) without telling anyone, so a corrupt or
    truncated file just looks like a run with fewer steps. This walks a local
    logdir and checks the TFRecord framing of every `*tfevents*` file: each
    record's length and its CRC, and that the data and footer are all there.
    Data CRCs are not checked (that would read every byte).

    Results are cached per file by size and mtime; a file that grew is
    checked from its last good record on, so rescanning a live logdir is cheap.

    Args:
        logdir: a local directory (remote paths yield nothing).
        grace_s: an incomplete last record younger than this is a write in
            progress, not a truncation.
    """

    def __init__(self, logdir: str | None, grace_s: float = 30.0):
        self._logdir = logdir
        self._grace_s = grace_s
        self._lock = threading.Lock()
        # path -> (size, mtime_ns, offset after the last good record, problem or None)
        self._files: dict[str, tuple[int, int, int, str | None]] = {}

    def scan(self) -> list[Skipped]:
        """Returns one `Skipped` (tag = file name) per damaged event file."""
        if not self._logdir or "://" in self._logdir or not os.path.isdir(self._logdir):
            return []
        out = []
        for root, dirs, files in os.walk(self._logdir):
            dirs.sort()
            for name in sorted(files):
                if "tfevents" not in name:
                    continue
                problem = self._check(os.path.join(root, name))
                if problem:
                    run = os.path.relpath(root, self._logdir)
                    out.append(Skipped(run, name, problem))
        return out

    def _check(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None  # vanished between listing and stat
        with self._lock:
            size, mtime, offset, problem = self._files.get(path, (-1, -1, 0, None))
        if (size, mtime) != (st.st_size, st.st_mtime_ns):
            if size > st.st_size or problem is not None and not problem.startswith("ends in"):
                offset = 0  # rewritten or shrunk: start over
            offset, problem = _check_framing(path, offset, st.st_size)
            with self._lock:
                self._files[path] = (st.st_size, st.st_mtime_ns, offset, problem)
        if problem and problem.startswith("ends in") and (
                time.time() - st.st_mtime_ns / 1e9 < self._grace_s):
            return None  # most likely a record being written right now
        return problem


def _check_framing(path: str, offset: int, size: int) -> tuple[int, str | None]:
    """Walks the TFRecord framing from `offset`; returns (good offset, problem)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while offset < size:
                header = f.read(12)
                if len(header) < 12:
                    return offset, (f"ends in an incomplete record at byte {offset} of {size} "
                                    "(truncated, or still being written); records before it are read")
                length, crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != crc:
                    what = "not a TFRecord event file" if offset == 0 else "corrupt record"
                    return offset, (f"{what}: bad record header at byte {offset}; "
                                    "TensorBoard reads nothing after it")
                end = offset + 12 + length + 4
                if end > size:
                    return offset, (f"ends in an incomplete record at byte {offset} of {size} "
                                    "(truncated, or still being written); records before it are read")
                f.seek(end)
                offset = end
    except OSError as e:
        return offset, f"cannot read event file: {e}"
    return offset, None


def logdir_provider(logdir: str):
    """Builds a data provider over `logdir` that keeps every logged step.

    The same `MultiplexerDataProvider` TensorBoard uses with `--load_fast=false`,
    with a tensor size guidance of 0 (keep all) for our plugin, loaded once.

    Args:
        logdir: a directory of runs (subdirectories with event files).

    Returns:
        A loaded `MultiplexerDataProvider`.

    Example:

    ```python
    provider = logdir_provider("runs/")
    reader = Reader(provider)
    ```
    """
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0},
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    return data_provider.MultiplexerDataProvider(multiplexer, logdir)


def long_rows(data: RunData) -> Iterator[tuple[str, int, str, str, str, float]]:
    """Yields every logged value of a run in long form.

    Args:
        data: one run's data.

    Yields:
        `(run, step, group, layer, metric, value)`; the group aggregate has
        layer `*`; step-tensor values have group `_step` and layer `*`.
    """
    for group in data.groups.values():
        for t, step in enumerate(group.steps.tolist()):
            for r, layer in enumerate(group.rows):
                for c, metric in enumerate(group.columns):
                    yield data.run, step, group.group, layer, metric, float(group.stats[t, r, c])
    for t, step in enumerate(data.step_steps.tolist()):
        for c, metric in enumerate(data.step_columns):
            yield data.run, step, "_step", "*", metric, float(data.step_values[t, c])
