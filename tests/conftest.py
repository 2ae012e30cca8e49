"""Test-session setup shared by every test module."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    """Splits the CPU into two logical devices for the MirroredStrategy tests.

    Must run before TensorFlow initialises its devices, hence here and not in a fixture.
    """
    try:
        import tensorflow as tf
    except ImportError:  # TF-free test environments
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:
        pass  # devices already initialised (e.g. a plugin imported TF first)
