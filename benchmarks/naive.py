"""The naive way to watch gradients, as a baseline for the overhead benchmark.

At each epoch end it recomputes the gradients on the whole training set with a
fresh `GradientTape`, copies every gradient to numpy and computes a few
statistics there, then writes them as scalars. It costs a full forward and
backward pass per epoch and measures other gradients than the ones applied.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class NaiveGradientStats(keras.callbacks.Callback):
    """Recomputes whole-dataset gradients each epoch and logs numpy statistics.

    Args:
        x: training inputs (all of them).
        y: training targets.
        loss_fn: the training loss, called as `loss_fn(y, y_pred)`.
        log_dir: where to write the scalars (None: keep them in `self.history` only).

    Example:

    ```python
    model.fit(x, y, callbacks=[NaiveGradientStats(x, y, keras.losses.get("mse"))])
    ```
    """

    def __init__(self, x, y, loss_fn, log_dir: str | None = None):
        super().__init__()
        self.x = tf.convert_to_tensor(x)
        self.y = tf.convert_to_tensor(y)
        self.loss_fn = loss_fn
        self.log_dir = log_dir
        self.history: list[dict[str, dict[str, float]]] = []
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.loss_fn(self.y, self.model(self.x, training=True))
        grads = tape.gradient(loss, variables)
        stats = {v.path: self._stats(g.numpy().ravel())
                 for v, g in zip(variables, grads, strict=True) if g is not None}
        self.history.append(stats)
        if self._writer is not None:
            with self._writer.as_default():
                for path, values in stats.items():
                    for name, value in values.items():
                        tf.summary.scalar(f"grad/{path}/{name}", value, step=epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()

    @staticmethod
    def _stats(flat: np.ndarray) -> dict[str, float]:
        return {
            "zero_count": float(np.count_nonzero(flat == 0)),
            "std": float(np.std(flat)),
            "variance": float(np.var(flat)),
            "max": float(np.max(flat)),
            "min": float(np.min(flat)),
        }
