"""One worker of the MultiWorkerMirroredStrategy test (run as a subprocess).

Usage: python multiworker_worker.py LOGDIR RESULT_JSON (TF_CONFIG in the environment).
Worker i injects the gradient (i + 1) * C into the same variable, so the chief's
logged values show whether worker 1's gradient was included.

A custom loop with `GradientMonitor`: Keras 3.15's own `fit` fails under this
strategy before the first step, callback or not (its log reduction calls
`strategy.reduce("MEAN", scalar, axis=0)`).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402 - the strategy must exist before Keras touches devices

import tb_gradstats  # noqa: E402

STEPS = 3


def main(logdir: str, result_path: str) -> None:
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    c = np.linspace(-1.0, 1.0, 12).astype("float32") * (task + 1)
    with strategy.scope():
        w = keras.Variable(np.ones(12, "float32"), name="w")
        optimizer = keras.optimizers.SGD(0.01)
        optimizer.build([w])

    @tf.custom_gradient
    def inject(v):
        return tf.reduce_sum(v) * 0.0, lambda up: tf.constant(c)

    @tf.function
    def train_step():
        def replica_fn():
            with tf.GradientTape() as tape:
                loss = inject(tf.identity(w.value))
            optimizer.apply(tape.gradient(loss, [w.value]), [w])

        strategy.run(replica_fn)

    with tb_gradstats.GradientMonitor(logdir, optimizer, variables=[w], update_freq=1) as monitor:
        for _ in range(STEPS):
            train_step()
            monitor.step_end()
    with open(result_path, "w") as f:
        json.dump({"task": task, "replicas": strategy.num_replicas_in_sync, "c": c.tolist(),
                   "w": w.numpy().tolist()}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
