"""Gradient Health demo: one small model, five precision policies, one dashboard.

Trains the same MLP (64-512-512-10, Adam 1e-3, batch 64) on scikit-learn's
digits (shipped with the package: no download) under each Keras precision
policy, logging with `tb_gradstats.GradientHealth` into `<logdir>/<policy>`,
then prints what went wrong where and serves TensorBoard with the tab.

Nothing is staged: the inputs are the raw pixel values (0..16, as shipped),
the seeds are fixed, and every difference between runs comes from the policy.
What this produces on TF 2.21 / Keras 3 (checked by the "story" lines):

- `float32`, `mixed_bfloat16`: learn (loss ~3e-4 after 600 steps).
- `mixed_float16`: learns; `LossScaleOptimizer` keeps the float16 backward pass
  from flushing small gradients (compare `scaled_zero_fraction` with the
  `underflow_fraction/float16` of the unscaled gradient).
- `float16`: Adam's state and epsilon in float16 turn the first steps into
  huge updates; the loss is NaN within a few steps and the gradients follow.
- `bfloat16`: Adam's `beta_2 = 0.999` rounds to 1.0 in bfloat16, so every
  update is exactly zero: the model never moves (`update_ratio` = 0).

Usage:

```
python demo/run_demo.py                  # ~25 s of training on 2 cores, then serves on :6006
python demo/run_demo.py --steps 200 --no-serve
python demo/run_demo.py --policies float32 float16 --port 6007
```
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16", "float16")
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description="Train digits under five precision policies and show Gradient Health."
    )
    parser.add_argument("--steps", type=int, default=600, help="training steps per policy")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--logdir", default="runs", help="root of the runs (one per policy)")
    parser.add_argument("--update-freq", type=int, default=5, help="log every N steps")
    parser.add_argument("--histogram-freq", type=int, default=1,
                        help="histograms every N logged steps (0: none)")
    parser.add_argument("--no-serve", action="store_true", help="exit after the summary")
    parser.add_argument("--port", type=int, default=6006)
    return parser.parse_args(argv)


# --- data and model ----------------------------------------------------------


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Returns the digits `(x, y)`: 1797 × 64 raw pixel values in 0..16, labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype("float32"), digits.target.astype("int32")


def build_model():
    """Returns the compiled MLP under the current global policy.

    The softmax runs in float32, as the Keras mixed-precision guide advises;
    everything else follows the policy. Layers are named so that the same
    variable has the same path in every run (the compare view matches by name).
    """
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(512, activation="relu", name="hidden_1"),
            keras.layers.Dense(512, activation="relu", name="hidden_2"),
            keras.layers.Dense(10, name="logits"),
            keras.layers.Activation("softmax", dtype="float32", name="softmax"),
        ],
        name="digits_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def make_dataset(x: np.ndarray, y: np.ndarray):
    """Returns a shuffled (fixed seed), batched, endlessly repeated `tf.data.Dataset`."""
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0)
        .batch(BATCH_SIZE, drop_remainder=True)
        .repeat()
    )


# --- training ----------------------------------------------------------------


def progress_callback(policy: str, total: int):
    """Returns a Keras callback that keeps one progress line for `policy`."""
    import keras

    class ProgressLine(keras.callbacks.Callback):
        """One line per run: `policy [####......] step/total loss`, redrawn in place."""

        def __init__(self):
            super().__init__()
            self.step = 0
            self.loss = float("nan")
            self.start = time.perf_counter()
            self.tty = sys.stdout.isatty()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            self.loss = float((logs or {}).get("loss", float("nan")))
            if self.tty and (self.step % 10 == 0 or self.step == total):
                self._draw("\r")

        def on_train_end(self, logs=None):
            self._draw("\r" if self.tty else "")
            print(f"  {time.perf_counter() - self.start:5.1f}s", flush=True)

        def _draw(self, prefix: str) -> None:
            filled = int(30 * self.step / max(total, 1))
            bar = "#" * filled + "." * (30 - filled)
            print(f"{prefix}{policy:15s} [{bar}] {self.step:5d}/{total} loss {self.loss:9.4g}",
                  end="", flush=True)

    return ProgressLine()


def train_policy(policy: str, args: argparse.Namespace, x: np.ndarray, y: np.ndarray) -> dict:
    """Trains one run under `policy` into `<logdir>/<policy>`.

    Args:
        policy: a Keras dtype policy name.
        args: the parsed command line.
        x: inputs.
        y: labels.

    Returns:
        Dict with `policy`, `steps`, `losses` (one per epoch) and `optimizer_steps`.
    """
    import keras

    import tb_gradstats

    run_dir = os.path.join(args.logdir, policy)
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun replaces the run, never appends
    steps_per_epoch = len(x) // BATCH_SIZE
    epochs = max(1, math.ceil(args.steps / steps_per_epoch))
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_model()
        monitor = tb_gradstats.GradientHealth(
            run_dir, update_freq=args.update_freq, histogram_freq=args.histogram_freq
        )
        history = model.fit(
            make_dataset(x, y), epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
            shuffle=False, callbacks=[monitor, progress_callback(policy, epochs * steps_per_epoch)],
        )
        return {
            "policy": policy,
            "steps": epochs * steps_per_epoch,
            "losses": [float(v) for v in history.history["loss"]],
            "optimizer_steps": int(model.optimizer.iterations.numpy()),
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- summary -----------------------------------------------------------------


def read_runs(logdir: str) -> dict:
    """Returns run name → `reader.RunData` for every run under `logdir`."""
    from tb_gradstats import reader

    runs, skipped = reader.Reader(reader.logdir_provider(logdir)).read_all()
    for s in skipped:
        print(f"  (skipped {s.run}/{s.tag}: {s.reason})")
    return runs


def _group_metric(data, name: str) -> np.ndarray:
    """Returns `[T]` values of a stats column on the group rows, all groups concatenated."""
    parts = [g.metric(name)[:, 0] for g in data.groups.values() if name in g.columns]
    return np.concatenate(parts) if parts else np.zeros(0)


def story_numbers(data, trained: dict | None) -> dict:
    """Extracts the numbers that tell each run's story.

    Args:
        data: a `reader.RunData`.
        trained: the result of `train_policy` for this run, if it ran now.

    Returns:
        Dict of plain floats and ints.
    """
    nonfinite = _group_metric(data, "nan_count") + _group_metric(data, "inf_count")
    steps = np.concatenate([g.steps for g in data.groups.values()]) if data.groups else []
    bad_steps = np.asarray(steps)[nonfinite > 0] if len(nonfinite) else []
    update_ratio = _group_metric(data, "update_ratio")
    finite_ratio = update_ratio[np.isfinite(update_ratio)]
    out = {
        "logged_steps": int(len(data.all_steps())),
        "nonfinite_steps": int((nonfinite > 0).sum()),
        "first_nonfinite_step": int(min(bad_steps)) if len(bad_steps) else None,
        "median_update_ratio": float(np.median(finite_ratio)) if len(finite_ratio) else math.nan,
        "zero_fraction": float(np.nanmedian(_group_metric(data, "zero_fraction"))),
        "scaled_zero_fraction": float(np.nanmedian(_group_metric(data, "scaled_zero_fraction"))),
        "underflow_f16": float(np.nanmedian(_group_metric(data, "underflow_fraction/float16"))),
        "skipped_steps": 0,
        "last_loss_scale": math.nan,
    }
    if "skipped_step" in data.step_columns and len(data.step_steps):
        out["skipped_steps"] = int(np.nansum(data.step_metric("skipped_step")))
        out["last_loss_scale"] = float(data.step_metric("loss_scale")[-1])
    if trained:
        out["final_loss"] = trained["losses"][-1]
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# policy → (expected story, check on `story_numbers`, the numbers that show it)
STORIES = {
    "float32": (
        "healthy baseline",
        lambda s: s["nonfinite_steps"] == 0 and math.isfinite(s.get("final_loss", 0.0)),
        lambda s: f"zeros {_pct(s['zero_fraction'])} (ReLU)",
    ),
    "mixed_bfloat16": (
        "healthy: float32 weights, bfloat16 compute",
        lambda s: s["nonfinite_steps"] == 0 and math.isfinite(s.get("final_loss", 0.0)),
        lambda s: f"zeros {_pct(s['zero_fraction'])}",
    ),
    "mixed_float16": (
        "rescued by loss scaling",
        lambda s: s["nonfinite_steps"] == 0 and s["underflow_f16"] > s["scaled_zero_fraction"]
        - s["zero_fraction"],
        lambda s: f"{_pct(s['underflow_f16'])} would flush to 0 in float16 unscaled, zeros "
        f"{_pct(s['scaled_zero_fraction'])} scaled vs {_pct(s['zero_fraction'])} true; "
        f"scale {s['last_loss_scale']:g}, {s['skipped_steps']} skipped",
    ),
    "float16": (
        "diverges: NaN/Inf gradients",
        lambda s: s["nonfinite_steps"] > 0,
        lambda s: f"first non-finite at logged step {s['first_nonfinite_step']}",
    ),
    "bfloat16": (
        "updates lost: weights never move",
        lambda s: s["median_update_ratio"] < 1e-6,
        lambda s: f"median update/weight {s['median_update_ratio']:.2g}",
    ),
}


def story_line(run: str, numbers: dict) -> str:
    """Returns `[ok] expected story: numbers` (or `[NOT]` when the numbers disagree)."""
    if run not in STORIES:
        return ""
    title, check, detail = STORIES[run]
    return f"[{'ok' if check(numbers) else 'NOT'}] {title}: {detail(numbers)}"


def print_summary(logdir: str, trained: dict[str, dict]) -> None:
    """Prints one screen: per run its story numbers, alert counts and worst alerts.

    Degrades to a message when the reader or the alerts are not available.
    """
    print("\nGradient Health summary")
    try:
        from tb_gradstats import alerts as alerts_lib

        runs = read_runs(logdir)
    except Exception as e:  # noqa: BLE001 - the demo must finish even if a part is missing
        print(f"  summary unavailable ({type(e).__name__}: {e}).")
        print(f"  Try later: tb-gradstats report {logdir}")
        return
    if not runs:
        print(f"  no Gradient Health runs under {logdir}.")
        return
    header = (f"  {'run':15s} {'loss':>9s} {'non-finite':>10s} {'upd.ratio':>9s} "
              f"{'E/W/I':>7s}  story (check)")
    print(header)
    details = []
    for run, data in sorted(runs.items()):
        numbers = story_numbers(data, trained.get(run))
        found = alerts_lib.evaluate(data)
        n = alerts_lib.counts(found)
        nonfinite = f"{numbers['nonfinite_steps']}/{numbers['logged_steps']}"
        print(f"  {run:15s} {numbers.get('final_loss', math.nan):9.4g} {nonfinite:>10s} "
              f"{numbers['median_update_ratio']:9.2g} "
              f"{n['error']}/{n['warning']}/{n['info']:<3d}  {story_line(run, numbers)}")
        details += [(run, a) for a in found[:2]]
    if details:
        print("\n  Top alerts:")
        for run, a in details:
            print(f"  {a.severity:7s} {run:15s} {a.message}"[:160])
    print("\n  Full report: tb-gradstats report", logdir)


# --- serving -----------------------------------------------------------------


def serve(logdir: str, port: int) -> None:
    """Serves TensorBoard on 127.0.0.1 until Ctrl-C."""
    from tensorboard import program

    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port)])
    try:
        url = tb.launch()
    except Exception as e:  # noqa: BLE001 - e.g. the port is taken
        print(f"\nCannot start TensorBoard on port {port}: {e}\nTry --port {port + 1}.")
        return
    print(f"\nTensorBoard: {url}#gradient_health   (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print()


def main(argv: list[str] | None = None) -> int:
    """Runs the demo; returns the process exit code."""
    args = parse_args(argv)
    x, y = load_data()
    print(f"digits: {len(x)} samples, raw pixels 0..16; {args.steps} steps per policy, "
          f"logging every {args.update_freq} into {args.logdir}/<policy>")
    try:
        import tb_gradstats

        tb_gradstats.GradientHealth  # noqa: B018 - fail early if the callback is missing
    except (ImportError, AttributeError) as e:
        print(f"tb_gradstats.GradientHealth is not available ({e}); nothing to demo.")
        return 1
    trained = {}
    for policy in args.policies:
        trained[policy] = train_policy(policy, args, x, y)
    print_summary(args.logdir, trained)
    if not args.no_serve:
        serve(args.logdir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
