"""Emulated Stanford Research SR830 DSP lock-in amplifier (its command set, over TCP lines).

Commands follow the SR830 manual: a 4-character mnemonic (case-insensitive), ``?`` for queries,
parameters separated by commas, several commands per line separated by ``;``; every query answers
one ``\\n``-terminated line.  An unknown command sets the command-error bit (5) of ``*ESR?``; a
parameter out of range sets the execution-error bit (4) and leaves the setting unchanged.

Measurement model (all times are *emulated*, from the shared ``Clock``):

- ``signal_fn() -> complex | float``: the true input signal at this instant (V rms, phase relative to
  the reference).  ``reference_fn() -> float | None``: the external reference frequency (Hz), None
  when there is none (then LIAS bit 3 "reference unlock" is set and the output decays to 0).
- The output is the input passed through ``n`` cascaded first-order low-pass stages with the time
  constant ``OFLT`` (n = 1, 2, 3, 4 for 6/12/18/24 dB/oct).  Between events the input is held
  constant and the filter is advanced with the exact solution, so any ``time_scale`` works (0 =
  always settled).  The input is re-sampled on every query and whenever the orchestrator calls
  ``input_changed()`` — call it at the moment the input steps (stage arrived, RF switched) so the
  step time is exact; without the call, a change is picked up at the next query.
- Gaussian noise of ``noise_v_per_rthz * sqrt(ENBW)`` is added to X and Y of each reading (seeded).
- Overload: |input| above the sensitivity full scale (or the ``overload`` fault) sets LIAS bit 0;
  an output above full scale sets bit 2; X, Y, R saturate at full scale.  LIAS bits latch until read.
"""

from __future__ import annotations

import cmath
import math
import threading
from typing import Callable

import numpy as np

from lab.virtual.clock import Clock
from lab.virtual.faults import FaultConfig
from lab.virtual.scpi_server import LineDevice, LineServer

SENSITIVITIES_V = [2e-9, 5e-9, 10e-9, 20e-9, 50e-9, 100e-9, 200e-9, 500e-9, 1e-6, 2e-6, 5e-6, 10e-6,
                   20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3,
                   200e-3, 500e-3, 1.0]
TIME_CONSTANTS_S = [10e-6, 30e-6, 100e-6, 300e-6, 1e-3, 3e-3, 10e-3, 30e-3, 100e-3, 300e-3, 1.0, 3.0,
                    10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 10e3, 30e3]
FILTER_STAGES = [1, 2, 3, 4]                      # OFSL 0..3 = 6, 12, 18, 24 dB/oct
ENBW_TIMES_TAU = [1 / 4, 1 / 8, 3 / 32, 5 / 64]   # equivalent noise bandwidth x tau, per slope

# LIA status bits (LIAS?)
LIA_INPUT_OVERLOAD, LIA_FILTER_OVERLOAD, LIA_OUTPUT_OVERLOAD, LIA_REFERENCE_UNLOCK = 1, 2, 4, 8
LIA_RANGE_CHANGE, LIA_TC_CHANGE, LIA_TRIGGER = 16, 32, 64
# standard event status bits (*ESR?)
ESR_INPUT_QUEUE_OVERFLOW, ESR_OUTPUT_QUEUE_OVERFLOW, ESR_EXECUTION_ERROR, ESR_COMMAND_ERROR = 1, 4, 16, 32
ESR_USER_REQUEST, ESR_POWER_ON = 64, 128

MIN_REF_HZ, MAX_REF_HZ = 1e-3, 102e3


class CommandError(Exception):
    """Illegal command (unknown mnemonic, wrong syntax, wrong parameter count)."""


class ExecutionError(Exception):
    """Parameter out of range."""


def _default_settings() -> dict:
    return {"PHAS": 0.0, "FMOD": 1, "FREQ": 1000.0, "RSLP": 0, "HARM": 1, "SLVL": 1.0, "ISRC": 0,
            "IGND": 0, "ICPL": 0, "ILIN": 0, "SENS": 26, "RMOD": 1, "OFLT": 10, "OFSL": 1, "SYNC": 0,
            "DDEF1": (0, 0), "DDEF2": (0, 0), "FPOP1": 1, "FPOP2": 1, "OEXP1": (0.0, 0),
            "OEXP2": (0.0, 0), "OEXP3": (0.0, 0), "AUXV": [0.0, 0.0, 0.0, 0.0], "OUTX": 1,
            "OVRM": 1, "LOCL": 0, "ALRM": 1, "SRAT": 4, "SEND": 1, "TSTR": 0, "FAST": 0}


# integer settings: mnemonic -> inclusive range
_INT_SETTINGS = {"FMOD": (0, 1), "RSLP": (0, 2), "ISRC": (0, 3), "IGND": (0, 1), "ICPL": (0, 1),
                 "ILIN": (0, 3), "SENS": (0, 26), "RMOD": (0, 2), "OFLT": (0, 19), "OFSL": (0, 3),
                 "SYNC": (0, 1), "OUTX": (0, 1), "OVRM": (0, 1), "LOCL": (0, 2), "ALRM": (0, 1),
                 "SRAT": (0, 14), "SEND": (0, 1), "TSTR": (0, 1), "FAST": (0, 2)}


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"not a number: {text!r}") from None


def _int(text: str, lo: int, hi: int) -> int:
    value = _num(text)
    if value != int(value):
        raise ExecutionError(text)
    value = int(value)
    if not lo <= value <= hi:
        raise ExecutionError(text)
    return value


def _fmt(value: float) -> str:
    return f"{value:.6g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.6e}"


class SR830(LineDevice):
    """Emulated SR830.  ``signal_fn``/``reference_fn`` connect it to the bench physics."""

    def __init__(self, signal_fn: Callable[[], complex | float], reference_fn: Callable[[], float | None],
                 clock: Clock, *, noise_v_per_rthz: float = 0.0, seed: int | None = 0,
                 faults: FaultConfig | None = None, serial: str = "s/n00000"):
        self.signal_fn = signal_fn
        self.reference_fn = reference_fn
        self.clock = clock
        self.noise_v_per_rthz = float(noise_v_per_rthz)
        self.faults = faults or FaultConfig()
        self.idn = f"Stanford_Research_Systems,SR830,{serial},ver1.07"
        self.lock = threading.RLock()
        self._rng = np.random.default_rng(seed)
        self.settings = _default_settings()
        self.esr = ESR_POWER_ON
        self.ese = self.sre = self.liae = self.erre = 0
        self.lias = 0
        self.errs = 0
        self.command_log: list[str] = []         # unknown/illegal commands, for tests
        self._stages: list[complex] = [0j] * 4   # filter states (complex X + iY), all 4 kept
        self._input = 0j
        self._t_last = clock.now_s()
        self._data_start_s: float | None = None
        self._sample()

    # ---- physics -----------------------------------------------------------------------------------
    @property
    def time_constant_s(self) -> float:
        return TIME_CONSTANTS_S[self.settings["OFLT"]]

    @property
    def sensitivity_v(self) -> float:
        return SENSITIVITIES_V[self.settings["SENS"]]

    @property
    def filter_stages(self) -> int:
        return FILTER_STAGES[self.settings["OFSL"]]

    def reference_frequency_hz(self) -> float | None:
        """Frequency the lock-in is locked to (None when unlocked)."""
        if self.settings["FMOD"] == 1:
            return self.settings["FREQ"]
        ref = self.reference_fn()
        if ref is None or not (MIN_REF_HZ <= ref <= MAX_REF_HZ):
            return None
        return float(ref)

    def _detected_input(self) -> complex:
        """The input as seen after demodulation: in phase with the reference, rotated by PHAS."""
        ref = self.reference_fn()
        locked_ref = self.reference_frequency_hz()
        if locked_ref is None or ref is None:
            return 0j           # unlocked, or nothing synchronous to detect
        if self.settings["FMOD"] == 1 and abs(ref - locked_ref) > 1e-6 * locked_ref:
            return 0j           # internal reference at another frequency: averages out
        if self.settings["HARM"] != 1:
            return 0j           # the modelled signal has no harmonic content
        return complex(self.signal_fn()) * cmath.exp(-1j * math.radians(self.settings["PHAS"]))

    def _advance(self) -> None:
        """Advance the filter from the last event to now with the input held constant."""
        now = self.clock.now_s()
        dt = self.clock.elapsed_since(self._t_last)
        self._t_last = now
        u = self._input
        if math.isinf(dt):
            self._stages = [u] * 4
            return
        if dt <= 0:
            return
        x = dt / self.time_constant_s
        decay = math.exp(-x)
        errors = [s - u for s in self._stages]
        new = []
        for k in range(4):
            total = 0j
            term = 1.0
            for j in range(k, -1, -1):      # e_k(t) = e^-x * sum_j e_j(0) x^(k-j)/(k-j)!
                total += errors[j] * term
                term *= x / (k - j + 1)
            new.append(u + decay * total)
        self._stages = new

    def _sample(self) -> None:
        self._input = self._detected_input()
        if self.clock.instant:  # no emulated time passes: the filter has already settled on this input
            self._stages = [self._input] * len(self._stages)
        if abs(complex(self.signal_fn())) > self.sensitivity_v or self.faults.overload:
            self.lias |= LIA_INPUT_OVERLOAD
        if self.reference_frequency_hz() is None:
            self.lias |= LIA_REFERENCE_UNLOCK

    def input_changed(self) -> None:
        """Orchestrator hook: the input (or the reference) changed now."""
        with self.lock:
            self._advance()
            self._sample()

    def _output(self) -> complex:
        """Current X + iY with noise, offsets and saturation (updates the filter first)."""
        self._advance()
        self._sample()
        z = self._stages[self.filter_stages - 1]
        if self.noise_v_per_rthz > 0:
            enbw = ENBW_TIMES_TAU[self.settings["OFSL"]] / self.time_constant_s
            sigma = self.noise_v_per_rthz * math.sqrt(enbw)
            z += complex(self._rng.normal(0, sigma), self._rng.normal(0, sigma))
        fs = self.sensitivity_v
        if self.faults.overload:
            z = complex(math.copysign(fs, z.real or 1.0), math.copysign(fs, z.imag or 1.0))
            self.lias |= LIA_INPUT_OVERLOAD | LIA_OUTPUT_OVERLOAD
        if abs(z.real) > fs or abs(z.imag) > fs:
            self.lias |= LIA_OUTPUT_OVERLOAD
        z = complex(max(-fs, min(fs, z.real)), max(-fs, min(fs, z.imag)))
        return z

    def _outputs(self) -> tuple[float, float, float, float]:
        z = self._output()
        fs = self.sensitivity_v
        x = z.real - self.settings["OEXP1"][0] / 100 * fs
        y = z.imag - self.settings["OEXP2"][0] / 100 * fs
        r = min(abs(z), fs) - self.settings["OEXP3"][0] / 100 * fs
        theta = math.degrees(math.atan2(z.imag, z.real))
        return x, y, r, theta

    def state(self) -> dict:
        """Snapshot for the orchestrator/tests (no side effects on the latched status)."""
        with self.lock:
            return {"sensitivity_v": self.sensitivity_v, "time_constant_s": self.time_constant_s,
                    "filter_stages": self.filter_stages, "reference_hz": self.reference_frequency_hz(),
                    "lias": self.lias}

    # ---- protocol ----------------------------------------------------------------------------------
    def process_line(self, line: str) -> list[str]:
        replies: list[str] = []
        with self.lock:
            for unit in line.split(";"):
                unit = unit.strip()
                if not unit:
                    continue
                try:
                    reply = self._execute(unit)
                except CommandError:
                    self.esr |= ESR_COMMAND_ERROR
                    self.command_log.append(unit)
                    continue
                except ExecutionError:
                    self.esr |= ESR_EXECUTION_ERROR
                    self.command_log.append(unit)
                    continue
                if reply is not None:
                    replies.append(reply)
        return replies

    def _execute(self, unit: str) -> str | None:
        head = unit[:4].upper()
        rest = unit[4:]
        query = rest.startswith("?")
        if query:
            rest = rest[1:]
        rest = rest.strip()
        args = [a.strip() for a in rest.split(",")] if rest else []
        if any(a == "" for a in args):
            raise CommandError(unit)
        handler = getattr(self, "_cmd_" + head.replace("*", "STAR_"), None)
        if handler is None or len(head) != 4:
            raise CommandError(unit)
        return handler(query, args)

    # helpers
    @staticmethod
    def _nargs(args: list[str], *allowed: int) -> None:
        if len(args) not in allowed:
            raise CommandError(f"expected {allowed} parameters, got {len(args)}")

    def _int_setting(self, name: str, query: bool, args: list[str]) -> str | None:
        if query:
            self._nargs(args, 0)
            return str(self.settings[name])
        self._nargs(args, 1)
        lo, hi = _INT_SETTINGS[name]
        self.settings[name] = _int(args[0], lo, hi)
        return None

    def __getattr__(self, name: str):
        if name.startswith("_cmd_") and name[5:] in _INT_SETTINGS:
            key = name[5:]
            if key in ("OFLT", "OFSL", "SENS"):
                def handler(query, args, key=key):
                    if not query:
                        self._advance()     # the filter ran with the old settings until now
                    return self._int_setting(key, query, args)
                return handler
            return lambda query, args, key=key: self._int_setting(key, query, args)
        raise AttributeError(name)

    # common commands
    def _cmd_STAR_IDN(self, query, args):
        if not query:
            raise CommandError("*IDN")
        self._nargs(args, 0)
        return self.idn

    def _cmd_STAR_RST(self, query, args):
        if query:
            raise CommandError("*RST?")
        self.settings = _default_settings()
        self._stages = [0j] * 4
        self._t_last = self.clock.now_s()
        self._sample()
        return None

    def _cmd_STAR_CLS(self, query, args):
        if query:
            raise CommandError("*CLS?")
        self.esr = self.lias = self.errs = 0
        return None

    def _cmd_STAR_OPC(self, query, args):
        if query:
            return "1"
        self.esr |= 1
        return None

    def _register_query(self, attr: str, query: bool, args: list[str], clear: bool) -> str | None:
        value = getattr(self, attr)
        if query:
            self._nargs(args, 0, 1)
            if args:
                bit = _int(args[0], 0, 7)
                if clear:
                    setattr(self, attr, value & ~(1 << bit))
                return str((value >> bit) & 1)
            if clear:
                setattr(self, attr, 0)
            return str(value)
        self._nargs(args, 1, 2)
        if len(args) == 2:
            bit, on = _int(args[0], 0, 7), _int(args[1], 0, 1)
            setattr(self, attr, (value & ~(1 << bit)) | (on << bit))
        else:
            setattr(self, attr, _int(args[0], 0, 255))
        return None

    def _cmd_STAR_ESR(self, query, args):
        if not query:
            raise CommandError("*ESR")
        return self._register_query("esr", True, args, clear=True)

    def _cmd_STAR_ESE(self, query, args):
        return self._register_query("ese", query, args, clear=False)

    def _cmd_STAR_SRE(self, query, args):
        return self._register_query("sre", query, args, clear=False)

    def _cmd_STAR_STB(self, query, args):
        if not query:
            raise CommandError("*STB")
        stb = 2  # IFC: no command execution in progress
        if self.errs & self.erre:
            stb |= 4
        if self.lias & self.liae:
            stb |= 8
        if self.esr & self.ese:
            stb |= 32
        if stb & self.sre:
            stb |= 64
        if args:
            self._nargs(args, 1)
            return str((stb >> _int(args[0], 0, 7)) & 1)
        return str(stb)

    def _cmd_STAR_PSC(self, query, args):
        return "1" if query else None

    def _cmd_LIAS(self, query, args):
        if not query:
            raise CommandError("LIAS")
        self._output()            # evaluate the overload/unlock conditions now
        return self._register_query("lias", True, args, clear=True)

    def _cmd_LIAE(self, query, args):
        return self._register_query("liae", query, args, clear=False)

    def _cmd_ERRS(self, query, args):
        if not query:
            raise CommandError("ERRS")
        return self._register_query("errs", True, args, clear=True)

    def _cmd_ERRE(self, query, args):
        return self._register_query("erre", query, args, clear=False)

    # reference and phase
    def _cmd_PHAS(self, query, args):
        if query:
            self._nargs(args, 0)
            return _fmt(self.settings["PHAS"])
        self._nargs(args, 1)
        value = _num(args[0])
        if not -360.0 <= value <= 729.99:
            raise ExecutionError(args[0])
        self._advance()
        self.settings["PHAS"] = (value + 180.0) % 360.0 - 180.0
        self._sample()
        return None

    def _cmd_FREQ(self, query, args):
        if query:
            self._nargs(args, 0)
            return _fmt(self.reference_frequency_hz() or 0.0)
        self._nargs(args, 1)
        value = _num(args[0])
        if self.settings["FMOD"] != 1:
            raise ExecutionError("FREQ only settable with the internal reference")
        if not MIN_REF_HZ <= value <= MAX_REF_HZ / self.settings["HARM"]:
            raise ExecutionError(args[0])
        self.settings["FREQ"] = value
        return None

    def _cmd_HARM(self, query, args):
        if query:
            self._nargs(args, 0)
            return str(self.settings["HARM"])
        self._nargs(args, 1)
        harm = _int(args[0], 1, 19999)
        ref = self.reference_frequency_hz() or 0.0
        if harm * ref > MAX_REF_HZ:
            raise ExecutionError(args[0])
        self.settings["HARM"] = harm
        return None

    def _cmd_SLVL(self, query, args):
        if query:
            self._nargs(args, 0)
            return _fmt(self.settings["SLVL"])
        self._nargs(args, 1)
        value = _num(args[0])
        if not 0.004 <= value <= 5.0:
            raise ExecutionError(args[0])
        self.settings["SLVL"] = round(value, 3)
        return None

    # display and output
    def _cmd_DDEF(self, query, args):
        if query:
            self._nargs(args, 1)
            ch = _int(args[0], 1, 2)
            j, k = self.settings[f"DDEF{ch}"]
            return f"{j},{k}"
        self._nargs(args, 3)
        ch = _int(args[0], 1, 2)
        self.settings[f"DDEF{ch}"] = (_int(args[1], 0, 4), _int(args[2], 0, 2))
        return None

    def _cmd_FPOP(self, query, args):
        if query:
            self._nargs(args, 1)
            return str(self.settings[f"FPOP{_int(args[0], 1, 2)}"])
        self._nargs(args, 2)
        self.settings[f"FPOP{_int(args[0], 1, 2)}"] = _int(args[1], 0, 1)
        return None

    def _cmd_OEXP(self, query, args):
        if query:
            self._nargs(args, 1)
            offset, expand = self.settings[f"OEXP{_int(args[0], 1, 3)}"]
            return f"{offset:.2f},{expand}"
        self._nargs(args, 3)
        ch = _int(args[0], 1, 3)
        offset = _num(args[1])
        if not -105.0 <= offset <= 105.0:
            raise ExecutionError(args[1])
        self.settings[f"OEXP{ch}"] = (offset, _int(args[2], 0, 2))
        return None

    def _cmd_AOFF(self, query, args):
        if query:
            raise CommandError("AOFF?")
        self._nargs(args, 1)
        ch = _int(args[0], 1, 3)
        z = self._output()
        value = {1: z.real, 2: z.imag, 3: abs(z)}[ch]
        offset = max(-105.0, min(105.0, 100.0 * value / self.sensitivity_v))
        self.settings[f"OEXP{ch}"] = (offset, self.settings[f"OEXP{ch}"][1])
        return None

    def _cmd_AUXV(self, query, args):
        if query:
            self._nargs(args, 1)
            return _fmt(self.settings["AUXV"][_int(args[0], 1, 4) - 1])
        self._nargs(args, 2)
        ch, value = _int(args[0], 1, 4), _num(args[1])
        if not -10.5 <= value <= 10.5:
            raise ExecutionError(args[1])
        self.settings["AUXV"][ch - 1] = value
        return None

    def _cmd_OAUX(self, query, args):
        if not query:
            raise CommandError("OAUX")
        self._nargs(args, 1)
        _int(args[0], 1, 4)
        return _fmt(0.0)

    def _snap_value(self, index: int, outputs: tuple[float, float, float, float]) -> float:
        x, y, r, theta = outputs
        if index <= 4:
            return outputs[index - 1]
        if index <= 8:
            return 0.0                                  # aux inputs: nothing connected
        if index == 9:
            return self.reference_frequency_hz() or 0.0
        ch = index - 9                                   # 10, 11: CH1, CH2 displays
        return self._display(ch, outputs)

    def _display(self, ch: int, outputs) -> float:
        x, y, r, theta = outputs
        j = self.settings[f"DDEF{ch}"][0]
        if ch == 1:
            return [x, r, 0.0, 0.0, 0.0][j]
        return [y, theta, 0.0, 0.0, 0.0][j]

    def _cmd_OUTP(self, query, args):
        if not query:
            raise CommandError("OUTP")
        self._nargs(args, 1)
        index = _int(args[0], 1, 4)
        return _fmt(self._outputs()[index - 1])

    def _cmd_OUTR(self, query, args):
        if not query:
            raise CommandError("OUTR")
        self._nargs(args, 1)
        return _fmt(self._display(_int(args[0], 1, 2), self._outputs()))

    def _cmd_SNAP(self, query, args):
        if not query:
            raise CommandError("SNAP")
        if not 2 <= len(args) <= 6:
            raise CommandError("SNAP? takes 2 to 6 parameters")
        indices = [_int(a, 1, 11) for a in args]
        outputs = self._outputs()
        return ",".join(_fmt(self._snap_value(i, outputs)) for i in indices)

    # auto functions
    def _cmd_AGAN(self, query, args):
        if query:
            raise CommandError("AGAN?")
        self._nargs(args, 0)
        self._advance()
        magnitude = max(abs(self._stages[self.filter_stages - 1]), abs(complex(self.signal_fn())))
        index = next((i for i, s in enumerate(SENSITIVITIES_V) if magnitude < 0.9 * s), 26)
        self.settings["SENS"] = index
        self._sample()
        return None

    def _cmd_APHS(self, query, args):
        if query:
            raise CommandError("APHS?")
        self._nargs(args, 0)
        self._advance()
        z = self._detected_input() * cmath.exp(1j * math.radians(self.settings["PHAS"]))
        if z != 0:
            self.settings["PHAS"] = math.degrees(cmath.phase(z))
        self._sample()
        return None

    def _no_arg_action(self, name: str, query: bool, args: list[str]) -> None:
        if query:
            raise CommandError(name + "?")
        self._nargs(args, 0)

    def _cmd_ARSV(self, query, args):
        self._no_arg_action("ARSV", query, args)

    def _cmd_KCLK(self, query, args):
        self._no_arg_action("KCLK", query, args)

    def _cmd_SSET(self, query, args):
        self._nargs(args, 1)
        _int(args[0], 1, 9)

    def _cmd_RSET(self, query, args):
        self._nargs(args, 1)
        _int(args[0], 1, 9)

    # data storage (accepted; the buffer is modelled only by its point count)
    def _cmd_STRT(self, query, args):
        self._no_arg_action("STRT", query, args)
        self._data_start_s = self.clock.now_s()

    def _cmd_STRD(self, query, args):
        return self._cmd_STRT(query, args)

    def _cmd_PAUS(self, query, args):
        self._no_arg_action("PAUS", query, args)

    def _cmd_REST(self, query, args):
        self._no_arg_action("REST", query, args)
        self._data_start_s = None

    def _cmd_TRIG(self, query, args):
        self._no_arg_action("TRIG", query, args)

    def _cmd_SPTS(self, query, args):
        if not query:
            raise CommandError("SPTS")
        if self._data_start_s is None or self.settings["SRAT"] == 14:
            return "0"
        rate = 0.0625 * 2 ** self.settings["SRAT"]
        elapsed = self.clock.elapsed_since(self._data_start_s)
        return str(int(min(16383, elapsed * rate)))


class SR830Server(LineServer):
    """``SR830`` served on 127.0.0.1; ``.lockin`` is the device."""

    def __init__(self, signal_fn, reference_fn, clock: Clock, port: int = 0,
                 faults: FaultConfig | None = None, **kwargs):
        self.lockin = SR830(signal_fn, reference_fn, clock, faults=faults, **kwargs)
        super().__init__(self.lockin, port=port, faults=faults)

    def input_changed(self) -> None:
        self.lockin.input_changed()
