"""Synthetic Gradient Health logdirs, written without TensorFlow.

The values are plausible (counts add up, fractions lie in [0, 1], norms decay
with training) but made up: these logdirs measure the dashboard and the event
format, never the statistics. One run gets a NaN episode so that the alert
and overview paths have something to show.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from tb_gradstats import formats, metadata
from tb_gradstats.summary import GradientHealthWriter, GroupData

HIST_BINS = 48  # log2 bins per row: gradients of one layer span ~2^-40..2^8
HIST_FIRST_EXPONENT = -40


class SyntheticRun:
    """Makes the `GroupData` of one run at any logged step.

    Args:
        n_layers: variables in the (single) dtype group.
        group: group id, e.g. `"float32"` or `"float32@float16"`.
        policy: the Keras policy name written into the metadata.
        seed: seed of the made-up values.
        nan_from: first step with NaN gradients in the last layer (None: never).
        what_if: what-if formats of the columns.
    """

    def __init__(
        self,
        n_layers: int,
        group: str = "float32",
        policy: str = "float32",
        seed: int = 0,
        nan_from: int | None = None,
        what_if: Sequence[str] = formats.WHAT_IF_DEFAULT,
    ):
        self.group = group
        self.nan_from = nan_from
        self.rows = [metadata.GROUP_ROW] + [
            f"dense_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}" for i in range(n_layers)
        ]
        self.row_kinds = [metadata.ROW_GROUP] + [metadata.ROW_DENSE] * n_layers
        self.columns = metadata.metric_names(what_if)
        self.info = {
            "policy": policy, "grad_dtype": metadata.split_group(group)[0],
            "compute_dtype": metadata.split_group(group)[1], "replicas": 1,
            "what_if": list(what_if),
        }
        rng = np.random.default_rng(seed)
        self._size = rng.integers(64, 262_144, n_layers).astype(np.float64)
        self._scale = 10.0 ** rng.uniform(-4, -1, n_layers)
        self._noise = rng.standard_normal((64, n_layers))
        self._hist_shape = np.exp(-0.5 * ((np.arange(HIST_BINS) - 30) / 5.0) ** 2)
        self._col = {name: i for i, name in enumerate(self.columns)}

    def group_data(self, step: int, with_hist: bool) -> GroupData:
        """Returns the values of the group at `step`.

        Args:
            step: the logged training step.
            with_hist: include the log2 histogram.

        Returns:
            A `GroupData` for `GradientHealthWriter.write`.
        """
        layers = self._layer_stats(step)
        stats = np.vstack([self._group_row(layers), layers])
        hist = self._hist(stats) if with_hist else None
        return GroupData(
            rows=self.rows, row_kinds=self.row_kinds, columns=self.columns, stats=stats,
            hist_first_exponent=HIST_FIRST_EXPONENT, hist=hist, info=self.info,
        )

    def _layer_stats(self, step: int) -> np.ndarray:
        c = self._col
        n = len(self._size)
        wiggle = 1.0 + 0.1 * self._noise[step % len(self._noise)]
        std = self._scale * wiggle / np.sqrt(1.0 + step / 500.0)
        out = np.zeros((n, len(self.columns)))
        out[:, c["count"]] = self._size
        zero_frac = np.clip(0.02 + 0.01 * self._noise[(step + 7) % len(self._noise)], 0, 1)
        out[:, c["zero_count"]] = np.round(zero_frac * self._size)
        out[:, c["zero_fraction"]] = out[:, c["zero_count"]] / self._size
        out[:, c["mean"]] = 0.01 * std * self._noise[(step + 3) % len(self._noise)]
        out[:, c["variance"]] = std**2
        out[:, c["std"]] = std
        out[:, c["min"]] = -4.5 * std
        out[:, c["max"]] = 4.5 * std
        out[:, c["abs_max"]] = 4.5 * std
        out[:, c["abs_min_nonzero"]] = std * 1e-6
        out[:, c["l2_norm"]] = std * np.sqrt(self._size)
        out[:, c["update_ratio"]] = 1e-3 * wiggle
        out[:, c["scaled_zero_fraction"]] = out[:, c["zero_fraction"]]
        for name, i in c.items():
            if name.startswith("underflow_fraction/float8"):
                out[:, i] = 0.05 * wiggle
            elif name.startswith("subnormal_fraction/"):
                out[:, i] = 0.001 * wiggle if "float8" not in name else 0.2 * wiggle
        if self.nan_from is not None and step >= self.nan_from:
            out[-1, c["nan_count"]] = self._size[-1]
            for name in ("mean", "variance", "std", "min", "max", "l2_norm"):
                out[-1, c[name]] = np.nan
        return out

    def _group_row(self, layers: np.ndarray) -> np.ndarray:
        c = self._col
        row = np.nanmax(layers, axis=0)
        count = layers[:, c["count"]].sum()
        for name in ("count", "zero_count", "nan_count", "inf_count"):
            row[c[name]] = layers[:, c[name]].sum()
        row[c["zero_fraction"]] = row[c["zero_count"]] / count
        row[c["l2_norm"]] = np.sqrt(np.nansum(layers[:, c["l2_norm"]] ** 2))
        return row

    def _hist(self, stats: np.ndarray) -> np.ndarray:
        count = stats[:, self._col["count"]] - stats[:, self._col["zero_count"]]
        shape = np.roll(self._hist_shape[None, :], 0, axis=1)
        return np.round(count[:, None] * shape / self._hist_shape.sum())


def write_run(
    logdir: str,
    run: SyntheticRun,
    steps: int,
    step_stride: int = 1,
    histogram_freq: int = 10,
) -> tuple[int, float]:
    """Writes `steps` logged steps of `run` into `logdir`.

    Args:
        logdir: the run directory.
        run: the values.
        steps: number of logged steps.
        step_stride: training steps between logged steps.
        histogram_freq: a histogram every this many logged steps (0: never).

    Returns:
        `(bytes_written, seconds)`.
    """
    writer = GradientHealthWriter(logdir)
    start = time.perf_counter()
    for i in range(steps):
        step = i * step_stride
        with_hist = histogram_freq > 0 and i % histogram_freq == 0
        writer.write(
            step, {run.group: run.group_data(step, with_hist)},
            step_values={"loss_scale": 1.0, "skipped_step": 0.0, "replicas": 1.0,
                         "nonfinite_replicas": 0.0, "nonfinite_applied": 0.0},
            step_info={"policy": run.info["policy"]},
        )
    writer.close()
    return writer.bytes_written, time.perf_counter() - start


def make_logdir(
    root: str, runs: int, layers: int, steps: int, histogram_freq: int = 10
) -> dict[str, object]:
    """Writes a synthetic logdir with `runs` runs.

    Args:
        root: the logdir (each run a subdirectory `run_<i>`).
        runs: number of runs.
        layers: variables per run.
        steps: logged steps per run.
        histogram_freq: a histogram every this many logged steps.

    Returns:
        Dict with `bytes`, `seconds` and the `runs` names.
    """
    names, total_bytes, total_s = [], 0, 0.0
    policies = ("float32", "mixed_float16", "mixed_bfloat16", "float16")
    for i in range(runs):
        policy = policies[i % len(policies)]
        group = {"mixed_float16": "float32@float16", "mixed_bfloat16": "float32@bfloat16",
                 "float16": "float16"}.get(policy, "float32")
        name = f"run_{i}_{policy}"
        run = SyntheticRun(layers, group=group, policy=policy, seed=i,
                           nan_from=steps // 2 if policy == "float16" else None)
        written, seconds = write_run(os.path.join(root, name), run, steps,
                                     histogram_freq=histogram_freq)
        names.append(name)
        total_bytes += written
        total_s += seconds
    return {"bytes": total_bytes, "seconds": total_s, "runs": names}
