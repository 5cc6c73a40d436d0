"""A bench session: open, configure and safely close every instrument of a BENCH.yaml.

``with Bench(cfg) as bench:`` opens the real drivers (pyvisa-py TCPIP SOCKET / GPIB resources for the
source and the lock-in, pyserial for the APT stages, the configured object changer), configures them,
and — on *every* way out of the block: normal exit, an exception, Ctrl-C (SIGINT) or SIGTERM — turns
the RF output off and stops both stages before closing the connections. Each shutdown step runs on its
own, so one failing (a dead connection) does not skip the others; failures are logged.

For a virtual config the emulators are started in this process (:class:`lab.virtual.bench.VirtualBench`,
``bench.virtual``), or, when ``virtual.addresses_file`` is given, the session connects to a
``d2nn-lab bench serve`` running elsewhere (``bench.virtual`` is then None). Either way the drivers talk
the same wire protocols as on the real bench.

Coordinates: procedures speak optical-axis coordinates (mm); stage position = ``origin_mm`` + coordinate.
Errors: every instrument problem is an ``instruments.InstrumentError``; a communication failure that a
driver lets through raw (VISA timeout, connection reset, unparsable reply) is wrapped in
:class:`BenchCommunicationError` naming the instrument and its address.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from instruments import (AptStage, InstrumentError, LockIn, LockInOverload, ManualObjectChanger,
                         ObjectChangeAborted, PowerLaw, SquareLaw, TableCalibration, THzSource)
from instruments.lockin import settling_time_s
from lab.config import VIRTUAL_ADDRESS, BenchConfig, load_bench_config
from model.schema import ConfigError, read_yaml

log = logging.getLogger(__name__)

__all__ = ["Bench", "BenchCommunicationError", "BenchInterrupted", "open_bench", "read_addresses_file"]

ADDRESS_KEYS = ("source", "lockin", "stage_x", "stage_y", "changer")
REQUEST_TIMEOUT_S = 2.0  # longest wait for a stage's reply to a request (moves use stages.*.timeout_s)


class BenchCommunicationError(InstrumentError):
    """An instrument did not answer, dropped the connection, or answered something unreadable."""


class BenchInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a Bench was open (a KeyboardInterrupt, so it unwinds ``with``)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def read_addresses_file(path: str | Path) -> dict[str, Any]:
    """The addresses a ``bench serve`` wrote (see ``VirtualBench.write_addresses``), validated."""
    data = read_yaml(path)
    missing = [k for k in ADDRESS_KEYS if not isinstance(data.get(k), str) or not data.get(k)]
    if missing:
        raise ConfigError(f"{path}: not a bench addresses file (missing {', '.join(missing)}); "
                          "it is written by `d2nn-lab bench serve`")
    scale = data.get("time_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale >= 0:
        raise ConfigError(f"{path}: time_scale must be a number >= 0 (got {scale!r})")
    return data


def _calibration(cfg: BenchConfig):
    d = cfg.lockin.detector
    try:
        if d.law == "square":
            return SquareLaw(d.responsivity_v_per_w)
        if d.law == "power":
            return PowerLaw(d.responsivity_v_per_w, d.exponent)
        return TableCalibration(d.table_v or [], d.table_w or [])
    except ValueError as exc:
        raise ConfigError(f"lockin.detector: {exc}") from None


def _nearest_setting(value: float, table, key: str, unit_scale: float, unit: str) -> float:
    for candidate in table:
        if math.isclose(candidate, value, rel_tol=1e-6):
            return candidate
    raise ConfigError(f"{key} must be one of the SR830's values "
                      f"({', '.join(f'{t / unit_scale:g}' for t in table)} {unit}); got {value / unit_scale:g}")


def _image_as_uint8(image) -> np.ndarray | None:
    """A mask in [0, 1] (floats) or 0..255 (uint8) as uint8 for the virtual changer's wire format."""
    if image is None:
        return None
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    array = np.asarray(array, dtype=np.float64)
    if array.size and (not np.isfinite(array).all() or array.min() < 0):
        raise ValueError("object image must be finite and >= 0")
    if array.size and array.max() > 1.0:
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.rint(array * 255.0).astype(np.uint8)


def _disable_nagle(resource) -> None:
    """TCP_NODELAY on a TCPIP SOCKET resource.

    Without it, a write followed by a query (``*CLS`` then ``SNAP?``) is held back by Nagle's algorithm
    until the instrument's delayed ACK of the write (~20-40 ms on Linux): a raster point cost ~45 ms
    instead of ~1 ms. pyvisa-py 0.8.1 maps the VI_ATTR_TCPIP_NODELAY setter to its generic attribute
    store (the socket option is never set), so set the option on its socket directly.
    """
    import socket
    if "SOCKET" not in str(getattr(resource, "resource_name", "")).upper():
        return
    try:
        session = resource.visalib.sessions[resource.session]
        session.interface.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:  # noqa: BLE001 - a speed-up, not a requirement
        log.debug("could not set TCP_NODELAY on %s", getattr(resource, "resource_name", resource), exc_info=True)


class Bench:
    """An open bench. Use as a context manager; every exit leaves the RF off and the stages stopped.

    :param cfg: the validated BENCH.yaml (:func:`lab.config.load_bench_config`).
    :param bench_file: the BENCH.yaml path, to resolve a relative ``virtual.addresses_file``.
    :param home: home stages that report "not homed" when opening (default True).
    :param install_signal_handlers: turn SIGINT/SIGTERM into :class:`BenchInterrupted` while open
        (only possible in the main thread; elsewhere it is skipped with a debug message).

    Attributes once open: ``source`` (THzSource), ``lockin`` (LockIn), ``stage_x``/``stage_y``
    (AptStage), ``changer``, ``virtual`` (the in-process VirtualBench, or None), ``time_scale``.
    """

    def __init__(self, cfg: BenchConfig, bench_file: str | Path | None = None, *, home: bool = True,
                 install_signal_handlers: bool = True):
        self.cfg = cfg
        self.bench_file = Path(bench_file) if bench_file is not None else None
        self.home_on_open = home
        self.install_signal_handlers = install_signal_handlers
        self.virtual = None
        self.source: THzSource | None = None
        self.lockin: LockIn | None = None
        self.stage_x: AptStage | None = None
        self.stage_y: AptStage | None = None
        self.changer = None
        self.addresses: dict[str, Any] = {}
        self.time_scale = 1.0
        self.settle_time_s = 0.0
        self._target_mm: dict[str, float | None] = {"x": None, "y": None}
        self._previous_handlers: dict[int, Any] = {}
        self._pending_signal: int | None = None
        self._shutting_down = False
        self._open = False

    # ---- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> "Bench":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def open(self) -> "Bench":
        """Start/locate the instruments, connect, configure. On any failure, shut down and re-raise."""
        if self._open:
            return self
        self._install_handlers()
        try:
            self._resolve_addresses()
            self._connect()
            self._configure()
            self._open = True
        except BaseException:
            self.close()
            raise
        return self

    def _resolve_addresses(self) -> None:
        cfg = self.cfg
        addresses = {"source": cfg.source.address, "lockin": cfg.lockin.address,
                     "stage_x": cfg.stages.x.port, "stage_y": cfg.stages.y.port, "changer": None}
        self.time_scale = 1.0
        v = cfg.virtual
        if v is not None:
            if v.addresses_file:
                path = Path(v.addresses_file)
                if not path.is_absolute() and self.bench_file is not None:
                    path = self.bench_file.parent / path
                served = read_addresses_file(path)
                self.time_scale = float(served.get("time_scale", v.time_scale))
            else:
                from lab.virtual.bench import VirtualBench
                self.virtual = VirtualBench(cfg)
                served = self.virtual.addresses()
                self.time_scale = self.virtual.clock.time_scale
            for key in ("source", "lockin", "stage_x", "stage_y"):
                if addresses[key] == VIRTUAL_ADDRESS:
                    addresses[key] = served[key]
            if cfg.object_changer == "virtual":
                addresses["changer"] = served["changer"]
        self.addresses = addresses

    def _visa_adapter(self, address: str, timeout_s: float, what: str):
        from pymeasure.adapters import VISAAdapter
        with self._talking(what, address):
            adapter = VISAAdapter(address, visa_library="@py", read_termination="\n", write_termination="\n",
                                  timeout=int(timeout_s * 1000))
        _disable_nagle(adapter.connection)
        return adapter

    def _connect(self) -> None:
        cfg, a = self.cfg, self.addresses
        self.source = THzSource(self._visa_adapter(a["source"], cfg.source.timeout_s, "source"),
                                multiplier=cfg.source.multiplier,
                                rf_power_limits_dbm=cfg.source.rf_power_limits_dbm)
        self.lockin = LockIn(self._visa_adapter(a["lockin"], cfg.lockin.timeout_s, "lock-in"),
                             calibration=_calibration(cfg))
        for axis in ("x", "y"):
            ax = getattr(cfg.stages, axis)
            stage = AptStage(a[f"stage_{axis}"], counts_per_mm=ax.counts_per_mm, travel_mm=ax.travel_mm,
                             soft_limits_mm=ax.limits_mm(axis), timeout_s=min(REQUEST_TIMEOUT_S, ax.timeout_s),
                             move_timeout_s=ax.timeout_s, name=axis)
            setattr(self, f"stage_{axis}", stage)
        if cfg.object_changer == "virtual":
            from lab.virtual.changer import VirtualObjectChanger
            host, _, port = a["changer"].rpartition(":")
            self.changer = VirtualObjectChanger(host, int(port), timeout_s=cfg.lockin.timeout_s)
        else:
            self.changer = ManualObjectChanger()

    def _configure(self) -> None:
        cfg = self.cfg
        src = self.source
        with self._talking("source", self.addresses["source"]):
            src.off()
            src.rf_power_dbm = cfg.source.rf_power_dbm
            src.output_frequency_hz = cfg.source.freq_ghz * 1e9
            src.configure_modulation(cfg.source.modulation_hz)
        li = self.lockin
        tc_s = _nearest_setting(cfg.lockin.time_constant_ms * 1e-3, LockIn.TIME_CONSTANTS,
                                "lockin.time_constant_ms", 1e-3, "ms")
        with self._talking("lock-in", self.addresses["lockin"]):
            li.reference_source = "External"
            li.time_constant = tc_s
            li.filter_slope = cfg.lockin.filter_slope_db
            if cfg.lockin.sensitivity_v is not None:
                li.sensitivity = _nearest_setting(cfg.lockin.sensitivity_v, LockIn.SENSITIVITIES,
                                                  "lockin.sensitivity_v", 1.0, "V")
        self.settle_time_s = settling_time_s(tc_s, cfg.lockin.filter_slope_db)
        for axis in ("x", "y"):
            stage = self._stage(axis)
            with self._talking(f"stage {axis}", self.addresses[f"stage_{axis}"]):
                stage.identify()
                stage.enable()
                if self.home_on_open and not stage.status().homed:
                    stage.home()

    # ---- safe shutdown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """RF off, stop both stages, then close every connection (and the in-process emulators).

        Never raises: every step runs in its own try and failures are logged. A SIGINT/SIGTERM that
        arrives meanwhile is held until the shutdown is done, then raised as :class:`BenchInterrupted`
        (unless an exception is already unwinding).
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        try:
            steps: list[tuple[str, Callable[[], Any]]] = []
            if self.source is not None:
                steps.append(("RF off", self.source.off))
            for axis in ("x", "y"):
                stage = getattr(self, f"stage_{axis}")
                if stage is not None:
                    steps.append((f"stop stage {axis}", stage.stop))
            # Confirm (a reply means the instrument has processed the command before it).
            if self.source is not None:
                steps.append(("confirm RF off", self._confirm_rf_off))
            for axis in ("x", "y"):
                stage = getattr(self, f"stage_{axis}")
                if stage is not None:
                    steps.append((f"confirm stage {axis} stopped", lambda s=stage: self._confirm_stopped(s)))
            if self.source is not None:
                steps.append(("close source", self.source.close))
            if self.lockin is not None:
                steps.append(("close lock-in", self.lockin.adapter.close))
            for axis in ("x", "y"):
                stage = getattr(self, f"stage_{axis}")
                if stage is not None:
                    steps.append((f"close stage {axis}", stage.close))
            if self.changer is not None and hasattr(self.changer, "close"):
                steps.append(("close object changer", self.changer.close))
            if self.virtual is not None:
                steps.append(("stop the virtual bench", self.virtual.close))
            for what, step in steps:
                try:
                    step()
                except Exception:  # noqa: BLE001 - keep going: the next step may be the one that matters
                    log.exception("bench %s: %s failed", self.cfg.name, what)
            self.source = self.lockin = self.stage_x = self.stage_y = self.changer = None
            self._open = False
        finally:
            self._shutting_down = False
            self._restore_handlers()

    def _confirm_rf_off(self) -> None:
        if self.source.is_on:
            log.error("bench %s: the source still reports RF ON after ':OUTP OFF'; switch it off by hand",
                      self.cfg.name)

    def _confirm_stopped(self, stage: AptStage) -> None:
        if stage.status().moving:
            log.error("bench %s: stage %s still reports moving after MOT_MOVE_STOP; stop it by hand",
                      self.cfg.name, stage.name)

    # ---- signals --------------------------------------------------------------------------------------
    def _install_handlers(self) -> None:
        if not self.install_signal_handlers or self._previous_handlers:
            return
        if threading.current_thread() is not threading.main_thread():
            log.debug("bench %s: not in the main thread; SIGINT/SIGTERM handlers not installed", self.cfg.name)
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self._shutting_down:
            log.warning("bench %s: %s during shutdown; finishing the shutdown first", self.cfg.name,
                        signal.Signals(signum).name)
            self._pending_signal = signum
            return
        raise BenchInterrupted(signum)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            try:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, TypeError):
                log.exception("bench %s: could not restore the %s handler", self.cfg.name,
                              signal.Signals(signum).name)
        self._previous_handlers = {}
        pending, self._pending_signal = self._pending_signal, None
        if pending is not None:
            import sys
            if sys.exc_info()[0] is None:
                raise BenchInterrupted(pending)

    # ---- communication errors ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _talking(self, what: str, address: str | None) -> Iterator[None]:
        """Turn raw transport failures into BenchCommunicationError (InstrumentErrors pass through)."""
        try:
            yield
        except (InstrumentError, ConfigError):
            raise
        except Exception as exc:
            import pyvisa
            if isinstance(exc, (pyvisa.errors.Error, OSError, EOFError)) or \
                    (isinstance(exc, ValueError) and "convert" in str(exc).lower()) or \
                    type(exc).__name__ in ("VisaIOError", "ConnectionError"):
                raise BenchCommunicationError(
                    f"{what} at {address}: {type(exc).__name__}: {exc}; check that it is on and "
                    "connected (for a virtual bench: that `bench serve` is running)") from exc
            if isinstance(exc, ValueError):
                raise BenchCommunicationError(f"{what} at {address}: unreadable reply ({exc})") from exc
            raise

    def _stage(self, axis: str) -> AptStage:
        stage = getattr(self, f"stage_{axis}")
        if stage is None:
            raise RuntimeError("bench is not open")
        return stage

    # ---- what procedures use -------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of bench time: real time on a real bench, scaled by time_scale on a virtual one."""
        real_s = seconds * self.time_scale
        if real_s > 0:
            time.sleep(real_s)

    def rf_on(self) -> None:
        """RF output on (the power is checked against the limits first); re-range if auto-ranging."""
        with self._talking("source", self.addresses["source"]):
            self.source.on()
            if not self.source.is_on:
                raise InstrumentError(f"source at {self.addresses['source']}: still OFF after ':OUTP ON'")
        if self.cfg.lockin.sensitivity_v is None:
            self.settle()
            with self._talking("lock-in", self.addresses["lockin"]):
                self.lockin.auto_range(sleep=self.sleep)

    def rf_off(self) -> None:
        """RF output off, confirmed by ``:OUTP?`` (raises if the source still reports it on)."""
        with self._talking("source", self.addresses["source"]):
            self.source.synthesizer.disable()
            if self.source.is_on:
                raise InstrumentError(f"source at {self.addresses['source']}: still ON after ':OUTP OFF'")

    def set_frequency_hz(self, freq_hz: float) -> None:
        """THz output frequency (the synthesizer gets freq / multiplier); returns once it is applied."""
        with self._talking("source", self.addresses["source"]):
            self.source.output_frequency_hz = freq_hz
            self.source.synthesizer.ask("*OPC?")

    def move_to_mm(self, x_mm: float, y_mm: float) -> None:
        """Move the detector to optical-axis coordinates (mm); waits until both axes have arrived.

        Stage positions are ``origin_mm + coordinate``; moves outside the soft limits are refused by
        the driver before anything is sent (SoftLimitError). An axis already at its target is not moved.
        """
        targets = {"x": self.cfg.stages.x.origin_mm + float(x_mm), "y": self.cfg.stages.y.origin_mm + float(y_mm)}
        for axis in ("x", "y"):
            self._stage(axis).check_soft_limits(targets[axis])
        for axis in ("x", "y"):
            if self._target_mm[axis] is not None and self._target_mm[axis] == targets[axis]:
                continue
            self._target_mm[axis] = None  # unknown until the move completes
            with self._talking(f"stage {axis}", self.addresses[f"stage_{axis}"]):
                self._stage(axis).move_to_mm(targets[axis])
            self._target_mm[axis] = targets[axis]

    def position_mm(self) -> tuple[float, float]:
        """Detector position in optical-axis coordinates (mm), as the controllers report it."""
        out = []
        for axis in ("x", "y"):
            with self._talking(f"stage {axis}", self.addresses[f"stage_{axis}"]):
                out.append(self._stage(axis).position_mm() - getattr(self.cfg.stages, axis).origin_mm)
        return out[0], out[1]

    def settle(self) -> float:
        """Clear the lock-in's latched status and wait one settling time (bench time); return it (s)."""
        with self._talking("lock-in", self.addresses["lockin"]):
            self.lockin.write("*CLS")
        self.sleep(self.settle_time_s)
        return self.settle_time_s

    def read(self, settle: bool = True):
        """A validated reading (R, θ, power) — waits to settle first unless ``settle=False``.

        Raises LockInOverload / ReferenceUnlocked for the caller to handle. With auto-ranging
        (``lockin.sensitivity_v`` unset) an overloaded or under-range reading is re-ranged and
        taken again once before an overload is raised.
        """
        if settle:
            self.settle()
        with self._talking("lock-in", self.addresses["lockin"]):
            if self.cfg.lockin.sensitivity_v is not None:
                return self.lockin.read_checked()
            try:
                reading = self.lockin.read_checked()
            except LockInOverload:
                reading = None
            if reading is not None and reading.r_v >= 0.1 * self.lockin.sensitivity or \
                    (reading is not None and self.lockin.sensitivity_index == 0):
                return reading
            self.lockin.auto_range(sleep=self.sleep)
            self.settle()
            return self.lockin.read_checked()

    def auto_range(self) -> None:
        """Step the lock-in's sensitivity until the reading sits inside its range."""
        with self._talking("lock-in", self.addresses["lockin"]):
            self.lockin.auto_range(sleep=self.sleep)

    def sensitivity_v(self) -> float:
        """The lock-in's present full scale (V), stored with every point."""
        with self._talking("lock-in", self.addresses["lockin"]):
            return float(self.lockin.sensitivity)

    def read_power_w(self, settle: bool = True) -> float:
        """Optical power (W) through the detector calibration (see :meth:`read`)."""
        return self.read(settle).power_w

    def mount(self, object_id: str, image=None) -> None:
        """Put input object ``object_id`` (mask ``image`` in [0, 1] or uint8) in the beam."""
        if self.cfg.object_changer == "manual":
            self.changer.mount(object_id, image)
            return
        try:
            self.changer.mount(object_id, _image_as_uint8(image))
        except (OSError, RuntimeError, ConnectionError) as exc:
            raise ObjectChangeAborted(f"virtual object changer at {self.addresses['changer']}: could not "
                                      f"mount {object_id!r}: {exc}") from exc

    def snapshot(self) -> dict[str, Any]:
        """Identity and settings of every instrument, for the run store (SI units)."""
        out: dict[str, Any] = {"bench": self.cfg.name, "virtual": self.cfg.is_virtual,
                               "time_scale": self.time_scale, "addresses": dict(self.addresses)}
        with self._talking("source", self.addresses["source"]):
            out["source"] = self.source.snapshot()
        with self._talking("lock-in", self.addresses["lockin"]):
            out["lockin"] = self.lockin.snapshot()
        for axis in ("x", "y"):
            with self._talking(f"stage {axis}", self.addresses[f"stage_{axis}"]):
                snap = self._stage(axis).snapshot()
            snap["origin_m"] = getattr(self.cfg.stages, axis).origin_mm * 1e-3
            out[f"stage_{axis}"] = snap
        changer = {"driver": f"{type(self.changer).__module__}.{type(self.changer).__name__}",
                   "kind": self.cfg.object_changer}
        if self.cfg.object_changer == "virtual":
            changer["address"] = self.addresses["changer"]
        out["object_changer"] = changer
        return out


def open_bench(path: str | Path, **kwargs) -> Bench:
    """``Bench`` for a BENCH.yaml file (not yet open; use it in a ``with``)."""
    return Bench(load_bench_config(path), bench_file=path, **kwargs)
