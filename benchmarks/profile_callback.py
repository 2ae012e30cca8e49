"""Where GradientHealth's remaining cost goes, on the 1M-parameter MLP.

Splits the per-step cost of `update_freq=1` into:

- `hook, never logging`: the wrapped `apply` and its `tf.cond` when no step is due
  (`update_freq` larger than the run);
- `in-graph stats`: `update_freq=1` with the host-side flush replaced by a no-op;
- `host flush`: the rest of `update_freq=1` (device→host copy, combine, write);

then runs cProfile over the host flush to name its top functions.
Interleaved repetitions, medians, first epoch dropped (as `overhead.py`).

Usage: `python benchmarks/profile_callback.py [--reps 3]`
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    from benchmarks import common, overhead
except ImportError:  # pragma: no cover
    import common  # type: ignore
    import overhead  # type: ignore

import tb_gradstats  # noqa: E402

VARIANTS = ("plain", "never_logged", "stats_no_flush", "every_step")


def _fit(variant: str, work: overhead.Workload, epochs: int, spe: int, log_dir: str,
         profiler: cProfile.Profile | None = None) -> float:
    keras.utils.set_random_seed(0)
    model = work.build()
    data = (tf.data.Dataset.from_tensor_slices((work.x, work.y)).shuffle(len(work.x), seed=0)
            .batch(work.batch_size, drop_remainder=True).repeat().prefetch(2))
    callbacks: list[keras.callbacks.Callback] = []
    if variant != "plain":
        freq = 10**9 if variant == "never_logged" else 1
        monitor = tb_gradstats.GradientHealth(log_dir, update_freq=freq)
        callbacks.append(monitor)
        if variant == "stats_no_flush":
            monitor._flush = lambda: None  # in-graph work only
        elif profiler is not None:
            flush = monitor._flush

            def profiled_flush():
                profiler.enable()
                try:
                    flush()
                finally:
                    profiler.disable()

            monitor._flush = profiled_flush
    timer = overhead.EpochTimer()
    model.fit(data, epochs=epochs, steps_per_epoch=spe, verbose=0, shuffle=False,
              callbacks=callbacks + [timer])
    return float(np.median(np.diff(timer.marks)[1:])) / spe


def run(reps: int, epochs: int, spe: int, model: str = "mlp1m") -> dict:
    """Runs the split and the profile; returns rows, table and profile text."""
    work = overhead.workloads()[model]
    root = common.ensure_out("profile")
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(reps):
        for variant in VARIANTS:
            log_dir = os.path.join(root, f"{variant}_{rep}")
            times[variant].append(_fit(variant, work, epochs, spe, log_dir))
            shutil.rmtree(log_dir, ignore_errors=True)
            print(f"  rep {rep + 1}/{reps} {variant:15s} {times[variant][-1] * 1e3:.2f} ms/step",
                  flush=True)
    med = {v: common.median(t) * 1e3 for v, t in times.items()}
    parts = [
        ("plain step", med["plain"]),
        ("hook + tf.cond, never logging", med["never_logged"] - med["plain"]),
        ("in-graph statistics (per logged step)", med["stats_no_flush"] - med["never_logged"]),
        ("host flush: copy, combine, write (per logged step)",
         med["every_step"] - med["stats_no_flush"]),
    ]
    table = common.markdown_table(
        ["part (update_freq=1, " + model + ")", "ms/step", "share of plain step"],
        [[name, f"{ms:.2f}", f"{ms / med['plain'] * 100:.0f}%"] for name, ms in parts],
    )
    profiler = cProfile.Profile()
    _fit("every_step", work, 2, spe, os.path.join(root, "cprofile"), profiler)
    shutil.rmtree(os.path.join(root, "cprofile"), ignore_errors=True)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    return {"times": times, "table": table, "profile": out.getvalue()}


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point; prints and returns the result of `run`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--model", default="mlp1m", choices=["digits", "mlp1m"])
    args = parser.parse_args(argv)
    result = run(args.reps, args.epochs, args.steps_per_epoch, args.model)
    print(result["table"])
    print(result["profile"])
    return result


if __name__ == "__main__":
    main()
