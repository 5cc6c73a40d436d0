"""Lock-in detector: pymeasure's SR830 driver plus what a raster scan needs.

:class:`LockIn` subclasses ``pymeasure.instruments.srs.SR830`` and adds: settling time from the time
constant and filter slope, one-query readings (``SNAP?``), status checks that turn an overload or an
unlocked reference into an exception instead of a silently wrong number, a deterministic auto-range,
and conversion of R (V rms) to optical power (W) through a detector calibration.

Commands sent (SR830 manual, ch. 5 "Remote programming"):

==========================  =====================================================================
``settle_time_s()``         ``OFLT?``, ``OFSL?``
``wait_settled()``          ``*CLS`` (clears the latched LIA status), ``OFLT?``, ``OFSL?``, sleep
``read_r_theta()``          ``SNAP? 3,4``
``read_xy()``               ``SNAP? 1,2``
``status()``                ``LIAS?``
``read_checked()``          ``SNAP? 3,4`` then ``LIAS?``
``read_power_w()``          as ``read_checked()``
``auto_range()``            ``SENS?``, then per step ``SNAP? 3,4``, ``LIAS?``, ``SENS<n>`` and a settle
==========================  =====================================================================
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np
from pymeasure.instruments import Instrument
from pymeasure.instruments.srs.sr830 import SR830, LIAStatus
from pymeasure.instruments.validators import strict_discrete_set, strict_range

from .errors import LockInError, LockInOverload, ReferenceUnlocked

__all__ = [
    "LockIn",
    "LIAStatus",
    "RTheta",
    "XY",
    "LockInReading",
    "DetectorCalibration",
    "SquareLaw",
    "PowerLaw",
    "TableCalibration",
    "SETTLING_TIME_CONSTANTS",
    "settling_time_s",
]

# Time to settle to 99 % of the final value after a step, in time constants, per filter slope.
# SR830 manual, ch. 3 "SR830 Basics", output filter settling table (6 dB/oct: 5 τ, 12: 7 τ, 18: 9 τ,
# 24: 10 τ). Check: the 99 % step-response times of 1–4 cascaded one-pole filters are 4.6, 6.6, 8.4 and
# 10.05 τ, so the table rounds up except at 24 dB/oct, where 10 τ reaches 98.97 %.
SETTLING_TIME_CONSTANTS = {6: 5.0, 12: 7.0, 18: 9.0, 24: 10.0}

OVERLOAD_FLAGS = LIAStatus.INPUT_OVERLOAD | LIAStatus.FILTER_OVERLOAD | LIAStatus.OUTPUT_OVERLOAD


def settling_time_s(time_constant_s: float, filter_slope_db_per_oct: int) -> float:
    """Time for the output filter to settle to 99 % after a step (see SETTLING_TIME_CONSTANTS)."""
    try:
        n = SETTLING_TIME_CONSTANTS[int(filter_slope_db_per_oct)]
    except (KeyError, ValueError):
        raise ValueError(f"filter slope must be one of {sorted(SETTLING_TIME_CONSTANTS)} dB/oct "
                         f"(got {filter_slope_db_per_oct!r})") from None
    if not time_constant_s > 0:
        raise ValueError(f"time constant must be > 0 s (got {time_constant_s!r})")
    return n * float(time_constant_s)


class RTheta(NamedTuple):
    r_v: float        # magnitude, V rms
    theta_rad: float  # phase, rad (the SR830 reports degrees; converted)


class XY(NamedTuple):
    x_v: float  # in-phase, V rms
    y_v: float  # quadrature, V rms


class LockInReading(NamedTuple):
    r_v: float
    theta_rad: float
    power_w: float


# --- detector calibration ------------------------------------------------------------------------------
class DetectorCalibration(Protocol):
    """Maps the lock-in magnitude R (V rms) to linear optical power (W)."""

    def power_w(self, r_v: float) -> float: ...

    def snapshot(self) -> dict[str, Any]: ...


def _require_non_negative(r_v: float) -> float:
    r_v = float(r_v)
    if not r_v >= 0:  # also rejects NaN
        raise ValueError(f"lock-in magnitude R must be >= 0 V (got {r_v!r})")
    return r_v


@dataclass(frozen=True)
class SquareLaw:
    """Square-law detector: output voltage ∝ field² ∝ power, ``power_w = R / responsivity_v_per_w``.

    The responsivity includes everything between the beam and R (detector, preamplifier, and the
    lock-in's fundamental-of-a-square-wave factor). The default 1 V/W gives power in "volt units",
    enough for relative intensities.
    """

    responsivity_v_per_w: float = 1.0

    def __post_init__(self):
        if not self.responsivity_v_per_w > 0:
            raise ValueError(f"responsivity_v_per_w must be > 0 (got {self.responsivity_v_per_w!r})")

    def power_w(self, r_v: float) -> float:
        return _require_non_negative(r_v) / self.responsivity_v_per_w

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "square_law", "responsivity_v_per_w": self.responsivity_v_per_w}


@dataclass(frozen=True)
class PowerLaw:
    """Power-law detector: ``R = responsivity_v_per_w * (P / 1 W) ** exponent``, inverted for P.

    ``exponent = 1`` is the square law; a detector leaving its square-law regime has exponent < 1.
    """

    responsivity_v_per_w: float
    exponent: float

    def __post_init__(self):
        if not self.responsivity_v_per_w > 0 or not self.exponent > 0:
            raise ValueError("PowerLaw needs responsivity_v_per_w > 0 and exponent > 0 "
                             f"(got {self.responsivity_v_per_w!r}, {self.exponent!r})")

    def power_w(self, r_v: float) -> float:
        return (_require_non_negative(r_v) / self.responsivity_v_per_w) ** (1.0 / self.exponent)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "power_law", "responsivity_v_per_w": self.responsivity_v_per_w,
                "exponent": self.exponent}


class TableCalibration:
    """Measured table R (V) → P (W), linearly interpolated (``numpy.interp``).

    Readings outside the table raise ``ValueError`` instead of being clamped to its ends: a clamp would
    report a wrong power without a word. Include a (0 V, 0 W) point to cover the noise floor.
    """

    def __init__(self, r_v: Sequence[float], power_w: Sequence[float]):
        self.r_v = np.asarray(r_v, dtype=float)
        self.power_w_table = np.asarray(power_w, dtype=float)
        if self.r_v.ndim != 1 or self.r_v.shape != self.power_w_table.shape or self.r_v.size < 2:
            raise ValueError("TableCalibration needs two 1-D sequences of the same length >= 2 "
                             f"(got shapes {self.r_v.shape} and {self.power_w_table.shape})")
        if not (np.all(np.diff(self.r_v) > 0) and np.all(np.diff(self.power_w_table) >= 0)):
            raise ValueError("TableCalibration: r_v must be strictly increasing and power_w "
                             "non-decreasing (a detector response is monotonic)")

    def power_w(self, r_v: float) -> float:
        r_v = _require_non_negative(r_v)
        if not self.r_v[0] <= r_v <= self.r_v[-1]:
            raise ValueError(f"R = {r_v:g} V is outside the detector calibration table "
                             f"[{self.r_v[0]:g}, {self.r_v[-1]:g}] V; extend the table")
        return float(np.interp(r_v, self.r_v, self.power_w_table))

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "table", "r_v": self.r_v.tolist(), "power_w": self.power_w_table.tolist()}


# --- the instrument ------------------------------------------------------------------------------------
class LockIn(SR830):
    """SR830-class lock-in amplifier for raster scans.

    :param adapter: VISA resource string or pymeasure adapter (``**kwargs`` go to the VISAAdapter).
    :param calibration: detector calibration R → power; default :class:`SquareLaw` (1 V/W).
    """

    # pymeasure's versions round unknown values to the next level silently; ours refuse them.
    sensitivity = Instrument.control(
        "SENS?", "SENS%d",
        """Control the full-scale sensitivity in V (strict: one of SR830.SENSITIVITIES).""",
        validator=strict_discrete_set,
        values=SR830.SENSITIVITIES,
        map_values=True,
    )
    sensitivity_index = Instrument.control(
        "SENS?", "SENS%d",
        """Control the sensitivity as its index i in SR830.SENSITIVITIES (0 = 2 nV ... 26 = 1 V).""",
        validator=strict_range,
        values=[0, len(SR830.SENSITIVITIES) - 1],
        cast=int,
    )
    time_constant = Instrument.control(
        "OFLT?", "OFLT%d",
        """Control the time constant in s (strict: one of SR830.TIME_CONSTANTS).""",
        validator=strict_discrete_set,
        values=SR830.TIME_CONSTANTS,
        map_values=True,
    )
    filter_slope = Instrument.control(
        "OFSL?", "OFSL%d",
        """Control the filter slope in dB/oct (strict: 6, 12, 18 or 24).""",
        validator=strict_discrete_set,
        values=SR830.FILTER_SLOPES,
        map_values=True,
    )
    output_interface = Instrument.control(
        "OUTX?", "OUTX%d",
        """Control which interface receives replies: 'RS232' or 'GPIB' (the SR830 answers only on
        the selected one; send this first when talking over RS-232).""",
        validator=strict_discrete_set,
        values={"RS232": 0, "GPIB": 1},
        map_values=True,
    )

    def __init__(self, adapter, name: str = "SR830 lock-in amplifier",
                 calibration: DetectorCalibration | None = None, **kwargs):
        super().__init__(adapter, name, **kwargs)
        self.calibration: DetectorCalibration = calibration if calibration is not None else SquareLaw()

    # --- settling ---------------------------------------------------------------------------------------
    def settle_time_s(self) -> float:
        """99 % settling time of the output filter (``OFLT?``, ``OFSL?``)."""
        return settling_time_s(self.time_constant, self.filter_slope)

    def wait_settled(self, sleep: Callable[[float], Any] = time.sleep) -> float:
        """Clear the latched status (``*CLS``), then wait one settling time; return it in s.

        Call it after anything that changes the signal (a stage move, a range change). Clearing first
        means a status flag seen by :meth:`read_checked` happened during the settling window or the
        reading, not during the move that preceded it. ``sleep`` is injected because the virtual bench
        scales time.
        """
        self.write("*CLS")
        wait_s = self.settle_time_s()
        sleep(wait_s)
        return wait_s

    # --- readings ---------------------------------------------------------------------------------------
    def read_r_theta(self) -> RTheta:
        """R (V rms) and θ (rad) from one instant: ``SNAP? 3,4``."""
        r_v, theta_deg = self._snap("R", "THETA")
        return RTheta(r_v, math.radians(theta_deg))

    def read_xy(self) -> XY:
        """X and Y (V rms) from one instant: ``SNAP? 1,2``."""
        return XY(*self._snap("X", "Y"))

    def _snap(self, first: str, second: str) -> tuple[float, float]:
        values = self.snap(first, second)
        if len(values) != 2 or not all(isinstance(v, float) for v in values):
            raise LockInError(f"{self.name}: garbled reply to 'SNAP?': {values!r} (expected two numbers)")
        return values[0], values[1]

    def status(self) -> LIAStatus:
        """The LIA status byte (``LIAS?``) as an IntFlag. Reading it clears its latched bits."""
        return self.lia_status

    def check_status(self, flags: LIAStatus) -> None:
        """Raise :class:`ReferenceUnlocked` / :class:`LockInOverload` if ``flags`` say so."""
        if flags & LIAStatus.REF_UNLOCK:
            raise ReferenceUnlocked(
                f"{self.name}: reference unlocked (LIAS? = {int(flags)}): the reading is not valid. "
                "Check that the source's modulation is on and the reference cable is connected.")
        if flags & OVERLOAD_FLAGS:
            raise LockInOverload(
                f"{self.name}: overload {(flags & OVERLOAD_FLAGS)!r} (LIAS? = {int(flags)}): the "
                "reading is not valid. Use a less sensitive range (auto_range()) or, for a filter "
                "overload, a lower dynamic reserve / longer time constant.")

    def read_checked(self) -> LockInReading:
        """R, θ and power from one ``SNAP? 3,4``, validated by the ``LIAS?`` that follows it.

        The SR830's status bits are latched until read, so reading the status *after* the snapshot
        covers the whole interval up to and including the reading (checking before would miss an
        overload that begins between the check and the reading).
        """
        reading = self.read_r_theta()
        self.check_status(self.status())
        return LockInReading(reading.r_v, reading.theta_rad, self.calibration.power_w(reading.r_v))

    def read_power_w(self) -> float:
        """Linear optical power (W) through the detector calibration; raises on overload/unlock."""
        return self.read_checked().power_w

    # --- ranging ----------------------------------------------------------------------------------------
    def auto_range(self, low_fraction: float = 0.1, high_fraction: float = 0.9,
                   sleep: Callable[[float], Any] = time.sleep) -> float:
        """Choose the sensitivity so that R is within [low, high] × full scale; return it in V.

        Steps one range up (less sensitive) while overloaded or above ``high_fraction``; when below
        ``low_fraction`` jumps straight to the most sensitive range whose full scale still has R below
        ``high_fraction`` (with the 1-2-5 table and a 10–90 % band this never overshoots). Waits one
        settling time after each change. Does not use the instrument's own AGAN: the manual says it
        "may take a great deal of time if the time constant is long" and does nothing at all for
        time constants above 1 s, and its end must be polled through the serial-poll byte — its
        duration and result are not predictable, ours are.
        """
        if not 0 < low_fraction < high_fraction <= 1:
            raise ValueError(f"need 0 < low_fraction < high_fraction <= 1 "
                             f"(got {low_fraction!r}, {high_fraction!r})")
        table = self.SENSITIVITIES
        index = self.sensitivity_index
        for _ in range(2 * len(table)):
            r_v = self.read_r_theta().r_v
            flags = self.status()
            if flags & LIAStatus.REF_UNLOCK:
                self.check_status(flags)
            full_scale_v = table[index]
            if flags & OVERLOAD_FLAGS or r_v > high_fraction * full_scale_v:
                if index == len(table) - 1:
                    raise LockInOverload(
                        f"{self.name}: signal still over range at the least sensitive range "
                        f"({table[-1]:g} V; R = {r_v:g} V, LIAS? = {int(flags)}); attenuate the signal")
                new_index = index + 1
            elif r_v < low_fraction * full_scale_v and index > 0:
                new_index = min(bisect.bisect_left(table, r_v / high_fraction), index - 1)
            else:
                return full_scale_v
            self.sensitivity_index = new_index
            index = new_index
            self.wait_settled(sleep)
        raise LockInError(f"{self.name}: auto_range did not converge (signal unstable?); "
                          f"last sensitivity {table[index]:g} V")

    # --- record -----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Identity and settings, for the run store (SI units)."""
        time_constant_s = self.time_constant
        filter_slope = self.filter_slope
        return {
            "driver": f"{__name__}.{type(self).__name__}",
            "idn": self.id,
            "sensitivity_v": self.sensitivity,
            "time_constant_s": time_constant_s,
            "filter_slope_db_per_oct": filter_slope,
            "settle_time_s": settling_time_s(time_constant_s, filter_slope),
            "reference_source": self.reference_source,
            "reference_frequency_hz": self.frequency,
            "phase_rad": math.radians(self.phase),
            "reserve": self.reserve,
            "input_config": self.input_config,
            "calibration": self.calibration.snapshot(),
        }
