"""`GradientMonitor`: Gradient Health for custom training loops."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from tb_gradstats import formats
from tb_gradstats.capture import GradientCapture, make_capture
from tb_gradstats.summary import GradientHealthWriter

logger = logging.getLogger("tb_gradstats")


class GradientMonitor:
    """Logs the gradients a custom training loop applies through a Keras optimizer.

    While installed, every `optimizer.apply` / `optimizer.apply_gradients`
    call — eager or inside a `tf.function` traced after `install()` — passes
    its gradients through the same in-graph statistics as the `GradientHealth`
    callback. Call `step_end()` once per training step; it reads and writes
    only when a logged step has run.

    Args:
        log_dir: the run directory.
        optimizer: the Keras optimizer the loop applies gradients with.
        variables: trainable variables to monitor (default: `model.trainable_variables`).
        model: optional Keras model: gives layer compute dtypes and the dtype policy.
        update_freq: log every this many optimizer steps.
        histogram_freq: histograms on every this-many logged steps (0: never).
        what_if_dtypes: formats for the what-if fractions.
        layers: optional regex on variable paths.

    Example:

    ```python
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    with tb_gradstats.GradientMonitor("runs/loop", optimizer, model=model, update_freq=10) as mon:
        for x, y in dataset:
            train_step(x, y)
            mon.step_end()
    ```
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        optimizer,
        variables: Sequence | None = None,
        model=None,
        update_freq: int = 10,
        histogram_freq: int = 1,
        what_if_dtypes: Sequence[str] = formats.WHAT_IF_DEFAULT,
        layers: str | None = None,
    ):
        if variables is None and model is None:
            raise ValueError("GradientMonitor needs `variables` or `model`.")
        if not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError(f"update_freq must be a positive int; got {update_freq!r}")
        self._writer = GradientHealthWriter(os.fspath(log_dir))
        self._capture: GradientCapture = make_capture(
            optimizer,
            list(variables if variables is not None else model.trainable_variables),
            self._writer,
            update_freq=update_freq,
            histogram_freq=histogram_freq,
            what_if=[formats.canonical_name(d) for d in what_if_dtypes],
            layers=layers,
            model=model,
        )
        self._host_step = self._capture.step

    def install(self) -> GradientMonitor:
        """Hooks the optimizer. Trace (or retrace) your train step after this."""
        self._capture.install()
        self._capture.snapshot_weights()  # pre-update weights of the next step
        return self

    def step_end(self, steps: int = 1) -> None:
        """Marks the end of `steps` optimizer steps; writes any logged step.

        Args:
            steps: how many `apply` calls happened since the last call.
        """
        first = self._host_step
        self._host_step += steps
        if self._capture.is_logged_between(first, self._host_step):
            self.flush()

    def flush(self) -> None:
        """Writes every logged step not yet written and flushes the event file."""
        try:
            self._capture.flush_to_writer()
        except Exception as e:  # noqa: BLE001 - the monitor must never stop training
            logger.warning("tb_gradstats: could not record gradient statistics: %s", e)
        self._writer.flush()

    def close(self) -> None:
        """Writes what is left, closes the event file and unhooks the optimizer."""
        self.flush()
        self._writer.close()
        self._capture.uninstall()

    def __enter__(self) -> GradientMonitor:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.close()
