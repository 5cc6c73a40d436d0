"""Emulated Agilent/Keysight E8257D PSG analog signal generator (SCPI over TCP).

Implements the subset of the PSG command set a measurement uses, plus every command the pymeasure
``Agilent8257D`` driver can send (frequency/power incl. sweep settings, output, modulation, AM,
pulse modulation, LF output, step sweep).  ``[:SOURce]`` is optional everywhere, as on the PSG.
Out-of-range values are refused with ``-222,"Data out of range"`` and leave the setting unchanged;
unknown headers give ``-113,"Undefined header"``.

Physics hook: ``state()`` returns a consistent ``SynthState`` snapshot; ``reference_frequency_hz()``
is a ready-made ``reference_fn`` for the lock-in (the modulation frequency while the synth modulates
with an internal source, None otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.virtual.faults import FaultConfig
from lab.virtual.scpi_server import (DATA_OUT_OF_RANGE, FREQUENCY_UNITS, PERCENT_UNITS, POWER_UNITS,
                                     TIME_UNITS, VOLTAGE_UNITS, LineServer, ScpiDevice, ScpiError,
                                     one_arg, parse_bool, parse_choice, parse_number)


@dataclass(frozen=True)
class SynthState:
    rf_on: bool
    frequency_hz: float
    power_dbm: float
    modulation_on: bool            # :OUTPut:MODulation master switch AND an enabled modulation
    modulation_kind: str | None    # "am", "pulse" or None
    modulation_frequency_hz: float | None   # internal modulation rate, None if none / external
    am_depth_percent: float
    am_shape: str                  # SINE, SQU, ...


@dataclass
class _Settings:
    rf_on: bool = False
    frequency_hz: float = 20e9
    power_dbm: float = -135.0
    frequency_mode: str = "CW"
    start_frequency_hz: float = 250e3
    stop_frequency_hz: float = 20e9
    center_frequency_hz: float = 10e9
    span_frequency_hz: float = 0.0
    start_power_dbm: float = -135.0
    stop_power_dbm: float = -135.0
    dwell_s: float = 2e-3
    sweep_points: int = 101
    sweep_generation: str = "STEP"
    sweep_mode: str = "AUTO"
    sweep_continuous: bool = False
    list_retrace: bool = True
    modulation_master: bool = True
    am_on: bool = False
    am_source: str = "INT"
    am_depth_percent: float = 0.1
    am_frequency_hz: float = 400.0
    am_shape: str = "SINE"
    am_type: str = "LIN"
    pulse_on: bool = False
    pulse_source: str = "INT"
    pulse_internal: str = "SQU"
    pulse_frequency_hz: float = 400.0
    pulse_period_s: float = 2e-3
    pulse_width_s: float = 1e-3
    lfo_on: bool = False
    lfo_source: str = "INT"
    lfo_amplitude_vp: float = 0.0


def _fmt(value: float) -> str:
    return f"{value:+.15E}"  # 16 significant digits: 1 mHz at 20 GHz, as the instrument resolves


def _bool(value: bool) -> str:
    return "1" if value else "0"


class Synth8257D(ScpiDevice):
    """Emulated E8257D.  Ranges default to option 520 (250 kHz - 20 GHz) and -135...+25 dBm."""

    options = "1E1,520,UNT"

    def __init__(self, *, min_frequency_hz: float = 250e3, max_frequency_hz: float = 20e9,
                 min_power_dbm: float = -135.0, max_power_dbm: float = 25.0,
                 serial: str = "VIRT000001"):
        super().__init__()
        self.min_frequency_hz, self.max_frequency_hz = min_frequency_hz, max_frequency_hz
        self.min_power_dbm, self.max_power_dbm = min_power_dbm, max_power_dbm
        self.idn = f"Agilent Technologies, E8257D, {serial}, C.06.28"
        self.settings = _Settings(frequency_hz=max_frequency_hz, stop_frequency_hz=max_frequency_hz)
        self._register_commands()

    # ---- physics hooks -----------------------------------------------------------------------------
    def state(self) -> SynthState:
        with self.lock:
            s = self.settings
            kind, rate = None, None
            if s.am_on:
                kind = "am"
                rate = s.am_frequency_hz if s.am_source.startswith("INT") else None
            elif s.pulse_on:
                kind = "pulse"
                rate = s.pulse_frequency_hz if s.pulse_source == "INT" else None
            return SynthState(rf_on=s.rf_on, frequency_hz=s.frequency_hz, power_dbm=s.power_dbm,
                              modulation_on=s.modulation_master and kind is not None,
                              modulation_kind=kind, modulation_frequency_hz=rate,
                              am_depth_percent=s.am_depth_percent, am_shape=s.am_shape)

    def reference_frequency_hz(self) -> float | None:
        """Lock-in reference (sync) frequency: the internal modulation rate while modulating."""
        st = self.state()
        return st.modulation_frequency_hz if st.modulation_on else None

    def reset(self) -> None:
        self.settings = _Settings(frequency_hz=self.max_frequency_hz, stop_frequency_hz=self.max_frequency_hz)

    # ---- command table -----------------------------------------------------------------------------
    def _register_commands(self) -> None:
        s = lambda: self.settings  # noqa: E731 - settings object is replaced by *RST
        add = self.add
        freq = lambda a: parse_number(one_arg(a), FREQUENCY_UNITS, self.min_frequency_hz,  # noqa: E731
                                      self.max_frequency_hz)
        power = lambda a: parse_number(one_arg(a), POWER_UNITS, self.min_power_dbm,  # noqa: E731
                                       self.max_power_dbm)

        def setting(pattern, attr, parse, fmt):
            add(pattern, lambda a: setattr(s(), attr, parse(a)), lambda a: fmt(getattr(s(), attr)))

        # frequency
        setting("[:SOURce]:FREQuency[:CW|:FIXed]", "frequency_hz", freq, _fmt)
        setting("[:SOURce]:FREQuency:STARt", "start_frequency_hz", freq, _fmt)
        setting("[:SOURce]:FREQuency:STOP", "stop_frequency_hz", freq, _fmt)
        setting("[:SOURce]:FREQuency:CENTer", "center_frequency_hz", freq, _fmt)
        setting("[:SOURce]:FREQuency:SPAN", "span_frequency_hz",
                lambda a: parse_number(one_arg(a), FREQUENCY_UNITS, 0.0, self.max_frequency_hz), _fmt)
        setting("[:SOURce]:FREQuency:MODE", "frequency_mode",
                lambda a: parse_choice(one_arg(a), ["CW", "FIXed", "SWEep", "LIST"]), str)
        # power
        setting("[:SOURce]:POWer[:LEVel][:IMMediate][:AMPLitude]", "power_dbm", power, _fmt)
        setting("[:SOURce]:POWer:STARt", "start_power_dbm", power, _fmt)
        setting("[:SOURce]:POWer:STOP", "stop_power_dbm", power, _fmt)
        # sweep / list
        setting("[:SOURce]:SWEep:DWELl", "dwell_s",
                lambda a: parse_number(one_arg(a), TIME_UNITS, 1e-3, 60.0), _fmt)
        setting("[:SOURce]:SWEep:POINts", "sweep_points",
                lambda a: int(parse_number(one_arg(a), minimum=2, maximum=65535)), str)
        setting("[:SOURce]:SWEep:GENeration", "sweep_generation",
                lambda a: parse_choice(one_arg(a), ["ANALog", "STEP"]), str)
        setting("[:SOURce]:SWEep:MODE", "sweep_mode",
                lambda a: parse_choice(one_arg(a), ["AUTO", "MANual"]), str)
        setting("[:SOURce]:SWEep:CONTinuous[:STATe]", "sweep_continuous",
                lambda a: parse_bool(one_arg(a)), _bool)
        setting("[:SOURce]:LIST:RETRace", "list_retrace", lambda a: parse_bool(one_arg(a)), _bool)
        add("[:SOURce]:TSWeep", lambda a: self._no_args(a))
        add(":INITiate[:IMMediate]", lambda a: self._no_args(a))
        setting(":INITiate:CONTinuous[:ALL]", "sweep_continuous", lambda a: parse_bool(one_arg(a)), _bool)
        # output
        setting(":OUTPut[:STATe]", "rf_on", lambda a: parse_bool(one_arg(a)), _bool)
        setting(":OUTPut:MODulation[:STATe]", "modulation_master", lambda a: parse_bool(one_arg(a)), _bool)
        # amplitude modulation (AM path 1)
        setting("[:SOURce]:AM[:STATe]", "am_on", lambda a: parse_bool(one_arg(a)), _bool)
        setting("[:SOURce]:AM:SOURce", "am_source",
                lambda a: parse_choice(one_arg(a), ["INTernal", "INTernal1", "INTernal2", "EXTernal",
                                                    "EXTernal1", "EXTernal2"]), str)
        setting("[:SOURce]:AM[:DEPTh][:LINear]", "am_depth_percent",
                lambda a: parse_number(one_arg(a), PERCENT_UNITS, 0.0, 100.0), _fmt)
        setting("[:SOURce]:AM:TYPE", "am_type", lambda a: parse_choice(one_arg(a), ["LINear", "EXPonential"]), str)
        setting("[:SOURce]:AM:INTernal[:FUNCtion]:FREQuency", "am_frequency_hz",
                lambda a: parse_number(one_arg(a), FREQUENCY_UNITS, 0.5, 1e6), _fmt)
        shapes = ["SINE", "TRIangle", "SQUare", "RAMP", "NOISe", "DUALsine", "SWEPtsine"]
        setting("[:SOURce]:AM:INTernal[:FUNCtion]:SHAPe", "am_shape",
                lambda a: parse_choice(one_arg(a), shapes), str)
        # pulse modulation
        setting("[:SOURce]:PULM[:STATe]", "pulse_on", lambda a: parse_bool(one_arg(a)), _bool)
        setting("[:SOURce]:PULM:SOURce", "pulse_source",
                lambda a: parse_choice(one_arg(a), ["INTernal", "EXTernal", "SCALar"]), str)
        setting("[:SOURce]:PULM:SOURce:INTernal", "pulse_internal",
                lambda a: parse_choice(one_arg(a), ["SQUare", "FRUN", "TRIGgered", "DOUBlet", "GATEd"]), str)
        setting("[:SOURce]:PULM:INTernal[:FUNCtion]:FREQuency", "pulse_frequency_hz",
                lambda a: parse_number(one_arg(a), FREQUENCY_UNITS, 0.1, 10e6), _fmt)
        setting("[:SOURce]:PULM:INTernal[:FUNCtion]:SHAPe", "pulse_internal",
                lambda a: parse_choice(one_arg(a), ["SQUare", "FRUN", "TRIGgered", "DOUBlet", "GATEd"]), str)
        setting("[:SOURce]:PULM:INTernal:PERiod", "pulse_period_s",
                lambda a: parse_number(one_arg(a), TIME_UNITS, 70e-9, 42.0), _fmt)
        setting("[:SOURce]:PULM:INTernal:PWIDth", "pulse_width_s",
                lambda a: parse_number(one_arg(a), TIME_UNITS, 10e-9, 42.0), _fmt)
        # low-frequency output
        setting("[:SOURce]:LFOutput:STATe", "lfo_on", lambda a: parse_bool(one_arg(a)), _bool)
        setting("[:SOURce]:LFOutput:SOURce", "lfo_source",
                lambda a: parse_choice(one_arg(a), ["INTernal", "INTernal1", "INTernal2", "FUNCtion",
                                                    "FUNCtion1", "FUNCtion2"]), str)
        setting("[:SOURce]:LFOutput:AMPLitude", "lfo_amplitude_vp",
                lambda a: parse_number(one_arg(a), VOLTAGE_UNITS, 0.0, 3.5), _fmt)

    @staticmethod
    def _no_args(args: list[str]) -> None:
        if args:
            raise ScpiError(-108, "Parameter not allowed")


class SynthServer(LineServer):
    """``Synth8257D`` served on 127.0.0.1.  ``.synth`` is the device, ``.resource`` its VISA string."""

    def __init__(self, port: int = 0, faults: FaultConfig | None = None, **synth_kwargs):
        self.synth = Synth8257D(**synth_kwargs)
        super().__init__(self.synth, port=port, faults=faults)

    def state(self) -> SynthState:
        return self.synth.state()


__all__ = ["Synth8257D", "SynthServer", "SynthState", "DATA_OUT_OF_RANGE"]
