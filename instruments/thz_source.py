"""THz source: an RF synthesizer (Keysight/Agilent E8257D class) driving a ×N multiplier chain.

Two classes, one job each:

* :class:`Keysight8257D` is pymeasure's ``Agilent8257D`` with what it lacks for us fixed, declared as
  properties: strict range validators (pymeasure's driver has none on frequency and power, and clips the
  modulation settings silently), full-resolution frequency text, and commands without pymeasure's trailing
  ``;``.
* :class:`THzSource` wraps a synthesizer and knows about the multiplier: it speaks in output frequency
  (``400 GHz`` → RF ``400 GHz / 36 = 11.111 GHz``) and guards the multiplier's safe RF input power range.

SCPI sent (Keysight E8257D/E8267D PSG SCPI command reference):

=====================================  ================================================
``output_frequency_hz = f``            ``:FREQ <f/N with 3 decimals> Hz``
``rf_power_dbm = p``                   ``:POW <p with 2 decimals> dBm``
``configure_modulation(1000)``         ``:SOUR:AM:STAT OFF``, ``:SOUR:PULM:SOUR INT``,
                                       ``:SOUR:PULM:SOUR:INT SQU``, ``:SOUR:PULM:INT:FREQ 1000``,
                                       ``:SOUR:PULM:STAT ON``, ``:OUTP:MOD ON``
``on()``                               ``:POW?`` (checked against the limits), ``:OUTP ON``
``off()`` / ``shutdown()``             ``:OUTP OFF``
=====================================  ================================================

RF power outside ``rf_power_limits_dbm`` is **refused** (``SourceLimitError``, a ``ValueError``), never
clamped: a silent clamp would hide an operator's mistake (a config asking for +15 dBm into a multiplier
rated for +12 dBm is a wrong config, not a request for +12 dBm), and refusing costs nothing.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from pymeasure.instruments import Instrument
from pymeasure.instruments.agilent.agilent8257D import Agilent8257D
from pymeasure.instruments.generic_types import SCPIMixin
from pymeasure.instruments.validators import strict_discrete_set, strict_range

from .errors import SourceLimitError

__all__ = ["Keysight8257D", "THzSource"]

log = logging.getLogger(__name__)


def _format_hz(value_hz: float) -> str:
    for unit, scale in (("THz", 1e12), ("GHz", 1e9), ("MHz", 1e6), ("kHz", 1e3)):
        if abs(value_hz) >= scale:
            return f"{value_hz / scale:.6g} {unit}"
    return f"{value_hz:.6g} Hz"


class Keysight8257D(Agilent8257D):
    """Keysight/Agilent E8257D PSG analog signal generator, with strict validators.

    Ranges (E8257D data sheet): frequency 250 kHz to 20 GHz for option 520 (the default here; options
    532/540/550/567/570 extend the top to 31.8/40/50/67/70 GHz — pass ``frequency_range_hz``); settable
    power −135 dBm (option 1E1 step attenuator) to +25 dBm. Frequency resolution is 0.001 Hz, power
    resolution 0.01 dB, and the commands are formatted to exactly that.
    """

    FREQUENCY_RANGE_HZ = (250e3, 20e9)
    POWER_RANGE_DBM = (-135.0, 25.0)
    PULSE_RATE_RANGE_HZ = (0.1, 10e6)  # internal square-wave pulse rate, option UNW/UNU

    # pymeasure formats frequency with "%e" (7 significant digits: 11.11111 GHz, a 1.1 kHz error at RF
    # and 40 kHz after ×36) and ends commands with ';'. Redeclared with the instrument's resolution.
    frequency = Instrument.control(
        ":FREQ?", ":FREQ %.3f Hz",
        """Control the CW output frequency in Hz (strict: 250 kHz to the option's maximum).""",
        validator=strict_range,
        values=FREQUENCY_RANGE_HZ,
        dynamic=True,
    )
    power = Instrument.control(
        ":POW?", ":POW %.2f dBm",
        """Control the RF output power in dBm (strict: -135 dBm to +25 dBm).""",
        validator=strict_range,
        values=POWER_RANGE_DBM,
        dynamic=True,
    )
    # pymeasure's pulse_frequency silently clips to [0.1 Hz, 10 MHz]; same command, strict validator.
    pulse_frequency = Instrument.control(
        ":SOUR:PULM:INT:FREQ?", ":SOUR:PULM:INT:FREQ %g",
        """Control the internal square-wave pulse rate in Hz (strict: 0.1 Hz to 10 MHz).""",
        validator=strict_range,
        values=PULSE_RATE_RANGE_HZ,
    )
    pulse_source = Instrument.control(
        ":SOUR:PULM:SOUR?", ":SOUR:PULM:SOUR %s",
        """Control the pulse modulation source: 'internal', 'external' or 'scalar'.""",
        validator=strict_discrete_set,
        values=Agilent8257D.PULSE_SOURCES,
        map_values=True,
    )

    def __init__(self, adapter, name: str = "Keysight E8257D signal generator",
                 frequency_range_hz: Sequence[float] = FREQUENCY_RANGE_HZ, **kwargs):
        # The 8257D is programmed in SCPI, so use SCPIMixin directly and skip the FutureWarning that
        # pymeasure's SCPIUnknownMixin emits for drivers whose SCPI support it does not know.
        SCPIMixin.__init__(self, adapter, name, **kwargs)
        low_hz, high_hz = (float(v) for v in frequency_range_hz)
        if not 0 < low_hz < high_hz:
            raise ValueError(f"{name}: frequency_range_hz must be (min, max) with 0 < min < max "
                             f"(got {tuple(frequency_range_hz)})")
        self.frequency_range_hz = (low_hz, high_hz)
        self.frequency_values = (low_hz, high_hz)  # the `frequency` validator's range (write-only)

    def enable(self) -> None:
        """Switch the RF output on: ``:OUTP ON``."""
        self.write(":OUTP ON")

    def disable(self) -> None:
        """Switch the RF output off: ``:OUTP OFF``."""
        self.write(":OUTP OFF")

    def enable_modulation(self) -> None:
        """Switch the modulation master state on: ``:OUTP:MOD ON``.

        (pymeasure's version also turns on the LF output, which we do not use.)
        """
        self.write(":OUTP:MOD ON")

    def disable_modulation(self) -> None:
        """Switch the modulation master state off: ``:OUTP:MOD OFF``."""
        self.write(":OUTP:MOD OFF")

    def shutdown(self) -> None:
        """Leave the RF output off (modulation settings are kept)."""
        self.disable()
        Instrument.shutdown(self)


class THzSource:
    """RF synthesizer × frequency multiplier: the bench's 0.4 THz source.

    :param adapter: a VISA resource string (e.g. ``"TCPIP::127.0.0.1::5025::SOCKET"``) or a pymeasure
        adapter; ``**kwargs`` go to pymeasure's VISAAdapter (``read_termination`` etc.).
    :param multiplier: the chain's multiplication factor N (output = N × RF).
    :param rf_power_limits_dbm: (min, max) safe RF input power of the multiplier chain. Requests outside
        are refused before anything is sent, and ``on()`` refuses to switch on if the synthesizer holds a
        power outside it.
    :param rf_frequency_range_hz: the synthesizer option's frequency range (default: option 520).
    """

    def __init__(self, adapter, multiplier: int = 36,
                 rf_power_limits_dbm: Sequence[float] = (0.0, 12.0),
                 rf_frequency_range_hz: Sequence[float] = Keysight8257D.FREQUENCY_RANGE_HZ,
                 name: str = "THz source", **kwargs):
        if isinstance(multiplier, bool) or int(multiplier) != multiplier or multiplier < 1:
            raise ValueError(f"{name}: multiplier must be a positive integer (got {multiplier!r})")
        low_dbm, high_dbm = (float(v) for v in rf_power_limits_dbm)
        synth_low, synth_high = Keysight8257D.POWER_RANGE_DBM
        if not (synth_low <= low_dbm < high_dbm <= synth_high):
            raise ValueError(
                f"{name}: rf_power_limits_dbm must be (min, max) with min < max inside the "
                f"synthesizer's range [{synth_low:g}, {synth_high:g}] dBm (got {tuple(rf_power_limits_dbm)})")
        self.name = name
        self.multiplier = int(multiplier)
        self.rf_power_limits_dbm = (low_dbm, high_dbm)
        self.synthesizer = Keysight8257D(adapter, frequency_range_hz=rf_frequency_range_hz, **kwargs)

    # --- frequency --------------------------------------------------------------------------------------
    @property
    def rf_frequency_range_hz(self) -> tuple[float, float]:
        return self.synthesizer.frequency_range_hz

    @property
    def output_frequency_hz(self) -> float:
        """Output frequency in Hz: ``:FREQ?`` × multiplier."""
        return self.synthesizer.frequency * self.multiplier

    @output_frequency_hz.setter
    def output_frequency_hz(self, frequency_hz: float) -> None:
        rf_hz = float(frequency_hz) / self.multiplier
        low_hz, high_hz = self.rf_frequency_range_hz
        if not low_hz <= rf_hz <= high_hz:
            raise SourceLimitError(
                f"{self.name}: output frequency {_format_hz(frequency_hz)} needs RF "
                f"{_format_hz(rf_hz)} (= f / {self.multiplier}), outside the synthesizer's range "
                f"{_format_hz(low_hz)} to {_format_hz(high_hz)}; choose an output frequency between "
                f"{_format_hz(low_hz * self.multiplier)} and {_format_hz(high_hz * self.multiplier)} "
                f"or check `multiplier`.")
        self.synthesizer.frequency = rf_hz

    # --- power ------------------------------------------------------------------------------------------
    @property
    def rf_power_dbm(self) -> float:
        """RF power into the multiplier in dBm: ``:POW?``."""
        return self.synthesizer.power

    @rf_power_dbm.setter
    def rf_power_dbm(self, power_dbm: float) -> None:
        self._check_rf_power(float(power_dbm), action="set RF power to")
        self.synthesizer.power = float(power_dbm)

    def _check_rf_power(self, power_dbm: float, action: str) -> None:
        low_dbm, high_dbm = self.rf_power_limits_dbm
        if not low_dbm <= power_dbm <= high_dbm:
            raise SourceLimitError(
                f"{self.name}: refusing to {action} {power_dbm:g} dBm: outside the multiplier's safe RF "
                f"input range [{low_dbm:g}, {high_dbm:g}] dBm (rf_power_limits_dbm); request a power "
                f"inside it, or change the limits if the multiplier's datasheet allows.")

    # --- modulation -------------------------------------------------------------------------------------
    def configure_modulation(self, frequency_hz: float = 1000.0) -> None:
        """Square-wave on/off modulation at ``frequency_hz`` for the lock-in.

        Uses the 8257D's *pulse* modulation with its internal square-wave source rather than AM with a
        square shape: the multiplier chain is driven into saturation, so AM at its input does not give a
        clean 100 % square wave at its output (at low drive a ×36 chain's output is very nonlinear, and
        the ALC/AM depth limits the "off" level), while pulse modulation switches the RF fully on/off
        (> 80 dB) and the chain sees full drive whenever it is on. AM is switched off first so the two
        never stack.
        """
        low_hz, high_hz = Keysight8257D.PULSE_RATE_RANGE_HZ
        if not low_hz <= float(frequency_hz) <= high_hz:
            raise SourceLimitError(
                f"{self.name}: modulation frequency {frequency_hz!r} Hz is outside the 8257D's internal "
                f"square-wave range [{low_hz:g}, {high_hz:g}] Hz")
        synth = self.synthesizer
        synth.disable_amplitude_modulation()        # :SOUR:AM:STAT OFF
        synth.pulse_source = "internal"             # :SOUR:PULM:SOUR INT
        synth.pulse_input = "square"                # :SOUR:PULM:SOUR:INT SQU
        synth.pulse_frequency = float(frequency_hz)  # :SOUR:PULM:INT:FREQ 1000
        synth.enable_pulse_modulation()             # :SOUR:PULM:STAT ON
        synth.enable_modulation()                   # :OUTP:MOD ON

    def disable_modulation(self) -> None:
        """``:SOUR:PULM:STAT OFF`` then ``:OUTP:MOD OFF``."""
        self.synthesizer.disable_pulse_modulation()
        self.synthesizer.disable_modulation()

    # --- output -----------------------------------------------------------------------------------------
    @property
    def is_on(self) -> bool:
        """RF output state: ``:OUTPUT?``."""
        return bool(self.synthesizer.is_enabled)

    def on(self) -> None:
        """Switch the RF on, after checking (``:POW?``) that the set power is within the safe limits."""
        self._check_rf_power(float(self.synthesizer.power), action="switch on with an RF power of")
        self.synthesizer.enable()

    def off(self) -> None:
        """Switch the RF off (``:OUTP OFF``). Never raises: a dead connection is logged, not raised."""
        try:
            self.synthesizer.disable()
        except Exception:  # noqa: BLE001 - off() is the safety path; it must not raise
            log.exception("%s: could not send ':OUTP OFF' (connection lost?); check the RF output "
                          "by hand", self.name)

    def shutdown(self) -> None:
        """Leave the source safe: RF off (never raises)."""
        self.off()
        self.synthesizer.isShutdown = True

    def close(self) -> None:
        """Close the connection (does not switch the output off; call :meth:`shutdown` first)."""
        try:
            self.synthesizer.adapter.close()
        except Exception:  # noqa: BLE001
            log.exception("%s: error while closing the connection", self.name)

    def snapshot(self) -> dict[str, Any]:
        """Identity and settings, for the run store (SI units; power in dBm as named)."""
        synth = self.synthesizer
        idn = synth.id
        rf_hz = float(synth.frequency)
        return {
            "driver": f"{__name__}.{type(self).__name__}",
            "idn": idn,
            "multiplier": self.multiplier,
            "rf_power_limits_dbm": list(self.rf_power_limits_dbm),
            "rf_frequency_hz": rf_hz,
            "output_frequency_hz": rf_hz * self.multiplier,
            "rf_power_dbm": float(synth.power),
            "output_on": bool(synth.is_enabled),
            "modulation_on": bool(synth.has_modulation),
            "pulse_modulation_on": bool(synth.has_pulse_modulation),
            "pulse_rate_hz": float(synth.pulse_frequency),
        }
