"""The in-graph hook on the outermost optimizer's `apply`, and its host side.

`GradientCapture` wraps `optimizer.apply` on the instance, so every traced
train step passes the gradients it really applies through `stats` — no second
forward/backward pass. On steps chosen by the logging cadence (a `tf.cond`,
nothing runs on the others) the raw records land in a small ring buffer of
non-trainable `tf.Variable`s owned by this object (never by the model or the
optimizer, so they are never saved with them). The host reads the ring only
when it knows a logged step has run: one small device-to-host copy per logged
step, then `combine` and `summary` do the rest in numpy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tb_gradstats import combine, metadata, stats
from tb_gradstats.summary import GradientHealthWriter, GroupData

logger = logging.getLogger("tb_gradstats")

_ON_READ = dict(
    trainable=False,
    synchronization=tf.VariableSynchronization.ON_READ,
    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
)


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    """What to capture and how often.

    Attributes:
        update_freq: log every `update_freq`-th optimizer step; `None` logs only
            steps requested with `GradientCapture.request_log` (epoch mode).
        histogram_freq: write the histogram on every `histogram_freq`-th logged step (0: never).
        what_if: canonical what-if format names.
        layers: regex searched in each variable path; `None` captures all.
        slots: ring-buffer depth: logged steps that fit between two host reads.
    """

    update_freq: int | None
    histogram_freq: int
    what_if: tuple[str, ...]
    layers: str | None
    slots: int


@dataclasses.dataclass
class _Row:
    path: str
    group: str
    variable: object


def variable_owners(model) -> dict[int, object]:
    """Maps `id(variable)` to the innermost layer that created it."""
    owners: dict[int, object] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for v in getattr(layer, "_trainable_variables", []):
            owners[id(v)] = layer  # deeper layers come later and win
    return owners


def dtype_name(dtype) -> str:
    """Returns a plain dtype name for a TF/Keras/numpy dtype or string."""
    return tf.as_dtype(dtype).name


class GradientCapture:
    """Hooks one optimizer and turns its applied gradients into summaries.

    Args:
        optimizer: the model's (outermost) Keras optimizer.
        variables: trainable variables in model order.
        config: a `CaptureConfig`.
        writer: where logged steps go; `None` on non-chief workers (computes, writes nothing).
        compute_dtype_of: maps a variable to its layer's compute dtype name (or `None`).
        strategy: the `tf.distribute.Strategy` the variables live in.
        policy: the dtype policy name, recorded in the metadata.
    """

    def __init__(
        self,
        optimizer,
        variables: Sequence,
        config: CaptureConfig,
        writer: GradientHealthWriter | None,
        compute_dtype_of: Callable[[object], str | None],
        strategy: tf.distribute.Strategy,
        policy: str = "",
    ):
        self.optimizer = optimizer
        self.config = config
        self.writer = writer
        self.strategy = strategy
        pattern = re.compile(config.layers) if config.layers else None
        self.rows = [
            _Row(v.path, metadata.group_name(dtype_name(v.dtype), compute_dtype_of(v)), v)
            for v in variables
            if pattern is None or pattern.search(v.path)
        ]
        self._index = {id(r.variable): i for i, r in enumerate(self.rows)}
        self._groups = _group_members(self.rows)
        self._boundaries = stats.bucket_boundaries(config.what_if)
        self._table = combine.BucketTable(self._boundaries, config.what_if)
        self._columns = metadata.metric_names(config.what_if)
        self._loss_scale_var = getattr(optimizer, "dynamic_scale", None)
        self._info = dict(policy=policy, what_if=list(config.what_if),
                          replicas=strategy.num_replicas_in_sync)
        self._original_apply = None
        self._gather_fn = None
        self._kinds: dict[int, str] = {}  # filled while tracing: no-gradient / sparse rows
        self._written_up_to = -1
        self._logged_seen = 0
        self._make_state()

    # ---- TensorFlow state ---------------------------------------------------
    def _make_state(self) -> None:
        k, n = self.config.slots, len(self.rows)
        n_int = len(stats.INT_FIELDS) + len(self._boundaries) + 1
        with self.strategy.scope():
            self._step = tf.Variable(tf.constant(0, tf.int64), name="gh_step", **_ON_READ)
            self._request = tf.Variable(False, name="gh_request", **_ON_READ)
            self._log_next = tf.Variable(False, name="gh_log_next", **_ON_READ)
            self._logged = tf.Variable(tf.constant(0, tf.int64), name="gh_logged", **_ON_READ)
            self._ints = tf.Variable(tf.zeros([k, n, n_int], tf.int64), name="gh_ints", **_ON_READ)
            self._floats = tf.Variable(tf.zeros([k, n, 4], tf.float64), name="gh_floats", **_ON_READ)
            self._slot_step = tf.Variable(
                tf.fill([k], tf.constant(-1, tf.int64)), name="gh_slot_step", **_ON_READ
            )
            self._slot_vals = tf.Variable(tf.zeros([k, 2], tf.float32), name="gh_slot_vals", **_ON_READ)
            # Pre-update weights of a logged step, in float32 (exact for every float dtype
            # Keras trains in), for update_ratio; written only on logged steps.
            self._weights = _WeightSnapshot([r.variable for r in self.rows])

    @property
    def step(self) -> int:
        """The next global step the capture will see."""
        return int(self.strategy.experimental_local_results(self._step)[0].numpy())

    def set_step(self, step: int) -> None:
        """Sets the global step counter (e.g. to continue a previous run)."""
        for v in self.strategy.experimental_local_results(self._step):
            v.assign(step)
        self._written_up_to = step - 1

    def request_log(self) -> None:
        """Logs the step after the next one (used for `update_freq="epoch"`).

        The next step's update is where the pre-update weights for `update_ratio`
        are copied, so the logged step is the one after it.
        """
        for v in self.strategy.experimental_local_results(self._request):
            v.assign(True)

    # ---- the hook -----------------------------------------------------------
    def install(self) -> None:
        """Wraps `optimizer.apply` on the instance. Retrace the train step afterwards."""
        if self._original_apply is not None:
            return
        self._original_apply = self.optimizer.apply
        # object.__setattr__ keeps the optimizer's tracker from seeing the wrapper.
        object.__setattr__(self.optimizer, "apply", self._apply)

    def uninstall(self) -> None:
        """Restores the optimizer's own `apply`."""
        if self._original_apply is None:
            return
        self.optimizer.__dict__.pop("apply", None)
        self._original_apply = None

    def _apply(self, grads, trainable_variables=None):
        grads = list(grads)
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            else list(self.optimizer._trainable_variables)
        )
        step = self._step.read_value()
        logged = self._is_logged(step)
        by_row = self._grads_by_row(grads, variables)
        # Nothing before the update reads a model weight: a read would order every
        # weight's update after this cond, i.e. after the whole backward pass. The
        # pre-update weights of a logged step were copied at the end of the step before.
        pre, iterations, scale = tf.cond(
            logged,
            lambda: self._record_grads(by_row, step),
            lambda: (tf.zeros([len(self.rows), 2], tf.float64), tf.constant(0, tf.int64),
                     tf.constant(1.0)),
        )
        result = self._original_apply(grads, trainable_variables)
        tf.cond(
            logged,
            lambda: self._record_update(pre, iterations, scale, step),
            lambda: tf.constant(False),
        )
        tf.cond(
            self._snapshot_due(step),
            lambda: self._take_snapshot(step + 1),
            lambda: tf.constant(False),
        )
        self._step.assign_add(1)
        return result

    def _is_logged(self, step):
        if self.config.update_freq is None:
            return self._log_next.read_value()
        return tf.equal(step % self.config.update_freq, 0)

    def _snapshot_due(self, step):
        """Whether the next step is logged: then copy the weights this update produced."""
        if self.config.update_freq is None:
            return self._request.read_value()
        return tf.equal((step + 1) % self.config.update_freq, 0)

    def _grads_by_row(self, grads, variables) -> list:
        by_row = [None] * len(self.rows)
        for g, v in zip(grads, variables):
            i = self._index.get(id(v))
            if i is None:
                i = self._index.get(id(getattr(v, "_value", None) or v))
            if i is not None:
                by_row[i] = g
        for i, g in enumerate(by_row):
            if g is None:
                self._kinds[i] = metadata.ROW_NONE
            elif isinstance(g, tf.IndexedSlices):
                self._kinds[i] = metadata.ROW_SPARSE
        return by_row

    def _take_snapshot(self, for_step):
        self._weights.take(for_step)
        if self.config.update_freq is None:  # epoch mode: the request is served next step
            self._request.assign(False)
            self._log_next.assign(True)
        return tf.constant(True)

    def _record_grads(self, by_row, step):
        scale = None
        if self._loss_scale_var is not None:
            scale = tf.identity(self._loss_scale_var.value)
        iterations = tf.cast(tf.identity(self.optimizer.iterations), tf.int64)
        grads = [g.values if isinstance(g, tf.IndexedSlices) else g for g in by_row]
        ints, moments = stats.records(grads, self._boundaries, scale)
        slot = self._logged.read_value() % self.config.slots
        _assign_slot(self._ints, slot, ints)
        _assign_slot(self._slot_step, slot, step)
        return moments, iterations, tf.constant(1.0) if scale is None else tf.cast(scale, tf.float32)

    def _record_update(self, moments, iterations_before, scale, step):
        update_sq, weight_sq = self._weights.norms(step)
        floats = tf.concat([moments, update_sq[:, None], weight_sq[:, None]], 1)
        slot = self._logged.read_value() % self.config.slots
        _assign_slot(self._floats, slot, floats)
        skipped = tf.equal(tf.cast(tf.identity(self.optimizer.iterations), tf.int64), iterations_before)
        _assign_slot(self._slot_vals, slot, tf.stack([scale, tf.cast(skipped, tf.float32)]))
        self._logged.assign_add(1)
        self._log_next.assign(False)
        return tf.constant(True)

    def snapshot_weights(self) -> None:
        """Copies the current weights for the next step's `update_ratio` (eagerly, at fit start)."""
        self._weights.take_eagerly(self.strategy, self.step)

    # ---- host side ----------------------------------------------------------
    def is_logged_between(self, first: int, stop: int) -> bool:
        """Whether any step in `[first, stop)` is logged by the cadence."""
        freq = self.config.update_freq
        if freq is None or stop <= first:
            return False
        return (first + (-first) % freq) < stop

    def flush_to_writer(self) -> int:
        """Reads the ring buffer and writes every logged step not yet written.

        Returns:
            The number of steps written.
        """
        slots = self._read_slots()
        written = 0
        for step, ints, floats, vals in slots:
            if step <= self._written_up_to:
                continue
            self._write_step(step, ints, floats, vals)
            self._written_up_to = step
            written += 1
        return written

    def _read_slots(self):
        local = self.strategy.experimental_local_results
        slot_step = local(self._slot_step)[0].numpy()
        order = [int(i) for i in np.argsort(slot_step) if slot_step[i] > self._written_up_to]
        if not order:
            return []
        ints, floats = self._replica_arrays()  # [R, K, V, F]
        vals = local(self._slot_vals)[0].numpy()
        return [(int(slot_step[k]), ints[:, k], floats[:, k], vals[k]) for k in order]

    def _replica_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns the int and float rings of every replica, `[R, K, V, F]` each.

        Across workers this is a collective all-gather: every worker reaches it
        at the same logged steps, because the cadence depends on the step count alone.
        """
        rings = (self._ints, self._floats)
        local = [self.strategy.experimental_local_results(v) for v in rings]
        if len(local[0]) == self.strategy.num_replicas_in_sync:
            return tuple(np.stack([t.numpy() for t in copies]) for copies in local)
        if self._gather_fn is None:
            def replica_fn():
                ctx = tf.distribute.get_replica_context()
                return [ctx.all_gather(tf.expand_dims(v.read_value(), 0), axis=0) for v in rings]

            self._gather_fn = tf.function(lambda: self.strategy.run(replica_fn))
        gathered = self._gather_fn()
        return tuple(self.strategy.experimental_local_results(g)[0].numpy() for g in gathered)

    def _write_step(self, step: int, ints, floats, vals) -> None:
        self._logged_seen += 1
        hist_freq = self.config.histogram_freq
        with_hist = hist_freq > 0 and (self._logged_seen - 1) % hist_freq == 0
        groups = {}
        for group, members in self._groups.items():
            table, hists = combine.group_metrics(ints, floats, members, self._table, self._columns)
            data = GroupData(
                rows=[metadata.GROUP_ROW] + [self.rows[m].path for m in members],
                row_kinds=[metadata.ROW_GROUP] + [self._row_kind(m) for m in members],
                columns=self._columns,
                stats=table,
                info=dict(self._info, grad_dtype=metadata.split_group(group)[0],
                          compute_dtype=metadata.split_group(group)[1]),
            )
            if with_hist:
                data.hist_first_exponent, data.hist = combine.trim_histograms(hists)
            groups[group] = data
        nonfinite = _nonfinite_replicas(ints, self._table)
        skipped = float(vals[1])
        step_values = {
            "loss_scale": float(vals[0]),
            "skipped_step": skipped,
            "replicas": float(ints.shape[0]),
            "nonfinite_replicas": float(nonfinite),
            "nonfinite_applied": float(nonfinite > 0 and skipped == 0.0),
        }
        if self.writer is not None:
            self.writer.write(step, groups, step_values, step_info=self._info)

    def _row_kind(self, m: int) -> str:
        return self._kinds.get(m, metadata.ROW_DENSE)


class _WeightSnapshot:
    """Float32 copies of the weights before a logged update, and the update norms.

    The copy is taken at the end of the step before a logged one (or at fit start),
    so the logged step never reads a weight before its own update. Large variables
    get their own copy and reductions; small ones share one flat copy with segment
    ids (see `stats.LARGE`). Create under the strategy's scope.

    Args:
        variables: the monitored variables, in row order.
    """

    def __init__(self, variables: Sequence):
        self._vars = list(variables)
        self._large = [i for i, v in enumerate(self._vars) if stats.is_large(_value(v))]
        self._small = [i for i in range(len(self._vars)) if i not in set(self._large)]
        self._back = np.argsort(self._small + self._large)
        size = sum(int(np.prod(self._vars[i].shape)) for i in self._small)
        self._flat = tf.Variable(tf.zeros([size], tf.float32), name="gh_snapshot", **_ON_READ)
        self._copies = [
            tf.Variable(tf.zeros(self._vars[i].shape, tf.float32), name="gh_snapshot", **_ON_READ)
            for i in self._large
        ]
        # The step whose pre-update weights the copy holds (-1: none yet).
        self._for_step = tf.Variable(tf.constant(-1, tf.int64), name="gh_snapshot_step", **_ON_READ)

    def _current(self):
        flat, seg = stats.flatten([_value(self._vars[i]) for i in self._small])
        return flat, seg, [tf.cast(_value(self._vars[i]), tf.float32) for i in self._large]

    def take(self, for_step) -> tf.Tensor:
        """Copies the current weights as the pre-update weights of step `for_step`."""
        flat, _, large = self._current()
        self._flat.assign(flat)
        for copy, w in zip(self._copies, large):
            copy.assign(w)
        self._for_step.assign(tf.cast(for_step, tf.int64))
        return tf.constant(True)

    def take_eagerly(self, strategy, for_step: int) -> None:
        """`take` outside any function: every local replica gets the (mirrored) weights."""
        flat, _, large = self._current()
        for var, value in [(self._flat, flat), *zip(self._copies, large),
                           (self._for_step, tf.constant(for_step, tf.int64))]:
            for component in strategy.experimental_local_results(var):
                component.assign(value)

    def norms(self, step) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns `[V]` float64 `(|w - copy|^2, |copy|^2)`; NaN when the copy is not of `step`."""
        flat, seg, large = self._current()
        n = len(self._small)
        upd = [stats.sum_sq_by_segment(flat - self._flat, seg, n)]
        w = [stats.sum_sq_by_segment(self._flat, seg, n)]
        for copy, current in zip(self._copies, large):
            upd.append(stats.sum_sq_by_segment(current - copy, None, 1))
            w.append(stats.sum_sq_by_segment(copy, None, 1))
        valid = tf.equal(self._for_step.read_value(), tf.cast(step, tf.int64))
        nan = tf.constant(np.nan, tf.float64)
        update_sq = tf.where(valid, tf.gather(tf.concat(upd, 0), self._back), nan)
        return update_sq, tf.gather(tf.concat(w, 0), self._back)


def _group_members(rows: Sequence[_Row]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.group, []).append(i)
    return groups


def _nonfinite_replicas(ints: np.ndarray, table: combine.BucketTable) -> int:
    merged = ints.sum(axis=1)  # [R, F]: bucket counts add over variables
    cum = table.cumulative(merged[:, len(stats.INT_FIELDS):])
    below_inf = table.below(cum, stats.INF_BITS)
    return int(np.sum(merged[:, 0] - below_inf > 0))


def _value(variable):
    return variable.value if hasattr(variable, "value") else variable


def _assign_slot(var, slot, value) -> None:
    updated = tf.tensor_scatter_nd_update(var.read_value(), [[slot]], value[None])
    var.assign(updated)


def default_slots(update_freq: int | None, steps_per_execution: int) -> int:
    """Ring depth so that one host read per execution loses no logged step."""
    if not update_freq:
        return 2
    return max(2, math.ceil(steps_per_execution / update_freq) + 1)




def make_capture(
    optimizer,
    variables: Sequence,
    writer: GradientHealthWriter,
    *,
    update_freq: int | None,
    histogram_freq: int,
    what_if: Sequence[str],
    layers: str | None,
    model=None,
    steps_per_execution: int = 1,
) -> GradientCapture:
    """Builds a `GradientCapture` for a Keras model or a bare list of variables.

    Args:
        optimizer: the outermost optimizer (built here if needed).
        variables: trainable variables, in the order rows should appear.
        writer: the run's writer; only the chief worker keeps it.
        update_freq: log every this many steps; `None` for on-request logging.
        histogram_freq: histogram on every this-many logged steps (0: never).
        what_if: canonical what-if format names.
        layers: optional regex on variable paths.
        model: the Keras model, if any: gives layer compute dtypes and the policy.
        steps_per_execution: steps between two host reads.

    Returns:
        A ready (not yet installed) `GradientCapture` whose step counter starts
        at the optimizer's iteration count.
    """
    if not optimizer.built:
        optimizer.build(list(variables))
    strategy = (
        getattr(model, "distribute_strategy", None)
        # Keras' TF optimizer keeps the strategy it was created under: custom loops.
        or getattr(optimizer, "_distribution_strategy", None)
        or tf.distribute.get_strategy()
    )
    owners = variable_owners(model) if model is not None else {}
    config = CaptureConfig(
        update_freq=update_freq,
        histogram_freq=histogram_freq,
        what_if=tuple(what_if),
        layers=layers,
        slots=default_slots(update_freq, steps_per_execution),
    )
    capture = GradientCapture(
        optimizer,
        variables,
        config,
        writer=writer if _is_chief(strategy) else None,
        compute_dtype_of=lambda v: _compute_dtype(owners.get(id(v))),
        strategy=strategy,
        policy=_policy_name(model),
    )
    capture.set_step(int(optimizer.iterations.numpy()))
    return capture


def _compute_dtype(layer) -> str | None:
    if layer is None:
        return None
    return getattr(layer, "compute_dtype", None)


def _policy_name(model) -> str:
    import keras

    policy = getattr(model, "dtype_policy", None)
    return getattr(policy, "name", "") or keras.config.dtype_policy().name


def _is_chief(strategy) -> bool:
    """Only one worker writes under multi-worker strategies."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return (not has_chief) and task_type == "worker" and task_id == 0
