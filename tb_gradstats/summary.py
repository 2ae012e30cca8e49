"""Writes Gradient Health summaries to event files, without TensorFlow.

The callback computes everything in-graph and brings one small host copy per
logged step; from there on writing is plain protobuf, so one writer serves the
Keras callback, custom loops, test fixtures and the benchmark generators.
The layout is `FORMAT.md`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

from tb_gradstats import metadata

logger = logging.getLogger("tb_gradstats")


@dataclasses.dataclass
class GroupData:
    """The values of one dtype group at one logged step.

    Attributes:
        rows: row names; `rows[0]` is `metadata.GROUP_ROW`, then variable paths in model order.
        row_kinds: one of the `metadata.ROW_*` kinds per row.
        columns: metric names of `stats` (`metadata.metric_names(...)`).
        stats: float64 array `[len(rows), len(columns)]`.
        hist_first_exponent: log2 of the lower edge of the first histogram bin.
        hist: float64 counts `[len(rows), W]`; `None` when no histogram is logged this step.
        info: extra per-tag facts for the first metadata (policy, dtypes, replicas, what_if).
    """

    rows: Sequence[str]
    row_kinds: Sequence[str]
    columns: Sequence[str]
    stats: np.ndarray
    hist_first_exponent: int = 0
    hist: np.ndarray | None = None
    info: Mapping[str, object] = dataclasses.field(default_factory=dict)


_file_counter = itertools.count()


class EventFile:
    """One append-only event file, written synchronously.

    TensorBoard's own `EventFileWriter` writes from a background thread, whose
    I/O errors surface as a thread traceback on the user's console; here an
    error reaches the caller of `add_event`, which decides what to say. Event
    files are TFRecord files: inside a TensorFlow process TF's C++ record writer
    frames them (TensorBoard's pure-Python CRC costs ~0.2 ms per logged step);
    without TensorFlow, plain Python I/O does.

    Args:
        logdir: an existing directory.
        filename_suffix: appended to the standard event file name.
    """

    def __init__(self, logdir: str, filename_suffix: str):
        # Zero-padded counter: TensorBoard reads a run's files in name order.
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_file_counter):06d}{filename_suffix}"
        )
        self.path = os.path.join(logdir, name)
        tf = sys.modules.get("tensorflow")
        if tf is not None and hasattr(tf, "io"):
            self._file = tf.io.TFRecordWriter(self.path)
            self._write = self._file.write
        else:
            self._file = open(self.path, "ab")  # noqa: SIM115 - lives as long as the writer
            self._write = RecordWriter(self._file).write
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        """Appends one event and flushes it, so readers see whole records only."""
        self._write(event.SerializeToString())
        self._file.flush()

    def flush(self) -> None:
        """Flushes to the operating system."""
        self._file.flush()

    def close(self) -> None:
        """Closes the file."""
        self._file.close()


class GradientHealthWriter:
    """Appends Gradient Health events to one run directory.

    Never raises on I/O trouble: the first failure logs one warning and the
    writer goes quiet, so training is never interrupted by its monitor.

    Args:
        logdir: the run directory (created if missing).
        filename_suffix: appended to the event file name.

    Example:

    ```python
    writer = GradientHealthWriter("runs/exp1")
    writer.write(step=0, groups={"float32": group_data}, step_values={"loss_scale": 1.0})
    writer.close()
    ```
    """

    def __init__(self, logdir: str, filename_suffix: str = ".gradient_health"):
        self.logdir = os.fspath(logdir)
        self._suffix = filename_suffix
        self._writer: EventFile | None = None
        self._tags_with_metadata: set[str] = set()
        self.failed = False
        self._vanished_warned = False
        self.bytes_written = 0

    def write(
        self,
        step: int,
        groups: Mapping[str, GroupData],
        step_values: Mapping[str, float] | None = None,
        step_info: Mapping[str, object] | None = None,
    ) -> int:
        """Writes one logged step.

        Args:
            step: the global training step (0-based count of `apply` calls).
            groups: group id → `GroupData`.
            step_values: values for `metadata.STEP_METRICS` (missing ones are NaN).
            step_info: extra facts for the step tag's first metadata.

        Returns:
            The serialized bytes of the events written (0 after a failure).
        """
        if self.failed:
            return 0
        values = []
        for group, data in groups.items():
            values.append(self._stats_value(group, data))
            if data.hist is not None:
                values.append(self._hist_value(group, data))
        if step_values is not None:
            values.append(self._step_value(step_values, step_info or {}))
        event = event_pb2.Event(
            step=int(step), wall_time=time.time(), summary=summary_pb2.Summary(value=values)
        )
        return self._add(event)

    def flush(self) -> None:
        """Flushes pending events to disk."""
        self._guard(lambda: self._writer and self._writer.flush())

    def close(self) -> None:
        """Flushes and closes the event file; a later `write` opens a new one."""
        self._guard(lambda: self._writer and self._writer.close())
        self._writer = None
        self._tags_with_metadata.clear()

    def _stats_value(self, group: str, data: GroupData) -> summary_pb2.Summary.Value:
        content = dict(
            data.info, kind=metadata.KIND_STATS, group=group, rows=list(data.rows),
            row_kinds=list(data.row_kinds), columns=list(data.columns),
        )
        stats = np.asarray(data.stats, dtype=np.float64)
        return self._value(metadata.stats_tag(group), stats, content)

    def _hist_value(self, group: str, data: GroupData) -> summary_pb2.Summary.Value:
        content = dict(
            data.info, kind=metadata.KIND_HIST, group=group, rows=list(data.rows),
            row_kinds=list(data.row_kinds),
        )
        counts = np.asarray(data.hist, dtype=np.float64)
        first = np.full((counts.shape[0], 1), float(data.hist_first_exponent))
        return self._value(metadata.hist_tag(group), np.concatenate([first, counts], 1), content)

    def _step_value(self, step_values, info) -> summary_pb2.Summary.Value:
        row = np.array(
            [float(step_values.get(k, np.nan)) for k in metadata.STEP_METRICS], np.float64
        )
        content = dict(info, kind=metadata.KIND_STEP, columns=list(metadata.STEP_METRICS))
        return self._value(metadata.STEP_TAG, row, content)

    def _value(self, tag: str, array: np.ndarray, content: dict) -> summary_pb2.Summary.Value:
        value = summary_pb2.Summary.Value(
            tag=tag, tensor=tensor_util.make_tensor_proto(array)
        )
        # The Python data provider keeps only a tag's first metadata; later
        # events carry just the data class, which keeps every step small.
        if tag not in self._tags_with_metadata:
            value.metadata.CopyFrom(metadata.create_summary_metadata(content))
            self._tags_with_metadata.add(tag)
        else:
            value.metadata.plugin_data.plugin_name = metadata.PLUGIN_NAME
            value.metadata.data_class = summary_pb2.DATA_CLASS_TENSOR
        return value

    def _add(self, event: event_pb2.Event) -> int:
        def add():
            self._reopen_if_vanished()
            if self._writer is None:
                os.makedirs(self.logdir, exist_ok=True)
                self._writer = EventFile(self.logdir, self._suffix)
            self._writer.add_event(event)
            return event.ByteSize()

        size = self._guard(add) or 0
        self.bytes_written += size
        return size

    def _reopen_if_vanished(self) -> None:
        # A removed directory does not fail writes on POSIX: they would go to an
        # unlinked file and be lost without a word. Say so once and start a new file.
        if self._writer is None or os.path.isdir(self.logdir):
            return
        if not self._vanished_warned:
            self._vanished_warned = True
            logger.warning(
                "tb_gradstats: log dir %r was removed during training; recreating it "
                "(steps written before the removal are gone).", self.logdir,
            )
        self._close_quietly()
        self._tags_with_metadata.clear()

    def _close_quietly(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001 - nothing left to save in a broken file
            pass
        self._writer = None

    def _guard(self, fn):
        if self.failed:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any I/O error must not stop training
            self.failed = True
            self._close_quietly()
            logger.warning(
                "tb_gradstats: cannot write to %r (%s: %s); gradient health "
                "logging is off for this run, training continues.",
                self.logdir, type(e).__name__, e,
            )
            return None
