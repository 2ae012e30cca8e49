"""Event-file bytes per logged step: Gradient Health vs `tf.summary.histogram`.

Gradient Health writes one stats tensor per dtype group (all variables as rows)
and, every `histogram_freq` logged steps, one log2 histogram tensor. The usual
alternative writes one `tf.summary.histogram` per variable per step. Both are
measured at steady state: `(bytes after 1 + S steps - bytes after 1 step) / S`,
so the one-off metadata of each tag's first event is left out (and reported).

Usage: `python benchmarks/size.py [--steps S] [--variables 10 100 1000]`
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np

try:  # run as a script or as `benchmarks.size`
    from benchmarks import common, synth
except ImportError:  # pragma: no cover
    import common  # type: ignore
    import synth  # type: ignore

from tb_gradstats.summary import GradientHealthWriter


def dir_bytes(path: str) -> int:
    """Returns the total size of the files under `path`."""
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def gradient_health_bytes(n_vars: int, steps: int, with_hist: bool) -> tuple[float, int]:
    """Measures Gradient Health event bytes.

    Args:
        n_vars: variables (rows besides the group row).
        steps: steady-state steps to write after the first.
        with_hist: write the histogram tensor at every step.

    Returns:
        `(bytes per steady-state step, bytes of the first step)`.
    """
    run = synth.SyntheticRun(n_vars)
    tmp = tempfile.mkdtemp(prefix="gh_size_")
    try:
        writer = GradientHealthWriter(tmp)
        sizes = [writer.write(i, {run.group: run.group_data(i, with_hist)},
                              step_values={"loss_scale": 1.0}) for i in range(steps + 1)]
        writer.close()
        file_total = dir_bytes(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # TFRecord framing adds 16 bytes per event on disk.
    first = sizes[0] + 16
    per_step = (file_total - first - _file_header_bytes()) / steps
    return per_step, first


def _file_header_bytes() -> int:
    """Bytes of the `file_version` event every event file starts with."""
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=1.0, file_version="brain.Event:2").ByteSize() + 16


def tf_histogram_bytes(n_vars: int, steps: int) -> tuple[float, int]:
    """Measures `tf.summary.histogram` (one per variable, default 30 buckets).

    Args:
        n_vars: variables.
        steps: steady-state steps to write after the first.

    Returns:
        `(bytes per steady-state step, bytes of the first step)`.
    """
    import tensorflow as tf

    values = [tf.constant(np.random.default_rng(i).standard_normal(256), tf.float32)
              for i in range(n_vars)]

    def write(path: str, n_steps: int) -> int:
        writer = tf.summary.create_file_writer(path)
        with writer.as_default():
            for step in range(n_steps):
                for i, v in enumerate(values):
                    tf.summary.histogram(f"dense_{i // 2}/kernel_{i}/gradient", v, step=step)
        writer.close()
        return dir_bytes(path)

    one, many = tempfile.mkdtemp(prefix="tfh1_"), tempfile.mkdtemp(prefix="tfhN_")
    try:
        first = write(one, 1)
        total = write(many, steps + 1)
    finally:
        shutil.rmtree(one, ignore_errors=True)
        shutil.rmtree(many, ignore_errors=True)
    return (total - first) / steps, first - _file_header_bytes()


def callback_bytes(steps: int, histogram_freq: int) -> dict:
    """Measures what the real `GradientHealth` callback writes on the digits MLP.

    Trains 64-512-512-10 (6 variables) for `steps` steps with `update_freq=1`.

    Args:
        steps: training steps (= logged steps).
        histogram_freq: the callback's `histogram_freq`.

    Returns:
        Dict with `variables`, `logged_steps`, `bytes_per_step`.
    """
    import keras
    from sklearn.datasets import load_digits

    import tb_gradstats

    digits = load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tmp = tempfile.mkdtemp(prefix="gh_cb_")
    try:
        monitor = tb_gradstats.GradientHealth(tmp, update_freq=1, histogram_freq=histogram_freq)
        model.fit(digits.data[: 64 * steps] / 16.0, digits.target[: 64 * steps], batch_size=64,
                  epochs=1, verbose=0, callbacks=[monitor])
        total = dir_bytes(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_steps = min(steps, len(digits.data) // 64 + (len(digits.data) % 64 > 0))
    return {"variables": len(model.trainable_variables), "logged_steps": n_steps,
            "histogram_freq": histogram_freq, "bytes_per_step": total / n_steps}


def run(variables: list[int], steps: int) -> dict:
    """Runs the size benchmark.

    Args:
        variables: numbers of variables to measure.
        steps: steady-state steps per measurement.

    Returns:
        Dict with `rows` (list of dicts) and `table` (markdown).
    """
    rows = []
    for n in variables:
        stats, stats_first = gradient_health_bytes(n, steps, with_hist=False)
        both, _ = gradient_health_bytes(n, steps, with_hist=True)
        tfh, tfh_first = tf_histogram_bytes(n, steps)
        rows.append(dict(variables=n, stats=stats, stats_hist=both, first=stats_first,
                         tf_hist=tfh, tf_first=tfh_first))
    header = ["variables", "GH stats/step", "GH stats+hist/step", "GH first step (metadata)",
              "tf.summary.histogram/step", "tf hist first step", "GH stats+hist vs tf hist"]
    table = common.markdown_table(header, [
        [r["variables"], common.human_bytes(r["stats"]), common.human_bytes(r["stats_hist"]),
         common.human_bytes(r["first"]), common.human_bytes(r["tf_hist"]),
         common.human_bytes(r["tf_first"]), f"{r['stats_hist'] / r['tf_hist']:.2f}×"]
        for r in rows
    ])
    real = [callback_bytes(28, h) for h in (0, 1)]
    tf_real, _ = tf_histogram_bytes(real[0]["variables"], steps)
    table += "\n\n" + common.markdown_table(
        ["real callback, digits MLP", "variables", "logged steps", "bytes/logged step (avg)",
         "tf.summary.histogram/step"],
        [[f"histogram_freq={r['histogram_freq']}", r["variables"], r["logged_steps"],
          common.human_bytes(r["bytes_per_step"]), common.human_bytes(tf_real)] for r in real],
    )
    return {"rows": rows, "real": real, "table": table}


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point; prints and returns the result of `run`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variables", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args(argv)
    result = run(args.variables, args.steps)
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
