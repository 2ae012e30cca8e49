"""Training-time overhead of GradientHealth vs plain `fit` and the alternatives.

Configurations, run interleaved (A B C D E, A B C D E, ...) so that a noisy
neighbour slows every configuration alike:

- `plain`: `fit` with no callback.
- `gh_default`: `GradientHealth(log_dir)` (default `update_freq`).
- `gh_every_step`: `GradientHealth(log_dir, update_freq=1)`.
- `naive`: `NaiveGradientStats` (whole-training-set gradients + numpy at each epoch end).
- `tb_hist`: `keras.callbacks.TensorBoard(histogram_freq=1)`.

Each fit runs `epochs` epochs of `steps_per_epoch` steps; the first epoch
(tracing) is dropped and the per-step time is the median over the others,
measured between consecutive `on_epoch_begin` calls so that epoch-end work
(naive, TensorBoard histograms) is included. The reported ratio is the median
over repetitions of `config / plain` within the same repetition.

Usage: `python benchmarks/overhead.py [--quick] [--reps N] [--models digits mlp1m]`
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

try:  # run as a script or as `benchmarks.overhead`
    from benchmarks import common
    from benchmarks.naive import NaiveGradientStats
except ImportError:  # pragma: no cover
    import common  # type: ignore
    from naive import NaiveGradientStats  # type: ignore

CONFIGS = ("plain", "gh_default", "gh_every_step", "naive", "tb_hist")


@dataclasses.dataclass
class Workload:
    """A model, its data and its batch size.

    Attributes:
        name: short id.
        title: description for the table.
        build: returns a compiled model (called under a fixed seed).
        x: training inputs.
        y: integer labels.
        batch_size: batch size.
    """

    name: str
    title: str
    build: Callable[[], keras.Model]
    x: np.ndarray
    y: np.ndarray
    batch_size: int


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int = 10) -> keras.Model:
    layers = [keras.Input((n_in,))] + [keras.layers.Dense(h, activation="relu") for h in hidden]
    model = keras.Sequential(layers + [keras.layers.Dense(n_out)])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def workloads() -> dict[str, Workload]:
    """Returns the two benchmark workloads: digits MLP and a ~1M-parameter MLP."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    x1m = rng.standard_normal((256 * 50, 512)).astype("float32")
    y1m = rng.integers(0, 10, len(x1m)).astype("int32")
    return {
        "digits": Workload(
            "digits", "digits MLP 64-512-512-10 (batch 64, Adam)",
            lambda: _mlp(64, (512, 512)), (digits.data / 16.0).astype("float32"),
            digits.target.astype("int32"), 64,
        ),
        "mlp1m": Workload(
            "mlp1m", "MLP 512-1024-512-10, 1.05M params (synthetic, batch 256, Adam)",
            lambda: _mlp(512, (1024, 512)), x1m, y1m, 256,
        ),
    }


class EpochTimer(keras.callbacks.Callback):
    """Records `perf_counter` at each epoch begin and at train end."""

    def __init__(self):
        super().__init__()
        self.marks: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.marks.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.marks.append(time.perf_counter())


def make_callbacks(config: str, work: Workload, log_dir: str) -> list[keras.callbacks.Callback]:
    """Returns the callbacks of one configuration (the timer is added by the caller)."""
    if config == "plain":
        return []
    if config == "naive":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return [NaiveGradientStats(work.x, work.y, loss, log_dir=log_dir)]
    if config == "tb_hist":
        return [keras.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=1)]
    import tb_gradstats

    if config == "gh_default":
        return [tb_gradstats.GradientHealth(log_dir)]
    if config == "gh_every_step":
        return [tb_gradstats.GradientHealth(log_dir, update_freq=1)]
    raise ValueError(f"unknown config {config!r}")


def time_fit(config: str, work: Workload, epochs: int, steps_per_epoch: int,
             log_dir: str) -> float:
    """Trains a fresh model and returns its median seconds per step (first epoch dropped)."""
    keras.utils.set_random_seed(0)
    model = work.build()
    data = (
        tf.data.Dataset.from_tensor_slices((work.x, work.y))
        .shuffle(len(work.x), seed=0)
        .batch(work.batch_size, drop_remainder=True)
        .repeat()
        .prefetch(2)
    )
    timer = EpochTimer()
    callbacks = make_callbacks(config, work, log_dir) + [timer]
    model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
              shuffle=False, callbacks=callbacks)
    intervals = np.diff(timer.marks)[1:]
    return float(np.median(intervals)) / steps_per_epoch


def gh_default_update_freq() -> int | None:
    """Returns `GradientHealth`'s default `update_freq`, or None if it is not importable."""
    try:
        import inspect

        import tb_gradstats

        sig = inspect.signature(tb_gradstats.GradientHealth.__init__)
        return sig.parameters["update_freq"].default
    except Exception:  # noqa: BLE001 - the callback may not exist yet
        return None


def available_configs() -> list[str]:
    """Returns the configurations that can run here (GradientHealth may be missing)."""
    if gh_default_update_freq() is None:
        print("note: tb_gradstats.GradientHealth is not importable; skipping gh_* configs")
        return [c for c in CONFIGS if not c.startswith("gh_")]
    return list(CONFIGS)


def run(models: list[str], reps: int, epochs: int, steps_per_epoch: int,
        configs: list[str] | None = None) -> dict:
    """Runs the interleaved overhead benchmark.

    Args:
        models: workload names (`digits`, `mlp1m`).
        reps: interleaved repetitions.
        epochs: epochs per fit (the first is dropped).
        steps_per_epoch: steps per epoch.
        configs: configurations (default: all available).

    Returns:
        Dict with `raw` (model → config → list of s/step), `rows` and `table`.
    """
    configs = configs or available_configs()
    works = workloads()
    root = common.ensure_out("overhead")
    raw: dict[str, dict[str, list[float]]] = {m: {c: [] for c in configs} for m in models}
    for rep in range(reps):
        for model_name in models:
            for config in configs:
                log_dir = os.path.join(root, f"{model_name}_{config}_{rep}")
                seconds = time_fit(config, works[model_name], epochs, steps_per_epoch, log_dir)
                shutil.rmtree(log_dir, ignore_errors=True)
                raw[model_name][config].append(seconds)
                print(f"  rep {rep + 1}/{reps} {model_name:6s} {config:14s} "
                      f"{seconds * 1e3:7.2f} ms/step", flush=True)
    rows = summarize(raw, works, steps_per_epoch)
    return {"raw": raw, "rows": rows, "table": table(rows),
            "settings": dict(reps=reps, epochs=epochs, steps_per_epoch=steps_per_epoch)}


def logged_points_per_step(config: str, steps_per_epoch: int) -> float:
    """Returns how many logged points one training step produces on average."""
    if config == "gh_default":
        return 1.0 / (gh_default_update_freq() or 100)
    if config == "gh_every_step":
        return 1.0
    if config in ("naive", "tb_hist"):
        return 1.0 / steps_per_epoch
    return 0.0


def summarize(raw: dict, works: dict[str, Workload], steps_per_epoch: int) -> list[dict]:
    """Turns raw timings into rows: median ratio to plain and cost per logged point."""
    rows = []
    for model_name, by_config in raw.items():
        plain = by_config["plain"]
        for config, times in by_config.items():
            ratios = [t / p for t, p in zip(times, plain, strict=True)]
            extra = common.median([t - p for t, p in zip(times, plain, strict=True)])
            points = logged_points_per_step(config, steps_per_epoch)
            rows.append(dict(
                model=model_name, title=works[model_name].title, config=config,
                ms_per_step=common.median(times) * 1e3, ratio=common.median(ratios),
                ratio_min=min(ratios), ratio_max=max(ratios),
                ms_per_point=(extra / points * 1e3) if points else float("nan"),
            ))
    return rows


def table(rows: list[dict]) -> str:
    """Returns the markdown table of `summarize` rows."""
    return common.markdown_table(
        ["model", "config", "ms/step (median)", "ratio to plain (median)", "ratio range",
         "ms per logged point"],
        [[r["model"], r["config"], f"{r['ms_per_step']:.2f}", f"{r['ratio']:.3f}",
          f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}",
          "–" if r["config"] == "plain" else f"{r['ms_per_point']:.2f}"]
         for r in rows],
    )


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point; prints and returns the result of `run`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 reps, short epochs")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=["digits", "mlp1m"])
    parser.add_argument("--configs", nargs="+", default=None, choices=CONFIGS)
    args = parser.parse_args(argv)
    reps = args.reps or (2 if args.quick else 5)
    epochs = args.epochs or (3 if args.quick else 4)
    spe = args.steps_per_epoch or (50 if args.quick else 200)
    result = run(args.models, reps, epochs, spe, args.configs)
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
