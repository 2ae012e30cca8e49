"""Floating-point formats and the exact thresholds the what-if counts use.

Pure Python (no TensorFlow, no numpy) so that the in-graph statistics, the
test oracle, the alerts and the dashboard overlays share one table.

All thresholds are expressed on the *magnitude* of a float32 value and follow
round-to-nearest-even casting from float32 (see `shared/design/dtype-facts.md`).
"""

from __future__ import annotations

import dataclasses
import struct


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """One floating-point format and the float32 thresholds of a cast to it.

    Attributes:
        name: canonical dtype name (`ml_dtypes` / numpy spelling).
        exponent_bits: exponent field width.
        mantissa_bits: explicit mantissa bits.
        max_finite: largest finite value.
        min_normal: smallest positive normal value.
        min_subnormal: smallest positive subnormal value.
        underflow_max: a nonzero float32 `x` casts to 0 iff `abs(x) <= underflow_max`.
        subnormal_below: a float32 casts to a subnormal (or zero) iff `abs(x) < subnormal_below`.
        overflow_at: a finite float32 overflows iff `abs(x) >= overflow_at`
            (for float8_e4m3fn, which has no inf, the cast gives NaN).
        has_inf: whether the format has an infinity.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    max_finite: float
    min_normal: float
    min_subnormal: float
    underflow_max: float
    subnormal_below: float
    overflow_at: float
    has_inf: bool

    def as_json(self) -> dict:
        """Returns the format as a JSON-ready dict (served to the frontend)."""
        out = dataclasses.asdict(self)
        out["log2_min_subnormal"] = _exact_log2(self.min_subnormal)
        out["log2_min_normal"] = _exact_log2(self.min_normal)
        return out


def _exact_log2(x: float) -> int:
    m, e = _frexp(x)
    assert m == 0.5, x
    return e - 1


def _frexp(x: float) -> tuple[float, int]:
    import math

    return math.frexp(x)


def _next_up32(x: float) -> float:
    """The next float32 above the (float32) value `x`."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    return struct.unpack("<f", struct.pack("<I", bits + 1))[0]


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat(
            name="float32", exponent_bits=8, mantissa_bits=23,
            max_finite=3.4028234663852886e38, min_normal=2.0**-126,
            min_subnormal=2.0**-149, underflow_max=0.0,
            subnormal_below=2.0**-126, overflow_at=float("inf"), has_inf=True,
        ),
        FloatFormat(
            name="float16", exponent_bits=5, mantissa_bits=10,
            max_finite=65504.0, min_normal=2.0**-14, min_subnormal=2.0**-24,
            underflow_max=2.0**-25, subnormal_below=2.0**-14 - 2.0**-25,
            overflow_at=65520.0, has_inf=True,
        ),
        FloatFormat(
            name="bfloat16", exponent_bits=8, mantissa_bits=7,
            max_finite=3.3895313892515355e38, min_normal=2.0**-126,
            min_subnormal=2.0**-133, underflow_max=2.0**-134,
            subnormal_below=2.0**-126 - 2.0**-134,
            overflow_at=(2.0 - 2.0**-8) * 2.0**127, has_inf=True,
        ),
        FloatFormat(
            name="float8_e4m3fn", exponent_bits=4, mantissa_bits=3,
            max_finite=448.0, min_normal=2.0**-6, min_subnormal=2.0**-9,
            underflow_max=2.0**-10, subnormal_below=2.0**-6 - 2.0**-10,
            # 464 itself rounds (ties-to-even) down to 448; anything above is NaN.
            overflow_at=_next_up32(464.0), has_inf=False,
        ),
        FloatFormat(
            name="float8_e5m2", exponent_bits=5, mantissa_bits=2,
            max_finite=57344.0, min_normal=2.0**-14, min_subnormal=2.0**-16,
            underflow_max=2.0**-17, subnormal_below=2.0**-14 - 2.0**-17,
            overflow_at=61440.0, has_inf=True,
        ),
    )
}

WHAT_IF_DEFAULT: tuple[str, ...] = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")

# Spellings users pass (Keras policies, numpy names) mapped to canonical names.
_ALIASES = {"half": "float16", "bf16": "bfloat16", "fp16": "float16",
            "float8_e4m3": "float8_e4m3fn", "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def canonical_name(name: str) -> str:
    """Returns the canonical format name for `name`.

    Args:
        name: a dtype name such as `"float16"`, `"bf16"` or `"float8_e4m3"`.

    Returns:
        The key of `FORMATS`.

    Raises:
        ValueError: if the format is unknown.
    """
    key = _ALIASES.get(str(name), str(name))
    if key not in FORMATS:
        raise ValueError(
            f"Unknown float format {name!r}; expected one of {sorted(FORMATS)}."
        )
    return key


def float32_bits(x: float) -> int:
    """Returns the IEEE bit pattern of `x` rounded to float32 (magnitude bits only)."""
    if x == float("inf"):
        return 0x7F800000
    return struct.unpack("<I", struct.pack("<f", x))[0] & 0x7FFFFFFF


def bit_thresholds(name: str) -> dict[str, int]:
    """Returns the thresholds of format `name` as float32 magnitude bit patterns.

    With `ab = bits(abs(x))` for a finite float32 `x`:
    `0 < ab <= underflow_max` underflows, `0 < ab < subnormal_below` is zero or
    subnormal after the cast, and `ab >= overflow_at` overflows.

    Args:
        name: a format name accepted by `canonical_name`.

    Returns:
        Dict with keys `underflow_max`, `subnormal_below`, `overflow_at`.
    """
    f = FORMATS[canonical_name(name)]
    return {
        "underflow_max": float32_bits(f.underflow_max),
        "subnormal_below": float32_bits(f.subnormal_below),
        "overflow_at": float32_bits(f.overflow_at),
    }
