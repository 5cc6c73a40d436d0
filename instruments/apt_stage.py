"""Thorlabs APT motor controller (KDC101 / BSC20x class) driving one linear stage axis.

Wire protocol: Thorlabs "APT Communications Protocol" binary messages over the controller's USB-serial
port (FTDI): 115200 baud, 8N1, RTS/CTS flow control. Messages are packed and parsed with the
``thorlabs_apt_protocol`` package (``functions.py`` packs, ``Unpacker``/``parsing.py`` parse); nothing is
hand-packed here.

Messages sent (host ``source`` 0x01 → controller ``dest``, 0x50 = generic USB controller):

=====================  ==========================================  =====================================
method                 sends                                       waits for
=====================  ==========================================  =====================================
``identify()``         HW_REQ_INFO 0x0005                          HW_GET_INFO 0x0006
``enable()``           MOD_SET_CHANENABLESTATE 0x0210 (state 1)    —
``disable()``          MOD_SET_CHANENABLESTATE 0x0210 (state 2)    —
``home()``             MOT_MOVE_HOME 0x0443                        MOT_MOVE_HOMED 0x0444
``move_to_mm(x)``      MOT_MOVE_ABSOLUTE 0x0453 (long form)        MOT_MOVE_COMPLETED 0x0464
``position_mm()``      MOT_REQ_POSCOUNTER 0x0411                   MOT_GET_POSCOUNTER 0x0412
``status()``           MOT_REQ_DCSTATUSUPDATE 0x0490               MOT_GET_DCSTATUSUPDATE 0x0491,
                                                                   then sends MOT_ACK_DCSTATUSUPDATE
``stop()``             MOT_MOVE_STOP 0x0465 (1 immediate /         —
                       2 profiled)
=====================  ==========================================  =====================================

Unsolicited MOT_GET_DCSTATUSUPDATE / MOT_GET_STATUSUPDATE messages (sent by a controller in update-
message mode, e.g. while a move runs) are accepted at any time: they refresh :attr:`AptStage.last_status`
and are acknowledged with MOT_ACK_DCSTATUSUPDATE 0x0492 ("server alive": over USB the controller stops
sending status messages if ~50 go unacknowledged). A MOT_MOVE_STOPPED 0x0466 or HW_RESPONSE 0x0080 /
HW_RICHRESPONSE 0x0081 while waiting for a move raises :class:`StageError`.

Where the package falls short: it parses status words into named booleans but does not keep the raw
word (we rebuild an IntFlag from its booleans), and its ``Unpacker`` silently skips bad bytes by default
(we make it raise, and turn that into a ``StageError``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import IntFlag
from typing import Any, Iterable, Optional, Sequence, Union

import serial
import thorlabs_apt_protocol as apt

from .errors import SoftLimitError, StageError, StageTimeout

__all__ = [
    "AptStage",
    "StageInfo",
    "StageStatus",
    "StatusBits",
    "COUNTS_PER_MM_Z8",
    "COUNTS_PER_MM_NRT100_BSC",
]

log = logging.getLogger(__name__)

# Encoder counts per mm for a KDC101 with a Z8-series actuator: 512 counts/rev × 67.49 gearbox / 1 mm
# lead screw = 34554.96. Our default, because dest 0x50 (a K-cube on its own USB port) is our default.
COUNTS_PER_MM_Z8 = 34555.0
# Microsteps per mm for an NRT100 (1 mm lead screw, 200 steps/rev) on a BSC20x (2048 µsteps/step).
COUNTS_PER_MM_NRT100_BSC = 409600.0

BAUD_RATE = 115200
HOST_ADDRESS = 0x01
GENERIC_USB_CONTROLLER = 0x50

STOP_IMMEDIATE = 0x01
STOP_PROFILED = 0x02


class StatusBits(IntFlag):
    """Status word of MOT_GET_DCSTATUSUPDATE / MOVE_COMPLETED (APT protocol, KDC101 status bits).

    The ones this driver acts on: FORWARD/REVERSE_LIMIT_SWITCH (hardware limit reached), MOVING_* and
    JOGGING_* (in motion), HOMING, HOMED, MOTION_ERROR and CURRENT_LIMIT (errors), CHANNEL_ENABLED.
    """

    NONE = 0
    FORWARD_LIMIT_SWITCH = 0x00000001
    REVERSE_LIMIT_SWITCH = 0x00000002
    MOVING_FORWARD = 0x00000010
    MOVING_REVERSE = 0x00000020
    JOGGING_FORWARD = 0x00000040
    JOGGING_REVERSE = 0x00000080
    MOTOR_CONNECTED = 0x00000100
    HOMING = 0x00000200
    HOMED = 0x00000400
    INITIALIZING = 0x00000800
    TRACKING = 0x00001000
    SETTLED = 0x00002000
    MOTION_ERROR = 0x00004000
    INSTRUMENT_ERROR = 0x00008000
    CURRENT_LIMIT = 0x01000000
    ERROR = 0x40000000
    CHANNEL_ENABLED = 0x80000000


# thorlabs_apt_protocol field name → our flag (the package exposes booleans, not the raw word)
_FIELD_FLAGS = {
    "forward_limit_switch": StatusBits.FORWARD_LIMIT_SWITCH,
    "reverse_limit_switch": StatusBits.REVERSE_LIMIT_SWITCH,
    "moving_forward": StatusBits.MOVING_FORWARD,
    "moving_reverse": StatusBits.MOVING_REVERSE,
    "jogging_forward": StatusBits.JOGGING_FORWARD,
    "jogging_reverse": StatusBits.JOGGING_REVERSE,
    "motor_connected": StatusBits.MOTOR_CONNECTED,
    "homing": StatusBits.HOMING,
    "homed": StatusBits.HOMED,
    "initializing": StatusBits.INITIALIZING,
    "tracking": StatusBits.TRACKING,
    "settled": StatusBits.SETTLED,
    "motion_error": StatusBits.MOTION_ERROR,
    "instrument_error": StatusBits.INSTRUMENT_ERROR,
    "motor_current_limit_reached": StatusBits.CURRENT_LIMIT,
    "error": StatusBits.ERROR,
    "channel_enabled": StatusBits.CHANNEL_ENABLED,
}
_MOVING = (StatusBits.MOVING_FORWARD | StatusBits.MOVING_REVERSE | StatusBits.JOGGING_FORWARD
           | StatusBits.JOGGING_REVERSE | StatusBits.HOMING)
_LIMITS = StatusBits.FORWARD_LIMIT_SWITCH | StatusBits.REVERSE_LIMIT_SWITCH
_ERRORS = (StatusBits.MOTION_ERROR | StatusBits.INSTRUMENT_ERROR | StatusBits.CURRENT_LIMIT
           | StatusBits.ERROR)
_STATUS_UPDATES = ("mot_get_dcstatusupdate", "mot_get_statusupdate")


@dataclass(frozen=True)
class StageStatus:
    position_counts: int
    position_mm: float
    flags: StatusBits

    @property
    def moving(self) -> bool:
        return bool(self.flags & _MOVING)

    @property
    def homed(self) -> bool:
        return bool(self.flags & StatusBits.HOMED)

    @property
    def at_limit_switch(self) -> bool:
        return bool(self.flags & _LIMITS)

    @property
    def error(self) -> bool:
        return bool(self.flags & _ERRORS)


@dataclass(frozen=True)
class StageInfo:
    model: str
    serial_number: int
    firmware_version: str
    hardware_version: int
    n_channels: int


class _StrictUnpacker(apt.Unpacker):
    """The package's Unpacker, raising on bytes that are not a valid message (instead of skipping)."""

    def __init__(self, file_like):
        super().__init__(file_like, on_error="raise")


def _open_port(port: str, timeout_s: float, poll_s: float) -> serial.SerialBase:
    settings = dict(baudrate=BAUD_RATE, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
                    stopbits=serial.STOPBITS_ONE, rtscts=True, timeout=poll_s, write_timeout=timeout_s)
    try:
        if "://" in port:
            link = serial.serial_for_url(port, **settings)
        else:
            link = serial.Serial(port, **settings)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise StageError(f"cannot open APT controller port {port!r}: {exc}; check the cable, the "
                         "port name and that no other program holds the port") from exc
    # Start-up sequence from the APT protocol document (FTDI): purge with 50 ms dwells, then assert RTS.
    time.sleep(0.05)
    link.reset_input_buffer()
    link.reset_output_buffer()
    time.sleep(0.05)
    try:
        link.rts = True
    except (OSError, serial.SerialException):  # pseudo-terminals have no modem lines
        log.debug("port %s: RTS cannot be set (not a real serial port?)", port)
    return link


class AptStage:
    """One axis of a Thorlabs APT controller.

    :param port: serial device path (``/dev/ttyUSB0``), a pyserial URL (``socket://…``, ``loop://``), or
        an open serial-like object (``write``/``read``/``reset_input_buffer``; its ``timeout`` is set to
        ``poll_s``).
    :param counts_per_mm: position counts per mm (see ``COUNTS_PER_MM_*``).
    :param travel_mm: (min, max) mechanical travel of the stage.
    :param soft_limits_mm: (min, max) allowed target range, inside ``travel_mm`` (default: the travel).
    :param channel: channel ident (1 for a K-cube).
    :param dest: controller address (0x50 generic USB; 0x21.. for bays of a rack controller).
    :param source: host address (0x01).
    :param timeout_s: longest wait for the reply to a request.
    :param move_timeout_s: longest wait for a move or homing to complete.
    :param name: axis name used in messages (``"x"``, ``"y"``).
    """

    def __init__(self, port: Union[str, Any], *, counts_per_mm: float = COUNTS_PER_MM_Z8,
                 travel_mm: Sequence[float] = (0.0, 25.0),
                 soft_limits_mm: Optional[Sequence[float]] = None,
                 channel: int = 1, dest: int = GENERIC_USB_CONTROLLER, source: int = HOST_ADDRESS,
                 timeout_s: float = 2.0, move_timeout_s: float = 60.0, name: str = "stage",
                 poll_s: float = 0.02):
        self.name = name
        if not counts_per_mm > 0:
            raise ValueError(f"stage {name}: counts_per_mm must be > 0 (got {counts_per_mm!r})")
        travel_lo, travel_hi = (float(v) for v in travel_mm)
        if not travel_lo < travel_hi:
            raise ValueError(f"stage {name}: travel_mm must be (min, max) with min < max "
                             f"(got {tuple(travel_mm)})")
        soft_lo, soft_hi = ((travel_lo, travel_hi) if soft_limits_mm is None
                            else (float(v) for v in soft_limits_mm))
        if not travel_lo <= soft_lo < soft_hi <= travel_hi:
            raise ValueError(f"stage {name}: soft_limits_mm {(soft_lo, soft_hi)} must satisfy min < max and "
                             f"lie inside travel_mm {(travel_lo, travel_hi)}")
        if not (timeout_s > 0 and move_timeout_s > 0 and poll_s > 0):
            raise ValueError(f"stage {name}: timeout_s, move_timeout_s and poll_s must be > 0")
        self.counts_per_mm = float(counts_per_mm)
        self.travel_mm = (travel_lo, travel_hi)
        self.soft_limits_mm = (soft_lo, soft_hi)
        self.channel = int(channel)
        self.dest = int(dest)
        self.source = int(source)
        self.timeout_s = float(timeout_s)
        self.move_timeout_s = float(move_timeout_s)
        self.last_status: Optional[StageStatus] = None
        self._port_name = port if isinstance(port, str) else getattr(port, "port", repr(port))
        if isinstance(port, str):
            self._port = _open_port(port, self.timeout_s, poll_s)
        else:
            self._port = port
            try:
                self._port.timeout = poll_s
            except (AttributeError, ValueError):
                pass
        self._unpacker = _StrictUnpacker(self._port)

    # --- units ------------------------------------------------------------------------------------------
    def mm_to_counts(self, position_mm: float) -> int:
        return int(round(float(position_mm) * self.counts_per_mm))

    def counts_to_mm(self, counts: int) -> float:
        return counts / self.counts_per_mm

    # --- commands ---------------------------------------------------------------------------------------
    def identify(self) -> StageInfo:
        """Controller model, serial number and firmware (HW_REQ_INFO → HW_GET_INFO)."""
        self._request(apt.hw_req_info(self.dest, self.source), "HW_REQ_INFO")
        info = self._wait_for({"hw_get_info"}, self.timeout_s, "HW_GET_INFO")
        major, interim, minor = info.firmware_version  # the package drops the unused byte, reverses
        return StageInfo(
            model=info.model_number.split(b"\x00", 1)[0].decode("ascii", "replace").strip(),
            serial_number=int(info.serial_number),
            firmware_version=f"{major}.{interim}.{minor}",
            hardware_version=int(info.hw_version),
            n_channels=int(info.nchs),
        )

    def enable(self) -> None:
        """Energise the channel (MOD_SET_CHANENABLESTATE, state 1). The controller does not reply."""
        self._send(apt.mod_set_chanenablestate(self.dest, self.source, self.channel, 1),
                   "MOD_SET_CHANENABLESTATE")

    def disable(self) -> None:
        """De-energise the channel (MOD_SET_CHANENABLESTATE, state 2)."""
        self._send(apt.mod_set_chanenablestate(self.dest, self.source, self.channel, 2),
                   "MOD_SET_CHANENABLESTATE")

    def home(self, wait: bool = True) -> None:
        """Home the axis (MOT_MOVE_HOME); with ``wait``, until MOT_MOVE_HOMED."""
        self._request(apt.mot_move_home(self.dest, self.source, self.channel), "MOT_MOVE_HOME")
        if wait:
            self._wait_for({"mot_move_homed"}, self.move_timeout_s, "MOT_MOVE_HOMED", in_motion=True)

    def check_soft_limits(self, position_mm: float) -> None:
        low, high = self.soft_limits_mm
        if not (low <= float(position_mm) <= high):  # also refuses NaN
            raise SoftLimitError(
                f"stage {self.name}: move to {position_mm!r} mm refused: outside the soft limits "
                f"[{low:g}, {high:g}] mm (soft_limits_mm); nothing was sent. Request a position inside "
                f"them, or widen soft_limits_mm within the travel [{self.travel_mm[0]:g}, "
                f"{self.travel_mm[1]:g}] mm if the setup allows.")

    def move_to_mm(self, position_mm: float, wait: bool = True) -> None:
        """Move to ``position_mm`` (MOT_MOVE_ABSOLUTE); with ``wait``, until MOT_MOVE_COMPLETED.

        Soft limits are checked before anything is sent (:class:`SoftLimitError`). A completion that
        reports a hardware limit switch or an error flag raises :class:`StageError`.
        """
        self.check_soft_limits(position_mm)
        counts = self.mm_to_counts(position_mm)
        self._request(apt.mot_move_absolute(self.dest, self.source, self.channel, counts),
                   "MOT_MOVE_ABSOLUTE")
        if not wait:
            return
        done = self._wait_for({"mot_move_completed"}, self.move_timeout_s, "MOT_MOVE_COMPLETED",
                              in_motion=True)
        if hasattr(done, "position"):  # long form: carries the status at completion
            status = self._status_from(done)
            if status.flags & (_LIMITS | _ERRORS):
                raise StageError(
                    f"stage {self.name}: move to {position_mm:g} mm ended at {status.position_mm:g} mm "
                    f"with {status.flags!r}; check the stage for an obstruction and re-home")

    def position_mm(self) -> float:
        """Current position (MOT_REQ_POSCOUNTER → MOT_GET_POSCOUNTER)."""
        self._request(apt.mot_req_poscounter(self.dest, self.source, self.channel), "MOT_REQ_POSCOUNTER")
        reply = self._wait_for({"mot_get_poscounter"}, self.timeout_s, "MOT_GET_POSCOUNTER")
        return self.counts_to_mm(reply.position)

    def status(self) -> StageStatus:
        """Status (MOT_REQ_DCSTATUSUPDATE → MOT_GET_DCSTATUSUPDATE, acknowledged)."""
        self._request(apt.mot_req_dcstatusupdate(self.dest, self.source, self.channel),
                   "MOT_REQ_DCSTATUSUPDATE")
        self._wait_for({"mot_get_dcstatusupdate"}, self.timeout_s, "MOT_GET_DCSTATUSUPDATE")
        assert self.last_status is not None
        return self.last_status

    def stop(self, immediate: bool = False) -> None:
        """Stop the axis (MOT_MOVE_STOP; profiled by default, which keeps a stepper's position).

        Never raises: on a dead port the failure is logged.
        """
        mode = STOP_IMMEDIATE if immediate else STOP_PROFILED
        try:
            self._port.write(apt.mot_move_stop(self.dest, self.source, self.channel, mode))
        except Exception:  # noqa: BLE001 - stop() is the safety path; it must not raise
            log.exception("stage %s: could not send MOT_MOVE_STOP on %s; stop the axis by hand",
                          self.name, self._port_name)

    def close(self) -> None:
        """Close the port (never raises)."""
        try:
            self._port.close()
        except Exception:  # noqa: BLE001
            log.exception("stage %s: error while closing %s", self.name, self._port_name)

    def shutdown(self) -> None:
        """Leave the axis safe: stop, then close the port (never raises)."""
        self.stop()
        self.close()

    def snapshot(self) -> dict[str, Any]:
        """Identity and settings, for the run store (positions in m, as SI)."""
        info = self.identify()
        status = self.status()
        return {
            "driver": f"{__name__}.{type(self).__name__}",
            "name": self.name,
            "model": info.model,
            "serial_number": info.serial_number,
            "firmware_version": info.firmware_version,
            "channel": self.channel,
            "counts_per_m": self.counts_per_mm * 1e3,
            "travel_m": [v * 1e-3 for v in self.travel_mm],
            "soft_limits_m": [v * 1e-3 for v in self.soft_limits_mm],
            "position_m": status.position_mm * 1e-3,
            "homed": status.homed,
            "status_bits": int(status.flags),
        }

    # --- transport --------------------------------------------------------------------------------------
    def _request(self, message: bytes, what: str) -> None:
        """Send a command that will be answered: drain stale input first."""
        self._drain()
        self._send(message, what)

    def _send(self, message: bytes, what: str) -> None:
        try:
            self._port.write(message)
        except serial.SerialTimeoutException as exc:
            raise StageTimeout(f"stage {self.name}: writing {what} to {self._port_name} timed out "
                               "(flow control stuck? controller powered?)") from exc
        except (serial.SerialException, OSError) as exc:
            raise StageError(f"stage {self.name}: cannot write {what} to {self._port_name}: {exc}") from exc

    def _status_from(self, message: Any) -> StageStatus:
        flags = StatusBits.NONE
        for field, flag in _FIELD_FLAGS.items():
            if getattr(message, field, False):
                flags |= flag
        status = StageStatus(int(message.position), self.counts_to_mm(message.position), flags)
        self.last_status = status
        return status

    def _next_message(self) -> Optional[Any]:
        try:
            return next(self._unpacker)
        except StopIteration:
            return None
        except RuntimeError as exc:  # the strict Unpacker's "not a valid message"
            garbage = self._unpacker.buf[:16]
            self._unpacker.buf = b""
            try:
                self._port.reset_input_buffer()
            except Exception:  # noqa: BLE001
                pass
            raise StageError(f"stage {self.name}: garbled reply from {self._port_name} ({exc}; "
                             f"bytes {garbage.hex(' ')}); check the port settings (115200 8N1 RTS/CTS) "
                             "and the cable") from exc
        except (serial.SerialException, OSError) as exc:
            raise StageError(f"stage {self.name}: cannot read from {self._port_name}: {exc}") from exc

    def _handle_status_update(self, message: Any) -> bool:
        """Record and acknowledge a status update; return whether ``message`` was one."""
        if message.msg not in _STATUS_UPDATES:
            return False
        self._status_from(message)
        self._send(apt.mot_ack_dcstatusupdate(self.dest, self.source), "MOT_ACK_DCSTATUSUPDATE")
        return True

    def _drain(self) -> None:
        """Consume messages already received (stale replies, status updates) before a new request,
        so that an old MOVE_COMPLETED cannot be taken for the answer to the next move. Uses the port's
        ``in_waiting`` when it has one; never blocks."""
        while getattr(self._port, "in_waiting", 0) or len(self._unpacker.buf) >= 6:
            message = self._next_message()
            if message is None:
                return
            if not self._handle_status_update(message):
                log.debug("stage %s: discarding stale %s", self.name, message.msg)

    def _wait_for(self, wanted: Iterable[str], timeout_s: float, what: str,
                  in_motion: bool = False) -> Any:
        """Read messages until one named in ``wanted`` arrives; handle status updates on the way."""
        wanted = set(wanted)
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._next_message()
            if message is None:
                if time.monotonic() > deadline:
                    raise StageTimeout(
                        f"stage {self.name}: no {what} from the controller at {self._port_name} within "
                        f"{timeout_s:g} s; check that it is powered, connected and that dest="
                        f"{self.dest:#04x}/channel={self.channel} are right")
                continue
            name = message.msg
            self._handle_status_update(message)
            if name in wanted:
                return message
            if name in ("hw_response", "hw_richresponse"):
                raise StageError(f"stage {self.name}: controller reported an error while waiting for "
                                 f"{what}: {message._asdict()}")
            if in_motion and name == "mot_move_stopped":
                where = ""
                if hasattr(message, "position"):
                    where = f" at {self._status_from(message).position_mm:g} mm"
                raise StageError(f"stage {self.name}: move stopped{where} before {what} "
                                 "(stop command, limit switch or obstruction)")
            if name not in _STATUS_UPDATES:
                log.debug("stage %s: ignoring %s while waiting for %s", self.name, name, what)
