"""Emulated Thorlabs APT single-channel DC servo controller (KDC101-like) on a pseudo-terminal.

The client opens ``controller.port`` (``/dev/pts/N``) with pyserial (115200 8N1, rtscts=True) and
speaks the binary APT protocol: 6-byte header ``<msgid:u16><param1:u8|len lo><param2:u8|len hi>
<dest:u8><source:u8>``; when ``dest & 0x80`` the header's bytes 2-3 are the length of a data packet
that follows.  Host = 0x01, this controller = 0x50 (generic USB device).

Handled messages (others are ignored, as a real controller does, and recorded in ``errors``):
HW_REQ_INFO -> HW_GET_INFO, HW_NO_FLASH_PROGRAMMING, HW_START/STOP_UPDATEMSGS (DC status update every
100 ms real time), MOD_SET/REQ_CHANENABLESTATE -> MOD_GET_CHANENABLESTATE, MOT_SET/REQ_VELPARAMS ->
MOT_GET_VELPARAMS, MOT_SET/REQ_MOVEABSPARAMS, MOT_SET/REQ_MOVERELPARAMS, MOT_MOVE_HOME -> MOT_MOVE_HOMED,
MOT_MOVE_ABSOLUTE (short: uses MOVEABSPARAMS; long: position) and MOT_MOVE_RELATIVE (short/long) ->
MOT_MOVE_COMPLETED on arrival, MOT_MOVE_STOP -> MOT_MOVE_STOPPED, MOT_SET/REQ_POSCOUNTER ->
MOT_GET_POSCOUNTER, MOT_REQ_DCSTATUSUPDATE / MOT_REQ_STATUSUPDATE -> MOT_GET_DCSTATUSUPDATE,
MOT_ACK_DCSTATUSUPDATE.

Status bits (u32 of the DC status structure, as in the APT protocol document):
0x00000001 forward hardware limit, 0x00000002 reverse hardware limit, 0x00000010 moving forward,
0x00000020 moving reverse, 0x00000200 homing, 0x00000400 homed, 0x80000000 channel enabled.
The DC status velocity field (i16) is the signed speed in encoder counts/s, clipped to i16.

Physics: constant speed (VELPARAMS max velocity, capped at ``max_speed_mm_s``; acceleration is not
modelled) in emulated time (``Clock``).  A target outside the travel is clipped: the stage stops at
the end of travel, sets the limit bit and reports MOT_MOVE_STOPPED (not COMPLETED).  Homing drives to
the reverse end (0 mm) at ``home_speed_mm_s``, zeroes the counter and reports MOT_MOVE_HOMED.
Fault ``stall``: the stage stops after ``stall_after_mm`` of a move but keeps reporting "moving" and
never completes (MOVE_STOP still works).

Unit conversions (KDC101): velocity = counts/mm * T * 65536 * v[mm/s], acceleration = counts/mm *
T^2 * 65536 * a[mm/s^2], with the servo cycle T = 2048 / 6e6 s.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import threading
import time
import tty
from dataclasses import dataclass

from lab.virtual.clock import Clock
from lab.virtual.faults import FaultConfig, FaultInjector, garble_binary

HOST, CONTROLLER = 0x01, 0x50
SERVO_CYCLE_S = 2048 / 6e6

# message ids
HW_DISCONNECT, HW_REQ_INFO, HW_GET_INFO = 0x0002, 0x0005, 0x0006
HW_START_UPDATEMSGS, HW_STOP_UPDATEMSGS, HW_NO_FLASH_PROGRAMMING = 0x0011, 0x0012, 0x0018
MOD_IDENTIFY = 0x0223
MOD_SET_CHANENABLESTATE, MOD_REQ_CHANENABLESTATE, MOD_GET_CHANENABLESTATE = 0x0210, 0x0211, 0x0212
MOT_SET_POSCOUNTER, MOT_REQ_POSCOUNTER, MOT_GET_POSCOUNTER = 0x0410, 0x0411, 0x0412
MOT_SET_VELPARAMS, MOT_REQ_VELPARAMS, MOT_GET_VELPARAMS = 0x0413, 0x0414, 0x0415
MOT_SET_MOVERELPARAMS, MOT_REQ_MOVERELPARAMS, MOT_GET_MOVERELPARAMS = 0x0445, 0x0446, 0x0447
MOT_SET_MOVEABSPARAMS, MOT_REQ_MOVEABSPARAMS, MOT_GET_MOVEABSPARAMS = 0x0450, 0x0451, 0x0452
MOT_MOVE_HOME, MOT_MOVE_HOMED = 0x0443, 0x0444
MOT_MOVE_RELATIVE, MOT_MOVE_ABSOLUTE = 0x0448, 0x0453
MOT_MOVE_COMPLETED, MOT_MOVE_STOP, MOT_MOVE_STOPPED = 0x0464, 0x0465, 0x0466
MOT_REQ_STATUSUPDATE = 0x0480
MOT_REQ_DCSTATUSUPDATE, MOT_GET_DCSTATUSUPDATE, MOT_ACK_DCSTATUSUPDATE = 0x0490, 0x0491, 0x0492

STATUS_FORWARD_LIMIT, STATUS_REVERSE_LIMIT = 0x1, 0x2
STATUS_MOVING_FORWARD, STATUS_MOVING_REVERSE = 0x10, 0x20
STATUS_HOMING, STATUS_HOMED, STATUS_ENABLED = 0x200, 0x400, 0x80000000

UPDATE_PERIOD_S = 0.1


def pack_message(msgid: int, *, param1: int = 0, param2: int = 0, data: bytes | None = None,
                 dest: int = HOST, source: int = CONTROLLER) -> bytes:
    """Frame an APT message (controller -> host by default)."""
    if data is not None:
        return struct.pack("<HHBB", msgid, len(data), dest | 0x80, source) + data
    return struct.pack("<HBBBB", msgid, param1 & 0xFF, param2 & 0xFF, dest, source)


@dataclass(frozen=True)
class StageState:
    position_mm: float
    moving: bool
    homed: bool
    homing: bool
    stopped: bool          # the last move ended by MOT_MOVE_STOP or at a travel limit
    at_limit: str | None   # "forward", "reverse" or None
    enabled: bool
    target_mm: float | None


@dataclass
class _Move:
    start_mm: float
    target_mm: float        # after clipping to the travel
    requested_mm: float
    speed_mm_s: float
    t0_s: float
    homing: bool = False


class AptController:
    """One emulated KDC101 + stage.  ``start()`` opens the pty; ``.port`` is the path to give pyserial."""

    def __init__(self, clock: Clock, *, counts_per_mm: float = 34554.96, travel_mm: tuple[float, float] = (0.0, 25.0),
                 max_speed_mm_s: float = 2.6, home_speed_mm_s: float = 1.0, speed_mm_s: float | None = None, initial_position_mm: float = 0.0,
                 faults: FaultConfig | None = None, serial_number: int = 27000001, name: str = "stage"):
        lo, hi = travel_mm
        if not hi > lo:
            raise ValueError(f"{name}: travel_mm must be (min, max) with max > min (got {travel_mm})")
        if counts_per_mm <= 0 or max_speed_mm_s <= 0 or home_speed_mm_s <= 0:
            raise ValueError(f"{name}: counts_per_mm and speeds must be > 0")
        self.clock = clock
        self.counts_per_mm = float(counts_per_mm)
        self.travel_mm = (float(lo), float(hi))
        self.max_speed_mm_s = float(max_speed_mm_s)
        self.home_speed_mm_s = float(home_speed_mm_s)
        self.faults = faults or FaultConfig()
        self.serial_number = serial_number
        self.name = name
        self.errors: list[str] = []            # ignored/unknown messages, for tests
        self.received: list[int] = []          # message ids received, in order
        self._lock = threading.RLock()
        self._fault = FaultInjector(self.faults)
        self._position_mm = min(max(float(initial_position_mm), lo), hi)
        self._counter_offset_mm = 0.0          # counter = (position - offset) * counts_per_mm
        # the controller's stored VELPARAMS max velocity at power-up (2.4 mm/s for a Z8 on a KDC101)
        self._speed_mm_s = min(2.4 if speed_mm_s is None else speed_mm_s, self.max_speed_mm_s)
        self._accel_counts = int(round(self.counts_per_mm * SERVO_CYCLE_S ** 2 * 65536 * 1.5))
        self._min_vel_counts = 0
        self._move: _Move | None = None
        self._homed = False
        self._stopped = False
        self._at_limit: str | None = None
        self._enabled = True
        self._abs_param_counts = 0
        self._rel_param_counts = 0
        self._updates = False
        self._last_update_real_s = 0.0
        self._master = self._slave = -1
        self.port = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._write_lock = threading.Lock()
        self.dead = False

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "AptController":
        if self._threads:
            return self
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        self.port = os.ttyname(self._slave)
        self._stop.clear()
        for target, label in ((self._reader, "reader"), (self._ticker, "ticker")):
            t = threading.Thread(target=target, name=f"apt-{self.name}-{label}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop the threads and close the pty (the stage itself is left where it is)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def __enter__(self) -> "AptController":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- physics -----------------------------------------------------------------------------------
    def _update(self) -> list[bytes]:
        """Bring the position up to date; return end-of-move messages to send."""
        move = self._move
        if move is None:
            return []
        distance = abs(move.target_mm - move.start_mm)
        travelled = move.speed_mm_s * self.clock.elapsed_since(move.t0_s)
        direction = 1.0 if move.target_mm >= move.start_mm else -1.0
        if self.faults.stall:
            self._position_mm = move.start_mm + direction * min(travelled, distance, self.faults.stall_after_mm)
            return []
        if travelled < distance:
            self._position_mm = move.start_mm + direction * travelled
            return []
        self._position_mm = move.target_mm
        self._move = None
        if move.homing:
            self._homed = True
            self._counter_offset_mm = self._position_mm
            return [pack_message(MOT_MOVE_HOMED, param1=1)]
        if move.requested_mm != move.target_mm:
            self._at_limit = "forward" if move.requested_mm > move.target_mm else "reverse"
            self._stopped = True
            return [pack_message(MOT_MOVE_STOPPED, data=self._dc_status_data())]
        return [pack_message(MOT_MOVE_COMPLETED, data=self._dc_status_data())]

    def _start_move(self, target_mm: float, *, homing: bool = False) -> None:
        lo, hi = self.travel_mm
        self._update()
        clipped = min(max(target_mm, lo), hi)
        self._move = _Move(self._position_mm, clipped, target_mm,
                           self.home_speed_mm_s if homing else self._speed_mm_s, self.clock.now_s(), homing)
        self._stopped = False
        if not (self._at_limit == "forward" and clipped >= hi) and not (self._at_limit == "reverse" and clipped <= lo):
            self._at_limit = None

    def _counter(self) -> int:
        return int(round((self._position_mm - self._counter_offset_mm) * self.counts_per_mm))

    def _mm_from_counter(self, counts: int) -> float:
        return counts / self.counts_per_mm + self._counter_offset_mm

    def _status_bits(self) -> int:
        bits = STATUS_ENABLED if self._enabled else 0
        if self._homed:
            bits |= STATUS_HOMED
        lo, hi = self.travel_mm
        if self._at_limit == "forward" or self._position_mm >= hi:
            bits |= STATUS_FORWARD_LIMIT
        if self._at_limit == "reverse" or self._position_mm <= lo:
            bits |= STATUS_REVERSE_LIMIT
        if self._move is not None:
            if self._move.homing:
                bits |= STATUS_HOMING
            bits |= STATUS_MOVING_FORWARD if self._move.target_mm > self._move.start_mm else STATUS_MOVING_REVERSE
        return bits

    def _velocity_counts_s(self) -> int:
        if self._move is None or (self.faults.stall and abs(self._position_mm - self._move.start_mm)
                                  >= self.faults.stall_after_mm):
            return 0
        sign = 1 if self._move.target_mm > self._move.start_mm else -1
        return max(-32768, min(32767, int(round(sign * self._move.speed_mm_s * self.counts_per_mm))))

    def _dc_status_data(self) -> bytes:
        return struct.pack("<HlhHL", 1, self._counter(), self._velocity_counts_s(), 0, self._status_bits())

    def state(self) -> StageState:
        """Thread-safe snapshot of the emulated stage (the truth, not what a driver believes)."""
        with self._lock:
            pending = self._update()
            if pending:
                self._send(pending)
            return StageState(position_mm=self._position_mm, moving=self._move is not None,
                              homed=self._homed, homing=self._move is not None and self._move.homing,
                              stopped=self._stopped, at_limit=self._at_limit, enabled=self._enabled,
                              target_mm=self._move.target_mm if self._move else None)

    # ---- threads -----------------------------------------------------------------------------------
    def _reader(self) -> None:
        buffer = b""
        while not self._stop.is_set() and not self.dead:
            try:
                ready, _, _ = select.select([self._master], [], [], 0.02)
                if not ready:
                    continue
                chunk = os.read(self._master, 4096)
            except OSError as err:
                if err.errno in (errno.EIO, errno.EBADF):
                    time.sleep(0.02)
                    continue
                raise
            buffer += chunk
            buffer = self._consume(buffer)

    def _consume(self, buffer: bytes) -> bytes:
        while len(buffer) >= 6 and not self.dead:
            msgid, length, dest, source = struct.unpack_from("<HHBB", buffer)
            long_form = bool(dest & 0x80)
            if long_form and length > 255:
                self.errors.append(f"invalid long-form length {length} for id {msgid:#06x}; byte discarded")
                buffer = buffer[1:]
                continue
            size = 6 + (length if long_form else 0)
            if len(buffer) < size:
                break
            message, buffer = buffer[:size], buffer[size:]
            drop = self._fault.message_received()
            self._handle(msgid, message, long_form)
            if drop:
                self._go_dead()
        return buffer

    def _ticker(self) -> None:
        while not self._stop.wait(0.005):
            with self._lock:
                if self.dead:
                    continue
                pending = self._update()
                now = time.monotonic()
                if self._updates and now - self._last_update_real_s >= UPDATE_PERIOD_S:
                    self._last_update_real_s = now
                    pending.append(pack_message(MOT_GET_DCSTATUSUPDATE, data=self._dc_status_data()))
                if pending:
                    self._send(pending)

    def _go_dead(self) -> None:
        """drop_after_messages: the controller disappears (its end of the line is closed)."""
        with self._lock:
            self.dead = True
            fd, self._master = self._master, -1
            if fd >= 0:
                os.close(fd)

    def _send(self, messages: list[bytes]) -> None:
        if self.dead or self._master < 0:
            return
        with self._write_lock:
            for message in messages:
                self._fault.before_reply()
                if self._fault.should_garble_reply():
                    message = garble_binary(message)
                try:
                    os.write(self._master, message)
                except OSError:
                    return

    # ---- message handling --------------------------------------------------------------------------
    def _handle(self, msgid: int, message: bytes, long_form: bool) -> None:
        param1, param2 = message[2], message[3]
        data = message[6:]
        dest = message[4] & 0x7F
        with self._lock:
            self.received.append(msgid)
            if dest not in (CONTROLLER, 0x11):
                self.errors.append(f"message {msgid:#06x} addressed to {dest:#04x}, not this controller; ignored")
                return
            handler = _HANDLERS.get(msgid)
            if handler is None:
                self.errors.append(f"unknown message id {msgid:#06x}; ignored")
                return
            try:
                replies = handler(self, param1, param2, data, long_form)
            except (struct.error, ValueError) as err:
                self.errors.append(f"malformed message {msgid:#06x}: {err}; ignored")
                return
            replies = self._update() + (replies or [])
            if replies:
                self._send(replies)

    def _h_req_info(self, p1, p2, data, long_form):
        info = struct.pack("<l8sH4B48s12sHHH", self.serial_number, b"KDC101\0\0", 16, 0, 0, 4, 0,
                           b"d2nn-lab virtual KDC101".ljust(48, b"\0"), bytes(12), 1, 0, 1)
        return [pack_message(HW_GET_INFO, data=info)]

    def _h_nothing(self, p1, p2, data, long_form):
        return []

    def _h_start_updates(self, p1, p2, data, long_form):
        self._updates = True
        self._last_update_real_s = 0.0
        return []

    def _h_stop_updates(self, p1, p2, data, long_form):
        self._updates = False
        return []

    def _h_set_enable(self, p1, p2, data, long_form):
        if p2 not in (1, 2):
            raise ValueError(f"enable state {p2} (1 = enable, 2 = disable)")
        self._enabled = p2 == 1
        if not self._enabled:
            self._update()
            self._move = None
        return []

    def _h_req_enable(self, p1, p2, data, long_form):
        return [pack_message(MOD_GET_CHANENABLESTATE, param1=1, param2=1 if self._enabled else 2)]

    def _h_set_poscounter(self, p1, p2, data, long_form):
        _, counts = struct.unpack_from("<Hl", data)
        self._update()
        self._counter_offset_mm = self._position_mm - counts / self.counts_per_mm
        return []

    def _h_req_poscounter(self, p1, p2, data, long_form):
        self._update()
        return [pack_message(MOT_GET_POSCOUNTER, data=struct.pack("<Hl", 1, self._counter()))]

    def _velocity_to_apt(self, v_mm_s: float) -> int:
        return int(round(self.counts_per_mm * SERVO_CYCLE_S * 65536 * v_mm_s))

    def _h_set_velparams(self, p1, p2, data, long_form):
        _, min_vel, accel, max_vel = struct.unpack_from("<H3l", data)
        if max_vel <= 0 or accel <= 0 or min_vel < 0:
            raise ValueError("velocity parameters must be positive")
        speed = max_vel / (self.counts_per_mm * SERVO_CYCLE_S * 65536)
        self._speed_mm_s = min(speed, self.max_speed_mm_s)
        self._min_vel_counts, self._accel_counts = min_vel, accel
        return []

    def _h_req_velparams(self, p1, p2, data, long_form):
        payload = struct.pack("<H3l", 1, self._min_vel_counts, self._accel_counts,
                              self._velocity_to_apt(self._speed_mm_s))
        return [pack_message(MOT_GET_VELPARAMS, data=payload)]

    def _h_set_absparams(self, p1, p2, data, long_form):
        _, self._abs_param_counts = struct.unpack_from("<Hl", data)
        return []

    def _h_req_absparams(self, p1, p2, data, long_form):
        return [pack_message(MOT_GET_MOVEABSPARAMS, data=struct.pack("<Hl", 1, self._abs_param_counts))]

    def _h_set_relparams(self, p1, p2, data, long_form):
        _, self._rel_param_counts = struct.unpack_from("<Hl", data)
        return []

    def _h_req_relparams(self, p1, p2, data, long_form):
        return [pack_message(MOT_GET_MOVERELPARAMS, data=struct.pack("<Hl", 1, self._rel_param_counts))]

    def _check_can_move(self, what: str) -> bool:
        if not self._enabled:
            self.errors.append(f"{what} while the channel is disabled; ignored")
            return False
        return True

    def _h_move_home(self, p1, p2, data, long_form):
        if self._check_can_move("MOT_MOVE_HOME"):
            self._start_move(self.travel_mm[0], homing=True)
        return []

    def _h_move_absolute(self, p1, p2, data, long_form):
        counts = struct.unpack_from("<Hl", data)[1] if long_form else self._abs_param_counts
        if self._check_can_move("MOT_MOVE_ABSOLUTE"):
            self._start_move(self._mm_from_counter(counts))
        return []

    def _h_move_relative(self, p1, p2, data, long_form):
        counts = struct.unpack_from("<Hl", data)[1] if long_form else self._rel_param_counts
        if self._check_can_move("MOT_MOVE_RELATIVE"):
            self._update()
            base = self._move.target_mm if self._move is not None else self._position_mm
            self._start_move(base + counts / self.counts_per_mm)
        return []

    def _h_move_stop(self, p1, p2, data, long_form):
        self._update()
        if self._move is not None:
            self._move = None
            self._stopped = True
        return [pack_message(MOT_MOVE_STOPPED, data=self._dc_status_data())]

    def _h_req_status(self, p1, p2, data, long_form):
        self._update()
        return [pack_message(MOT_GET_DCSTATUSUPDATE, data=self._dc_status_data())]

    @property
    def speed_mm_s(self) -> float:
        return self._speed_mm_s


_HANDLERS = {
    HW_REQ_INFO: AptController._h_req_info,
    HW_NO_FLASH_PROGRAMMING: AptController._h_nothing,
    HW_DISCONNECT: AptController._h_nothing,
    MOD_IDENTIFY: AptController._h_nothing,
    HW_START_UPDATEMSGS: AptController._h_start_updates,
    HW_STOP_UPDATEMSGS: AptController._h_stop_updates,
    MOD_SET_CHANENABLESTATE: AptController._h_set_enable,
    MOD_REQ_CHANENABLESTATE: AptController._h_req_enable,
    MOT_SET_POSCOUNTER: AptController._h_set_poscounter,
    MOT_REQ_POSCOUNTER: AptController._h_req_poscounter,
    MOT_SET_VELPARAMS: AptController._h_set_velparams,
    MOT_REQ_VELPARAMS: AptController._h_req_velparams,
    MOT_SET_MOVEABSPARAMS: AptController._h_set_absparams,
    MOT_REQ_MOVEABSPARAMS: AptController._h_req_absparams,
    MOT_SET_MOVERELPARAMS: AptController._h_set_relparams,
    MOT_REQ_MOVERELPARAMS: AptController._h_req_relparams,
    MOT_MOVE_HOME: AptController._h_move_home,
    MOT_MOVE_ABSOLUTE: AptController._h_move_absolute,
    MOT_MOVE_RELATIVE: AptController._h_move_relative,
    MOT_MOVE_STOP: AptController._h_move_stop,
    MOT_REQ_DCSTATUSUPDATE: AptController._h_req_status,
    MOT_REQ_STATUSUPDATE: AptController._h_req_status,
    MOT_ACK_DCSTATUSUPDATE: AptController._h_nothing,
}
