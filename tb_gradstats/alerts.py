"""Gradient health rules on the reader's arrays (TF-free).

Every rule is a small function `rule(run_data, thresholds) -> list[Alert]`;
`evaluate` runs them all. Per-layer rules look at the layer rows only (the
group row `*` is their union and would repeat the same finding).

Example:

```python
from tb_gradstats import alerts, reader

r = reader.Reader(reader.logdir_provider("runs/"))
data, _ = r.read_all()
for alert in alerts.evaluate(data["exp1"], alerts.Thresholds(dead_min_steps=50)):
    print(alert.severity, alert.message)
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from tb_gradstats import formats, metadata
from tb_gradstats.reader import GroupData, RunData

SEVERITIES: tuple[str, ...] = ("info", "warning", "error")  # ascending
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Every knob of the health rules, in one place.

    Attributes:
        window: logged steps at each end of the run that trend rules compare
            (medians of the first and the last `window` steps).
        min_trend_steps: runs with fewer logged steps get no trend alerts.
        vanishing_decades: a layer's `l2_norm` falling by at least 10**this more
            than its group's other layers (late vs early, relative to the geometric
            median of their ratios; absolute for a group of one) is a vanishing gradient. Relative, because
            every gradient shrinks as a run converges; a layer that shrinks far
            faster than its peers is the one that stops learning.
        exploding_decades: `l2_norm` growing by at least 10**this is an exploding gradient.
        vanishing_zero_fraction: late median `zero_fraction` at or above this...
        vanishing_zero_start: ...while the early median was below this is "zeros rising".
        underflow_fraction: `underflow_fraction/D` above this, for the run's
            low-precision dtype `D`, is a range risk (warning). Loss-scaled steps
            (step `loss_scale > 1`) are not judged: `underflow_fraction/D` describes
            the *unscaled* gradient, whose small values never existed in `D` (the
            backward pass held them multiplied by the scale), and the zeros of the
            scaled gradient mix true zeros (ReLU) with flushed ones, so neither
            measures the risk; a failing loss scale shows as skipped steps and a
            collapsing scale instead.
        overflow_fraction: `overflow_fraction/D` above this is a range risk (error).
        dead_min_steps: `zero_fraction == 1` for at least this many consecutive
            logged steps is a dead layer; `update_ratio == 0` with a nonzero
            gradient for as many steps is a stalled update.
        skipped_steps_min: at least this many skipped (loss-scale) steps warns.
        loss_scale_floor: a loss scale that falls to this or below after having
            been above it has collapsed.
    """

    window: int = 5
    min_trend_steps: int = 10
    vanishing_decades: float = 3.0
    exploding_decades: float = 3.0
    vanishing_zero_fraction: float = 0.9
    vanishing_zero_start: float = 0.5
    underflow_fraction: float = 0.01
    overflow_fraction: float = 0.0
    dead_min_steps: int = 20
    skipped_steps_min: int = 10
    loss_scale_floor: float = 1.0


@dataclasses.dataclass(frozen=True)
class Alert:
    """One finding.

    Attributes:
        severity: `error`, `warning` or `info`.
        rule: rule id (`non_finite`, `vanishing`, `exploding`, `dead_layer`,
            `underflow_risk`, `overflow_risk`, `loss_scale_collapse`,
            `skipped_steps`, `nonfinite_applied`).
        run: run name.
        group: dtype group (`_step` for step-tensor rules).
        layer: variable path (`*` for step-tensor rules).
        first_step: first step the finding covers.
        last_step: last step the finding covers.
        value: the measured value.
        threshold: the threshold it crossed.
        message: one sentence for the user.
        metric: the stats or step column that shows the evidence (for the dashboard's jump).
    """

    severity: str
    rule: str
    run: str
    group: str
    layer: str
    first_step: int
    last_step: int
    value: float
    threshold: float
    message: str
    metric: str = ""

    def as_json(self) -> dict:
        """Returns the alert as a JSON-ready dict."""
        return dataclasses.asdict(self)


Rule = Callable[[RunData, Thresholds], list[Alert]]


def evaluate(data: RunData, thresholds: Thresholds | None = None) -> list[Alert]:
    """Runs every rule on one run.

    Args:
        data: one run's arrays from `reader.Reader`.
        thresholds: overrides of the defaults.

    Returns:
        Alerts sorted by severity (errors first), then group, layer and rule.
    """
    th = thresholds or Thresholds()
    out: list[Alert] = []
    for rule in RULES:
        out += rule(data, th)
    return sorted(out, key=lambda a: (-_RANK[a.severity], a.group, a.layer, a.rule))


def at_least(alerts: Iterable[Alert], severity: str | None) -> list[Alert]:
    """Returns the alerts at or above `severity` (all when `None`).

    Raises:
        ValueError: for an unknown severity.
    """
    if severity is None:
        return list(alerts)
    if severity not in _RANK:
        raise ValueError(f"unknown severity {severity!r}; expected one of {list(SEVERITIES)}")
    return [a for a in alerts if _RANK[a.severity] >= _RANK[severity]]


def counts(alerts: Iterable[Alert]) -> dict[str, int]:
    """Returns `{error: n, warning: n, info: n}`."""
    out = dict.fromkeys(SEVERITIES, 0)
    for a in alerts:
        out[a.severity] += 1
    return out


# --- per-layer helpers -------------------------------------------------------


def _layers(group: GroupData) -> Iterable[tuple[int, str]]:
    """Layer rows that received a gradient (not the group row, not `none`)."""
    for r, (name, kind) in enumerate(zip(group.rows, group.row_kinds, strict=True)):
        if r > 0 and kind != metadata.ROW_NONE:
            yield r, name


def _column(group: GroupData, name: str) -> np.ndarray | None:
    return group.metric(name) if name in group.columns else None


_EVIDENCE = {"non_finite": "nan_count", "vanishing": "l2_norm", "exploding": "l2_norm",
             "dead_layer": "zero_fraction", "stalled_update": "update_ratio",
             "loss_scale_collapse": "loss_scale",
             "skipped_steps": "skipped_step", "nonfinite_applied": "nonfinite_applied"}


def _alert(sev, rule, data, group, layer, steps, value, threshold, message, metric=None) -> Alert:
    return Alert(sev, rule, data.run, group, layer, int(steps[0]), int(steps[-1]),
                 float(value), float(threshold), message, metric or _EVIDENCE.get(rule, ""))


def _longest_true_run(mask: np.ndarray) -> tuple[int, int]:
    """Returns `(start, length)` of the longest run of True (length 0 if none)."""
    best, start, cur = (0, 0), 0, 0
    for i, m in enumerate(mask.tolist()):
        cur = cur + 1 if m else 0
        if cur == 1:
            start = i
        if cur > best[1]:
            best = (start, cur)
    return best


def _ends(values: np.ndarray, window: int) -> tuple[float, float]:
    """Medians of the first and last `window` finite values (NaN if none)."""
    finite = values[np.isfinite(values)]
    if len(finite) < 2 * window:
        return np.nan, np.nan
    return float(np.median(finite[:window])), float(np.median(finite[-window:]))


# --- rules -------------------------------------------------------------------


def non_finite(data: RunData, th: Thresholds) -> list[Alert]:
    """Error: a layer's gradient held NaN or Inf at some logged step."""
    out = []
    for group in data.groups.values():
        nan, inf = _column(group, "nan_count"), _column(group, "inf_count")
        if nan is None or inf is None:
            continue
        for r, layer in _layers(group):
            bad = np.nan_to_num(nan[:, r]) + np.nan_to_num(inf[:, r])
            hit = np.flatnonzero(bad > 0)
            if len(hit):
                out.append(_alert(
                    "error", "non_finite", data, group.group, layer, group.steps[hit],
                    bad[hit].max(), 0,
                    f"{layer}: gradient had NaN/Inf values at {len(hit)} logged step(s), "
                    f"first at step {group.steps[hit[0]]}.",
                ))
    return out


def norm_trend(data: RunData, th: Thresholds) -> list[Alert]:
    """Vanishing / exploding: `l2_norm` late vs early by orders of magnitude."""
    out = []
    for group in data.groups.values():
        norm = _column(group, "l2_norm")
        if norm is None or len(group.steps) < th.min_trend_steps:
            continue
        ratios = {}
        for r, layer in _layers(group):
            early, late = _ends(norm[:, r], th.window)
            if early > 0 and late >= 0:
                ratios[layer] = late / early
        for layer, ratio in ratios.items():
            # Against the other layers of the group: with none, the absolute trend.
            others = [v for k, v in ratios.items() if k != layer]
            typical = _geometric_median(others) if others else 1.0
            relative = ratio / typical if typical > 0 else np.inf
            if relative <= 10.0 ** -th.vanishing_decades:
                out.append(_alert(
                    "warning", "vanishing", data, group.group, layer, group.steps, relative,
                    10.0 ** -th.vanishing_decades,
                    f"{layer}: gradient L2 norm fell {1 / max(ratio, 1e-300):.3g}x from the first "
                    f"to the last logged steps, {1 / max(relative, 1e-300):.3g}x more than the "
                    "group's other layers (vanishing gradient).",
                ))
            elif ratio >= 10.0 ** th.exploding_decades:
                out.append(_alert(
                    "error", "exploding", data, group.group, layer, group.steps, ratio,
                    10.0 ** th.exploding_decades,
                    f"{layer}: gradient L2 norm grew {ratio:.3g}x from the first to the "
                    "last logged steps (exploding gradient).",
                ))
    return out


def _geometric_median(values: list[float]) -> float:
    positive = [v for v in values if v > 0]
    return float(np.exp(np.median(np.log(positive)))) if positive else 0.0


def _streaks(data: RunData, th: Thresholds, rule: str, columns: tuple[str, ...],
             mask: Callable[..., np.ndarray], message: Callable[[str, np.ndarray], str]) -> list[Alert]:
    """Warnings for layers where `mask(*columns)` holds for `dead_min_steps`+ consecutive steps."""
    out = []
    for group in data.groups.values():
        cols = [_column(group, c) for c in columns]
        if any(c is None for c in cols):
            continue
        for r, layer in _layers(group):
            start, length = _longest_true_run(mask(*(c[:, r] for c in cols)))
            if length >= th.dead_min_steps:
                steps = group.steps[start:start + length]
                out.append(_alert("warning", rule, data, group.group, layer, steps, length,
                                  th.dead_min_steps, message(layer, steps)))
    return out


def stalled_update(data: RunData, th: Thresholds) -> list[Alert]:
    """Warning: the gradient is nonzero but the weights do not move (`update_ratio == 0`).

    Low precision does this quietly: e.g. Adam under a pure bfloat16 policy, where
    `beta_2 = 0.999` rounds to 1.0, or updates below half an ulp of the weights.
    """
    return _streaks(
        data, th, "stalled_update", ("update_ratio", "zero_fraction"),
        lambda ratio, zeros: (ratio == 0) & (zeros < 1),
        lambda layer, steps: (
            f"{layer}: the gradient is nonzero but the weights did not change for "
            f"{len(steps)} consecutive logged steps from step {steps[0]} (update lost "
            "to rounding, e.g. optimizer state or updates below the weights' precision)."),
    )


def zeros_rising(data: RunData, th: Thresholds) -> list[Alert]:
    """Vanishing: the zero fraction rose from low to high (dead layers excluded)."""
    out = []
    for group in data.groups.values():
        zeros = _column(group, "zero_fraction")
        if zeros is None or len(group.steps) < th.min_trend_steps:
            continue
        for r, layer in _layers(group):
            early, late = _ends(zeros[:, r], th.window)
            # All-zero gradients are reported once, as a dead layer.
            if late >= th.vanishing_zero_fraction and early < th.vanishing_zero_start and late < 1:
                out.append(_alert(
                    "warning", "vanishing", data, group.group, layer, group.steps, late,
                    th.vanishing_zero_fraction,
                    f"{layer}: {late:.0%} of gradient values are zero at the end of the run "
                    f"(was {early:.0%}).", metric="zero_fraction",
                ))
    return out


def dead_layer(data: RunData, th: Thresholds) -> list[Alert]:
    """Warning: an all-zero gradient for many consecutive logged steps."""
    return _streaks(
        data, th, "dead_layer", ("zero_fraction",), lambda zeros: zeros == 1.0,
        lambda layer, steps: (
            f"{layer}: gradient was all zeros for {len(steps)} consecutive logged steps "
            f"({steps[0]}..{steps[-1]}); the layer is not learning."),
    )


def low_precision_dtype(data: RunData, group: GroupData) -> str | None:
    """The low-precision dtype a group's values live in: its compute dtype, else the policy's.

    Returns:
        A canonical format name other than float32, or `None`.
    """
    candidates = [group.compute_dtype, str(data.facts.get("policy") or "").replace("mixed_", "")]
    for name in candidates:
        try:
            canonical = formats.canonical_name(name)
        except ValueError:
            continue
        if canonical != "float32":
            return canonical
    return None


def range_risk(data: RunData, th: Thresholds) -> list[Alert]:
    """Under/overflow fractions for the run's own low-precision dtype.

    Loss-scaled steps are not judged for underflow (see `Thresholds.underflow_fraction`).
    """
    out = []
    for group in data.groups.values():
        dtype = low_precision_dtype(data, group)
        if dtype is None:
            continue
        for kind, limit, sev in (("underflow", th.underflow_fraction, "warning"),
                                 ("overflow", th.overflow_fraction, "error")):
            values = _column(group, f"{kind}_fraction/{dtype}")
            if values is None:
                continue
            if kind == "underflow":
                values = _underflow_signal(data, group, values)
            out += _range_alerts(data, group, values, kind, dtype, limit, sev)
    return out


def loss_scaled_steps(data: RunData, steps: np.ndarray) -> np.ndarray:
    """`[len(steps)]` bool: the step tensor logged a loss scale above 1 at that step."""
    if "loss_scale" not in data.step_columns or not len(data.step_steps):
        return np.zeros(len(steps), bool)
    scale = data.step_metric("loss_scale")
    i = np.clip(np.searchsorted(data.step_steps, steps), 0, len(data.step_steps) - 1)
    return (data.step_steps[i] == steps) & (np.nan_to_num(scale[i]) > 1)


def _underflow_signal(data, group, values) -> np.ndarray:
    """The what-if underflow fractions, with loss-scaled steps left unjudged (NaN)."""
    scaled = loss_scaled_steps(data, group.steps)
    return np.where(scaled[:, None], np.nan, values)


def _range_alerts(data, group, values, kind, dtype, limit, sev) -> list[Alert]:
    out = []
    for r, layer in _layers(group):
        col = np.nan_to_num(values[:, r])
        hit = np.flatnonzero(col > limit)
        if not len(hit):
            continue
        out.append(_alert(
            sev, f"{kind}_risk", data, group.group, layer, group.steps[hit], col.max(), limit,
            f"{layer}: up to {col.max():.3g} of the gradient values would {kind} in {dtype} "
            f"({len(hit)} logged step(s)).",
            metric=f"{kind}_fraction/{dtype}",
        ))
    return out


def loss_scale_collapse(data: RunData, th: Thresholds) -> list[Alert]:
    """Error: a dynamic loss scale fell to the floor after being above it."""
    if "loss_scale" not in data.step_columns or not len(data.step_steps):
        return []
    scale = data.step_metric("loss_scale")
    above = np.flatnonzero(scale > th.loss_scale_floor)
    if not len(above):
        return []  # no loss scaling (scale 1 throughout)
    low = np.flatnonzero((scale <= th.loss_scale_floor) & (np.arange(len(scale)) > above[0]))
    if not len(low):
        return []
    return [_alert(
        "error", "loss_scale_collapse", data, "_step", "*", data.step_steps[low],
        scale[low].min(), th.loss_scale_floor,
        f"loss scale collapsed to {scale[low].min():.3g} at step {data.step_steps[low[0]]}: "
        "the gradients keep overflowing even in float32 (or the loss is NaN).",
    )]


def _step_hits(data: RunData, column: str) -> np.ndarray:
    """Indices of the logged steps whose step-tensor `column` is positive."""
    if column not in data.step_columns:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.nan_to_num(data.step_metric(column)) > 0)


def skipped_steps(data: RunData, th: Thresholds) -> list[Alert]:
    """Warning (info below the threshold): optimizer steps skipped by loss scaling."""
    hit = _step_hits(data, "skipped_step")
    if not len(hit):
        return []
    sev = "warning" if len(hit) >= th.skipped_steps_min else "info"
    return [_alert(
        sev, "skipped_steps", data, "_step", "*", data.step_steps[hit], len(hit),
        th.skipped_steps_min,
        f"{len(hit)} logged step(s) were skipped by the loss-scale optimizer (non-finite "
        "gradients); a few at the start are normal while the scale settles.",
    )]


def nonfinite_applied(data: RunData, th: Thresholds) -> list[Alert]:
    """Error: a replica saw NaN/Inf but the step was applied anyway."""
    hit = _step_hits(data, "nonfinite_applied")
    if not len(hit):
        return []
    replicas = data.facts.get("replicas") or 1
    whose = "a replica's gradient" if replicas > 1 else "the gradient"
    return [_alert(
        "error", "nonfinite_applied", data, "_step", "*", data.step_steps[hit], len(hit), 0,
        f"{len(hit)} logged step(s) applied an update although {whose} held "
        f"NaN/Inf (first at step {data.step_steps[hit[0]]}); the weights may be corrupt.",
    )]


RULES: tuple[Rule, ...] = (
    non_finite, norm_trend, zeros_rising, dead_layer, stalled_update, range_risk,
    loss_scale_collapse, skipped_steps, nonfinite_applied,
)
