"""Synthetic Gradient Health runs for tests and benchmarks (no TensorFlow).

`write_synthetic_run` writes a run with `GradientHealthWriter` and returns the
exact arrays it wrote, so tests compare what comes back against numbers known
independently of the reader.

Example:

```python
from tests.fixtures import write_synthetic_run

run = write_synthetic_run(tmp_path, "train", steps=range(100))
run.stats["float32"][5, 1, run.columns.index("l2_norm")]  # the value written at step 5
```
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tb_gradstats import metadata
from tb_gradstats.summary import GradientHealthWriter, GroupData

DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {"float32": ("dense/kernel", "dense/bias")}

# fn(step_index, step, group, n_rows, columns) -> float64 [n_rows, len(columns)]
StatsFn = Callable[[int, int, str, int, Sequence[str]], np.ndarray]
# fn(step_index, step) -> dict of step metrics
StepFn = Callable[[int, int], Mapping[str, float]]


@dataclasses.dataclass
class SyntheticRun:
    """What `write_synthetic_run` wrote.

    Attributes:
        path: the run directory.
        run: the run name (directory name under the logdir).
        steps: int64 `[T]` logged steps.
        columns: stats columns (same for every group).
        rows: group → row names (`*` first).
        stats: group → float64 `[T, rows, columns]`.
        hist_first_exponent: group → `[T]` first exponents.
        hist: group → float64 `[T, rows, W]` counts.
        step_values: float64 `[T, 5]` in `metadata.STEP_METRICS` order.
    """

    path: str
    run: str
    steps: np.ndarray
    columns: list[str]
    rows: dict[str, list[str]]
    stats: dict[str, np.ndarray]
    hist_first_exponent: dict[str, np.ndarray]
    hist: dict[str, np.ndarray]
    step_values: np.ndarray


def default_stats(i: int, step: int, group: str, n_rows: int, columns: Sequence[str]) -> np.ndarray:
    """Healthy-looking, distinct values: a deterministic function of step, row and column."""
    rng = np.random.default_rng([step, zlib.crc32(group.encode())])
    out = rng.uniform(0.0, 1.0, size=(n_rows, len(columns)))
    col = {c: k for k, c in enumerate(columns)}
    out[:, col["count"]] = 1000.0
    out[:, col["zero_fraction"]] = 0.01
    out[:, col["zero_count"]] = 10.0
    out[:, col["scaled_zero_fraction"]] = 0.01
    out[:, col["nan_count"]] = 0.0
    out[:, col["inf_count"]] = 0.0
    for c, k in col.items():
        if c.startswith(("underflow_fraction/", "overflow_fraction/", "subnormal_fraction/")):
            out[:, k] = 0.0
    return out


def default_step_values(i: int, step: int) -> dict[str, float]:
    """Loss scale 1, nothing skipped, one replica."""
    return {"loss_scale": 1.0, "skipped_step": 0.0, "replicas": 1.0,
            "nonfinite_replicas": 0.0, "nonfinite_applied": 0.0}


def write_synthetic_run(
    logdir: str | os.PathLike,
    run: str = "train",
    steps: Sequence[int] = range(10),
    groups: Mapping[str, Sequence[str]] | None = None,
    what_if: Sequence[str] = ("float16", "bfloat16"),
    policy: str = "float32",
    stats_fn: StatsFn = default_stats,
    step_fn: StepFn | None = default_step_values,
    hist_width: int = 4,
    with_hist: bool = True,
) -> SyntheticRun:
    """Writes a synthetic run under `logdir/run` and returns what it wrote.

    Args:
        logdir: the logdir (the run goes in a subdirectory).
        run: run name.
        steps: the logged steps.
        groups: group id → layer names (without `*`); default one float32 group.
        what_if: what-if formats (they name the extra columns).
        policy: the policy name stored in the metadata.
        stats_fn: makes the `[rows, columns]` stats of a step.
        step_fn: makes the step metrics of a step; `None` writes no step tensor.
        hist_width: histogram bins per step.
        with_hist: whether to write histograms.

    Returns:
        A `SyntheticRun` with the exact values written.
    """
    groups = dict(groups or DEFAULT_GROUPS)
    columns = metadata.metric_names(what_if)
    path = os.path.join(os.fspath(logdir), run)
    writer = GradientHealthWriter(path)
    steps = np.asarray(list(steps), np.int64)
    rows = {g: [metadata.GROUP_ROW, *layers] for g, layers in groups.items()}
    stats = {g: np.zeros((len(steps), len(r), len(columns))) for g, r in rows.items()}
    hist = {g: np.zeros((len(steps), len(r), hist_width)) for g, r in rows.items()}
    first = {g: np.zeros(len(steps), np.int64) for g in rows}
    step_values = np.full((len(steps), len(metadata.STEP_METRICS)), np.nan)
    for i, step in enumerate(steps.tolist()):
        data = {}
        for g, r in rows.items():
            stats[g][i] = stats_fn(i, step, g, len(r), columns)
            hist[g][i] = np.arange(len(r) * hist_width).reshape(len(r), hist_width) + step
            first[g][i] = -20 + step % 7
            grad, compute = metadata.split_group(g)
            data[g] = GroupData(
                rows=r, row_kinds=[metadata.ROW_GROUP] + [metadata.ROW_DENSE] * (len(r) - 1),
                columns=columns, stats=stats[g][i],
                hist_first_exponent=int(first[g][i]), hist=hist[g][i] if with_hist else None,
                info={"what_if": list(what_if), "policy": policy, "grad_dtype": grad,
                      "compute_dtype": compute, "replicas": 1},
            )
        values = None
        if step_fn is not None:
            values = dict(step_fn(i, step))
            step_values[i] = [values.get(k, np.nan) for k in metadata.STEP_METRICS]
        writer.write(step, data, values, {"policy": policy})
    writer.close()
    return SyntheticRun(path, run, steps, columns, rows, stats, first, hist, step_values)


def plugin_client(logdir) -> tuple[object, object]:
    """Returns `(werkzeug test client, plugin)` for the plugin inside TensorBoard's WSGI app.

    A real `EventMultiplexer` + `MultiplexerDataProvider` over `logdir`, keeping every
    logged step, as TensorBoard's own plugin tests do.
    """
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from werkzeug import test as werkzeug_test

    from tb_gradstats import plugin

    mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    ctx = base_plugin.TBContext(
        logdir=str(logdir), data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))
    )
    p = plugin.GradientHealthLoader().load(ctx)
    return werkzeug_test.Client(application.TensorBoardWSGI([p])), p
