"""Each health rule fires on the pattern it names, and stays quiet on a healthy run."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradstats import alerts, metadata
from tb_gradstats.reader import GroupData, RunData

COLUMNS = metadata.metric_names(("float16", "bfloat16"))
T = 40


def _healthy(n_rows: int = 3) -> np.ndarray:
    stats = np.full((T, n_rows, len(COLUMNS)), 0.0)
    stats[..., COLUMNS.index("count")] = 100
    stats[..., COLUMNS.index("zero_fraction")] = 0.01
    stats[..., COLUMNS.index("l2_norm")] = 1.0
    stats[..., COLUMNS.index("update_ratio")] = 1e-3
    return stats


def _run(stats=None, group="float32", policy="float32", step_values=None) -> RunData:
    stats = _healthy() if stats is None else stats
    steps = np.arange(T, dtype=np.int64) * 10
    g = GroupData(group, ["*", "a/kernel", "b/kernel"], ["group", "dense", "dense"], COLUMNS,
                  {}, steps, stats, np.zeros(0, np.int64), [])
    sv = np.tile([1.0, 0, 1, 0, 0], (T, 1)) if step_values is None else step_values
    return RunData("r", {group: g}, steps, sv, list(metadata.STEP_METRICS), {"policy": policy})


def _rules(data, **kw):
    return [(a.rule, a.severity, a.layer) for a in alerts.evaluate(data, alerts.Thresholds(**kw))]


def test_healthy_run_has_no_alerts():
    assert _rules(_run()) == []


def test_non_finite_reports_first_and_last_step():
    stats = _healthy()
    stats[7, 2, COLUMNS.index("nan_count")] = 3
    stats[9, 2, COLUMNS.index("inf_count")] = 5
    (a,) = alerts.evaluate(_run(stats))
    assert (a.rule, a.severity, a.layer, a.first_step, a.last_step, a.value) == (
        "non_finite", "error", "b/kernel", 70, 90, 5.0)


def test_vanishing_norm_and_exploding_norm():
    stats = _healthy()
    stats[:, 1, COLUMNS.index("l2_norm")] = np.logspace(0, -5, T)
    stats[:, 2, COLUMNS.index("l2_norm")] = np.logspace(0, 5, T)
    got = _rules(_run(stats))
    assert ("exploding", "error", "b/kernel") in got
    assert ("vanishing", "warning", "a/kernel") in got
    assert len(got) == 2


def test_norm_drop_below_threshold_is_quiet():
    stats = _healthy()
    stats[:, 1, COLUMNS.index("l2_norm")] = np.logspace(0, -2, T)  # 100x < 1000x
    assert _rules(_run(stats)) == []


def test_zero_fraction_rising_is_vanishing():
    stats = _healthy()
    stats[:, 1, COLUMNS.index("zero_fraction")] = np.linspace(0.1, 0.97, T)
    assert _rules(_run(stats)) == [("vanishing", "warning", "a/kernel")]


def test_dead_layer_needs_consecutive_steps():
    stats = _healthy()
    zf = COLUMNS.index("zero_fraction")
    stats[5:30, 1, zf] = 1.0  # 25 consecutive
    stats[::2, 2, zf] = 1.0  # 20 in total but never 2 in a row
    got = alerts.evaluate(_run(stats))
    assert [(a.rule, a.layer, a.value, a.first_step, a.last_step) for a in got] == [
        ("dead_layer", "a/kernel", 25.0, 50, 290)]
    assert _rules(_run(stats), dead_min_steps=26) == []


def test_range_risk_uses_the_compute_dtype_of_the_group():
    stats = _healthy()
    stats[3, 1, COLUMNS.index("underflow_fraction/float16")] = 0.2
    stats[4, 2, COLUMNS.index("overflow_fraction/float16")] = 1e-3
    stats[:, :, COLUMNS.index("underflow_fraction/bfloat16")] = 0.5  # not this run's dtype
    got = _rules(_run(stats, group="float32@float16"))
    assert sorted(got) == [("overflow_risk", "error", "b/kernel"),
                           ("underflow_risk", "warning", "a/kernel")]
    # A float32 run has no low-precision dtype: no range alerts at all.
    assert _rules(_run(stats)) == []
    # The policy names the dtype when the group does not.
    assert ("underflow_risk", "warning", "a/kernel") in _rules(_run(stats, policy="mixed_float16"))


def test_loss_scale_collapse_skipped_and_nonfinite_applied():
    sv = np.tile([2.0**15, 0, 1, 0, 0], (T, 1))
    sv[20:, 0] = 1.0
    sv[10:22, 1] = 1
    sv[30, 3:] = 1
    got = {a.rule: a for a in alerts.evaluate(_run(step_values=sv))}
    assert set(got) == {"loss_scale_collapse", "skipped_steps", "nonfinite_applied"}
    assert got["loss_scale_collapse"].first_step == 200
    assert (got["skipped_steps"].severity, got["skipped_steps"].value) == ("warning", 12.0)
    applied = got["nonfinite_applied"]
    assert (applied.first_step, applied.severity) == (300, "error")


def test_constant_loss_scale_of_one_is_not_a_collapse():
    assert _rules(_run(step_values=np.tile([1.0, 0, 1, 0, 0], (T, 1)))) == []


def test_few_skipped_steps_are_info():
    sv = np.tile([1024.0, 0, 1, 0, 0], (T, 1))
    sv[:3, 1] = 1
    assert _rules(_run(step_values=sv)) == [("skipped_steps", "info", "*")]


def test_rows_without_gradient_are_ignored():
    stats = _healthy()
    stats[:, 2, :] = np.nan
    data = _run(stats)
    data.groups["float32"].row_kinds[2] = metadata.ROW_NONE
    assert _rules(data) == []


def test_at_least_and_counts():
    stats = _healthy()
    stats[0, 1, COLUMNS.index("nan_count")] = 1
    stats[:, 2, COLUMNS.index("zero_fraction")] = 1.0
    found = alerts.evaluate(_run(stats))
    assert alerts.counts(found) == {"info": 0, "warning": 1, "error": 1}
    assert [a.severity for a in found] == ["error", "warning"]  # errors first
    assert [a.rule for a in alerts.at_least(found, "error")] == ["non_finite"]
    with pytest.raises(ValueError):
        alerts.at_least(found, "fatal")


def test_underflow_is_not_judged_while_loss_scaling_works():
    # Under mixed_float16 with a loss scale of 2**15 the unscaled what-if says 30% would
    # underflow in float16, but those small values never existed in float16; and the scaled
    # gradient's zeros (25% here) mix ReLU zeros with flushed ones: no alert either way.
    stats = _healthy()
    stats[:, :, COLUMNS.index("underflow_fraction/float16")] = 0.3
    stats[5:7, 1, COLUMNS.index("scaled_zero_fraction")] = [0.02, 0.25]
    scaled = np.tile([2.0**15, 0, 1, 0, 0], (T, 1))
    assert _rules(_run(stats, group="float32@float16", policy="mixed_float16",
                       step_values=scaled)) == []
    # Without loss scaling (scale 1) the unscaled what-if is the honest signal again.
    unscaled = np.tile([1.0, 0, 1, 0, 0], (T, 1))
    got = alerts.evaluate(_run(stats, group="float32@float16", policy="mixed_float16",
                               step_values=unscaled))
    assert sorted((a.rule, a.layer, a.value, a.first_step, a.last_step, a.metric) for a in got) == [
        ("underflow_risk", "a/kernel", 0.3, 0, 390, "underflow_fraction/float16"),
        ("underflow_risk", "b/kernel", 0.3, 0, 390, "underflow_fraction/float16")]
    # Scale above 1 from step index 20 on: only the first 20 steps are judged.
    mixed = unscaled.copy()
    mixed[20:, 0] = 2.0**12
    got = alerts.evaluate(_run(stats, group="float32@float16", policy="mixed_float16",
                               step_values=mixed))
    assert sorted((a.layer, a.first_step, a.last_step) for a in got) == [
        ("a/kernel", 0, 190), ("b/kernel", 0, 190)]


def test_converging_run_is_not_vanishing():
    # Every layer's gradient shrinks 10^4x as the run converges: nothing vanishes *relatively*.
    stats = _healthy()
    stats[:, 1:, COLUMNS.index("l2_norm")] = np.logspace(0, -4, T)[:, None]
    assert _rules(_run(stats)) == []


def test_stalled_update_needs_nonzero_gradient_and_zero_update():
    stats = _healthy()
    stats[10:35, 2, COLUMNS.index("update_ratio")] = 0.0  # 25 logged steps without a move
    stats[:, 1, COLUMNS.index("update_ratio")] = 0.0
    stats[:, 1, COLUMNS.index("zero_fraction")] = 1.0  # a/kernel: zero gradient -> dead, not stalled
    got = alerts.evaluate(_run(stats))
    stalled = [a for a in got if a.rule == "stalled_update"]
    assert [(a.layer, a.first_step, a.last_step, a.value) for a in stalled] == [
        ("b/kernel", 100, 340, 25.0)]
    assert {a.rule for a in got if a.layer == "a/kernel"} == {"dead_layer"}


def test_every_alert_names_a_metric_the_run_logged():
    """The dashboard jumps to `alert.metric`: it must be a column of the group or the step tensor."""
    stats = _healthy()
    stats[7, 2, COLUMNS.index("nan_count")] = 3  # non_finite
    stats[:, 1, COLUMNS.index("l2_norm")] = np.logspace(0, -5, T)  # vanishing
    stats[5:30, 2, COLUMNS.index("zero_fraction")] = 1.0  # dead layer
    stats[:, 1, COLUMNS.index("underflow_fraction/float16")] = 0.5  # underflow risk
    sv = np.tile([1.0, 1, 1, 1, 1], (T, 1))  # skipped steps, nonfinite applied
    sv[:, 0] = np.logspace(0, -3, T)  # loss scale collapse
    data = _run(stats, group="float32@float16", policy="mixed_float16", step_values=sv)
    found = alerts.evaluate(data)
    assert {a.rule for a in found} >= {"non_finite", "vanishing", "dead_layer",
                                       "skipped_steps", "nonfinite_applied"}
    for a in found:
        columns = data.step_columns if a.group == "_step" else data.groups[a.group].columns
        assert a.metric in columns, a
