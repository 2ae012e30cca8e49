"""`GradientHealth`: the Keras callback that logs real training gradients."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import keras

from tb_gradstats import formats
from tb_gradstats.capture import GradientCapture, make_capture
from tb_gradstats.summary import GradientHealthWriter

logger = logging.getLogger("tb_gradstats")

# benchmarks/overhead.py, interleaved medians on 2 CPU cores: every 100 steps costs 1.5% on
# the 1M-parameter MLP (7 ms steps) and ~10% on the 0.3M digits MLP (1.5 ms steps, where the
# fixed per-step cost of the hook shows); every step costs ~1.9x on the 1M model.
DEFAULT_UPDATE_FREQ = 100


class GradientHealth(keras.callbacks.Callback):
    """Logs per-layer, per-dtype health statistics of the gradients `fit` applies.

    The statistics are computed in-graph from the gradients the optimizer
    really applies in each logged step (no extra forward/backward pass),
    unscaled under a `LossScaleOptimizer`, and written as TensorBoard
    summaries for the "Gradient Health" tab. See `FORMAT.md` for the metrics.

    Args:
        log_dir: the run directory to write to (e.g. `"runs/exp1"`).
        update_freq: `int`: log every this many training steps (the first step
            is always logged); `"epoch"`: log the second step of every epoch (the
            first one's update provides the weights `update_ratio` compares with).
            The default, 100, added 1.5% per step on a 1M-parameter MLP
            (benchmarks/README.md); logging a step costs a few passes over
            the gradients plus one small device-to-host copy.
        histogram_freq: write the log2-magnitude histograms on every
            `histogram_freq`-th logged step; 0 disables them.
        what_if_dtypes: formats for the underflow / subnormal / overflow
            what-if fractions.
        layers: optional regex; only variables whose path (e.g.
            `"dense_1/kernel"`) matches are logged.

    Example:

    ```python
    model.fit(x, y, epochs=3, callbacks=[tb_gradstats.GradientHealth("runs/exp1")])
    # then: tensorboard --logdir runs
    ```
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "logs",
        update_freq: int | str = DEFAULT_UPDATE_FREQ,
        histogram_freq: int = 1,
        what_if_dtypes: Sequence[str] = formats.WHAT_IF_DEFAULT,
        layers: str | None = None,
    ):
        super().__init__()
        if update_freq != "epoch" and (not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(f"update_freq must be a positive int or 'epoch'; got {update_freq!r}")
        if not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ValueError(f"histogram_freq must be an int >= 0; got {histogram_freq!r}")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.histogram_freq = histogram_freq
        self.what_if_dtypes = tuple(formats.canonical_name(d) for d in what_if_dtypes)
        self.layers = layers
        self._capture: GradientCapture | None = None
        self._hooked_train_function = None
        self._plain_train_function = None
        self._writer = GradientHealthWriter(self.log_dir)
        self._host_step = 0
        self._last_end = -1
        self._epoch_steps_left = 0

    def on_train_begin(self, logs=None):
        capture = self._capture_for(self.model)
        self._host_step = capture.step
        capture.install()
        capture.snapshot_weights()  # pre-update weights of the first step
        # The model's step function was traced without the hook: swap in ours, traced
        # once per capture, and hand the untouched one back in on_train_end (no retrace).
        self._plain_train_function = self.model.train_function
        if self._hooked_train_function is None:
            self.model.make_train_function(force=True)
            self._hooked_train_function = self.model.train_function
        self.model.train_function = self._hooked_train_function

    def on_epoch_begin(self, epoch, logs=None):
        self._last_end = -1
        if self.update_freq == "epoch":
            self._capture.request_log()
            self._epoch_steps_left = 2  # the requested step is the epoch's second

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1, `batch` is the last step of the execution.
        first = self._host_step
        self._host_step += batch - self._last_end
        self._last_end = batch
        capture = self._capture
        due = capture.is_logged_between(first, self._host_step)
        if self.update_freq == "epoch" and self._epoch_steps_left > 0:
            self._epoch_steps_left -= self._host_step - first
            due = self._epoch_steps_left <= 0
        if due:
            self._flush()

    def on_train_end(self, logs=None):
        if self._capture is None:
            return
        self._flush()
        self._writer.close()  # a later fit appends a new event file to the same run
        self._capture.uninstall()
        self.model.train_function = self._plain_train_function

    def _flush(self) -> None:
        try:
            self._capture.flush_to_writer()
        except Exception as e:  # noqa: BLE001 - the monitor must never stop training
            logger.warning("tb_gradstats: could not record gradient statistics: %s", e)

    def _capture_for(self, model) -> GradientCapture:
        if self._capture is not None and self._capture.optimizer is model.optimizer:
            return self._capture
        self._hooked_train_function = None
        self._capture = make_capture(
            model.optimizer,
            model.trainable_variables,
            self._writer,
            update_freq=None if self.update_freq == "epoch" else self.update_freq,
            histogram_freq=self.histogram_freq,
            what_if=self.what_if_dtypes,
            layers=self.layers,
            model=model,
            steps_per_execution=int(getattr(model, "steps_per_execution", 1) or 1),
        )
        return self._capture
