"""Plugin name, schema, tag names and metric names shared by both halves.

No TensorFlow here: the TensorBoard plugin imports this module. The layout of
every summary is described in `FORMAT.md`; this module is its executable form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "gradient_health"
SCHEMA_VERSION = 1

TAG_PREFIX = "gradient_health/"
STATS_TAG_PREFIX = TAG_PREFIX + "stats/"
HIST_TAG_PREFIX = TAG_PREFIX + "hist/"
STEP_TAG = TAG_PREFIX + "step"

KIND_STATS = "stats"
KIND_HIST = "hist"
KIND_STEP = "step"

GROUP_ROW = "*"  # row 0 of every stats/hist tensor: the whole dtype group

BASE_METRICS: tuple[str, ...] = (
    "count",
    "zero_count",
    "zero_fraction",
    "nan_count",
    "inf_count",
    "mean",
    "variance",
    "std",
    "min",
    "max",
    "abs_max",
    "abs_min_nonzero",
    "l2_norm",
    "update_ratio",
    "scaled_zero_fraction",
)
WHAT_IF_KINDS: tuple[str, ...] = ("underflow_fraction", "subnormal_fraction", "overflow_fraction")

STEP_METRICS: tuple[str, ...] = (
    "loss_scale",
    "skipped_step",
    "replicas",
    "nonfinite_replicas",
    "nonfinite_applied",
)

# Row kinds, one per row of a stats/hist tensor.
ROW_GROUP = "group"
ROW_DENSE = "dense"
ROW_SPARSE = "indexed_slices"  # stats over the rows the IndexedSlices touched
ROW_NONE = "none"  # variable received no gradient (all metrics NaN, count 0)


def metric_names(what_if: Sequence[str]) -> list[str]:
    """Returns the stats columns for the given what-if formats, in order.

    Args:
        what_if: canonical format names.

    Returns:
        `BASE_METRICS` followed by `"<kind>/<format>"` for each format and kind.
    """
    names = list(BASE_METRICS)
    for dtype in what_if:
        names += [f"{kind}/{dtype}" for kind in WHAT_IF_KINDS]
    return names


def group_name(grad_dtype: str, compute_dtype: str | None = None) -> str:
    """Returns the dtype-group id: `grad` or `grad@compute` when they differ.

    Args:
        grad_dtype: dtype of the gradient tensors (`"float32"` under mixed policies).
        compute_dtype: the owning layer's compute dtype.

    Returns:
        e.g. `"float32"`, `"bfloat16"` or `"float32@float16"`.
    """
    if compute_dtype and compute_dtype != grad_dtype:
        return f"{grad_dtype}@{compute_dtype}"
    return grad_dtype


def split_group(group: str) -> tuple[str, str]:
    """Returns `(grad_dtype, compute_dtype)` of a group id."""
    grad, _, compute = group.partition("@")
    return grad, compute or grad


def stats_tag(group: str) -> str:
    """Returns the tag of a group's stats tensor."""
    return STATS_TAG_PREFIX + group


def hist_tag(group: str) -> str:
    """Returns the tag of a group's log2-histogram tensor."""
    return HIST_TAG_PREFIX + group


def create_summary_metadata(content: dict) -> summary_pb2.SummaryMetadata:
    """Returns `SummaryMetadata` for a tensor summary of this plugin.

    Args:
        content: JSON-ready dict; `schema_version` is added.

    Returns:
        A `SummaryMetadata` proto with `data_class` set to TENSOR.
    """
    payload = dict(content, schema_version=SCHEMA_VERSION)
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME,
            content=json.dumps(payload, separators=(",", ":")).encode("utf-8"),
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


class SchemaError(ValueError):
    """Summary metadata that this version cannot read."""


def parse_plugin_content(content: bytes) -> dict:
    """Parses `plugin_data.content` of one of our tags.

    Args:
        content: the raw bytes.

    Returns:
        The decoded dict.

    Raises:
        SchemaError: if the bytes are not our JSON or the schema is newer
            than `SCHEMA_VERSION`.
    """
    try:
        payload = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError(f"unreadable metadata: {e}") from None
    if not isinstance(payload, dict):
        raise SchemaError("metadata is not a JSON object")
    version = payload.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise SchemaError(f"missing or bad schema_version: {version!r}")
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"schema_version {version} is newer than this tb_gradstats "
            f"reads ({SCHEMA_VERSION}); upgrade tb_gradstats"
        )
    return payload
