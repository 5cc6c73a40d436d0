"""APT stage driver: exact bytes on the wire, reply parsing, timeouts and refusals.

Expected messages are written out as hex from the APT protocol document (not produced by the package the
driver uses), so a wrong message id, channel, address or count shows up here.
"""

import logging
import os
import struct
import threading
import time

import pytest

from instruments.apt_stage import AptStage, StatusBits
from instruments.errors import SoftLimitError, StageError, StageTimeout

COUNTS_PER_MM = 34555.0  # KDC101 + Z8

# host → controller (dest 0x50, source 0x01)
REQ_INFO = bytes.fromhex("05 00 00 00 50 01")
ENABLE_CH1 = bytes.fromhex("10 02 01 01 50 01")
MOVE_HOME_CH1 = bytes.fromhex("43 04 01 00 50 01")
MOVE_ABS_10MM = bytes.fromhex("53 04 06 00 d0 01 01 00 ce 45 05 00")  # 10 mm × 34555 = 345550 counts
REQ_POSCOUNTER = bytes.fromhex("11 04 01 00 50 01")
REQ_DCSTATUS = bytes.fromhex("90 04 01 00 50 01")
ACK_DCSTATUS = bytes.fromhex("92 04 00 00 50 01")
STOP_PROFILED = bytes.fromhex("65 04 01 02 50 01")
STOP_IMMEDIATE = bytes.fromhex("65 04 01 01 50 01")

# controller → host (dest 0x01 | 0x80 for long messages, source 0x50)
MOVE_HOMED = bytes.fromhex("44 04 01 00 01 50")


def dc_status(msgid, position_counts, status_bits, velocity=0):
    return struct.pack("<HHBB", msgid, 14, 0x81, 0x50) + struct.pack(
        "<HlhHL", 1, position_counts, velocity, 0, status_bits)


def move_completed(position_counts, status_bits=StatusBits.HOMED | StatusBits.CHANNEL_ENABLED):
    return dc_status(0x0464, position_counts, int(status_bits))


def get_dcstatus(position_counts, status_bits):
    return dc_status(0x0491, position_counts, int(status_bits))


class ScriptedSerial:
    """Serial stand-in: each write must equal the next scripted message byte for byte; the scripted
    reply to it then becomes readable. Reads with nothing pending wait ``timeout`` and return b''."""

    def __init__(self, script, pending=b""):
        self.script = list(script)
        self.written = []
        self._rx = bytearray(pending)
        self.timeout = None
        self.closed = False

    def write(self, data):
        data = bytes(data)
        self.written.append(data)
        assert self.script, f"unexpected write {data.hex(' ')}"
        expected, reply = self.script.pop(0)
        assert data == expected, f"wrote {data.hex(' ')}, expected {expected.hex(' ')}"
        self._rx += reply
        return len(data)

    def read(self, size=1):
        if not self._rx:
            time.sleep(self.timeout or 0.001)
            return b""
        out = bytes(self._rx[:size])
        del self._rx[:size]
        return out

    @property
    def in_waiting(self):
        return len(self._rx)

    def reset_input_buffer(self):
        self._rx.clear()

    def close(self):
        self.closed = True


def make_stage(script, pending=b"", **kwargs):
    port = ScriptedSerial(script, pending)
    kwargs.setdefault("counts_per_mm", COUNTS_PER_MM)
    kwargs.setdefault("travel_mm", (0.0, 25.0))
    kwargs.setdefault("timeout_s", 0.2)
    kwargs.setdefault("move_timeout_s", 0.5)
    kwargs.setdefault("poll_s", 0.002)
    return AptStage(port, name="x", **kwargs), port


def test_move_to_mm_sends_move_absolute_with_exact_counts_and_waits_for_move_completed():
    stage, port = make_stage([(MOVE_ABS_10MM, move_completed(345550))])
    stage.move_to_mm(10.0)
    assert port.written == [MOVE_ABS_10MM] and port.script == []


def test_a_stale_move_completed_is_not_taken_for_the_completion_of_the_next_move():
    stale = move_completed(0)  # left over from an earlier move_to_mm(..., wait=False)
    stage, port = make_stage([(MOVE_ABS_10MM, move_completed(345550))], pending=stale)
    stage.move_to_mm(10.0)
    assert port.in_waiting == 0  # the fresh completion was the one consumed


def test_move_without_wait_sends_and_returns_without_reading():
    stage, port = make_stage([(MOVE_ABS_10MM, b"")])
    stage.move_to_mm(10.0, wait=False)
    assert port.written == [MOVE_ABS_10MM]


def test_unsolicited_status_updates_during_a_move_are_acknowledged_and_recorded():
    moving = StatusBits.MOVING_FORWARD | StatusBits.HOMED | StatusBits.CHANNEL_ENABLED
    stage, port = make_stage([
        (MOVE_ABS_10MM, get_dcstatus(172775, moving)),
        (ACK_DCSTATUS, move_completed(345550)),
    ])
    stage.move_to_mm(10.0)
    assert port.script == []
    assert stage.last_status.position_mm == pytest.approx(10.0)


@pytest.mark.parametrize("target_mm", [-0.001, 20.001, float("nan"), 1e9])
def test_move_beyond_soft_limits_is_refused_before_any_byte_is_sent(target_mm):
    stage, port = make_stage([], soft_limits_mm=(0.0, 20.0))
    with pytest.raises(SoftLimitError) as info:
        stage.move_to_mm(target_mm)
    assert port.written == []
    message = str(info.value)
    assert "stage x" in message and "[0, 20] mm" in message and repr(target_mm) in message


def test_soft_limit_error_is_a_value_error():
    stage, _ = make_stage([], soft_limits_mm=(1.0, 2.0))
    with pytest.raises(ValueError):
        stage.move_to_mm(0.0)


def test_soft_limits_outside_the_travel_are_refused_at_construction():
    with pytest.raises(ValueError, match="inside travel_mm"):
        make_stage([], travel_mm=(0, 25), soft_limits_mm=(-1, 10))


def test_home_sends_move_home_and_waits_for_move_homed():
    stage, port = make_stage([(MOVE_HOME_CH1, MOVE_HOMED)])
    stage.home()
    assert port.written == [MOVE_HOME_CH1] and port.script == []


def test_missing_reply_raises_stage_timeout_instead_of_hanging():
    stage, _ = make_stage([(REQ_POSCOUNTER, b"")], timeout_s=0.1)
    started = time.monotonic()
    with pytest.raises(StageTimeout, match="no MOT_GET_POSCOUNTER .* within 0.1 s"):
        stage.position_mm()
    assert time.monotonic() - started < 1.0


def test_move_that_never_completes_raises_stage_timeout():
    stage, _ = make_stage([(MOVE_ABS_10MM, b"")], move_timeout_s=0.1)
    with pytest.raises(StageTimeout, match="MOT_MOVE_COMPLETED"):
        stage.move_to_mm(10.0)


def test_garbled_reply_raises_stage_error():
    stage, _ = make_stage([(REQ_POSCOUNTER, bytes.fromhex("ff ee dd cc bb aa 99 88"))])
    with pytest.raises(StageError, match="garbled reply"):
        stage.position_mm()


def test_move_stopped_before_completion_raises_stage_error():
    stopped = dc_status(0x0466, 100000, StatusBits.FORWARD_LIMIT_SWITCH)
    stage, _ = make_stage([(MOVE_ABS_10MM, stopped)])
    with pytest.raises(StageError, match="move stopped at 2.89"):
        stage.move_to_mm(10.0)


def test_move_completed_on_a_limit_switch_raises_stage_error():
    stage, _ = make_stage([(MOVE_ABS_10MM, move_completed(300000, StatusBits.FORWARD_LIMIT_SWITCH))])
    with pytest.raises(StageError, match="FORWARD_LIMIT_SWITCH"):
        stage.move_to_mm(10.0)


def test_position_mm_converts_the_position_counter_with_counts_per_mm():
    reply = bytes.fromhex("12 04 06 00 81 50 01 00") + struct.pack("<l", 172775)
    stage, _ = make_stage([(REQ_POSCOUNTER, reply)])
    assert stage.position_mm() == pytest.approx(5.0)


def test_status_parses_the_dc_status_bits_and_acknowledges_the_update():
    bits = StatusBits.MOVING_REVERSE | StatusBits.REVERSE_LIMIT_SWITCH | StatusBits.CHANNEL_ENABLED
    stage, port = make_stage([(REQ_DCSTATUS, get_dcstatus(-34555, bits)), (ACK_DCSTATUS, b"")])
    status = stage.status()
    assert port.script == []
    assert status.flags == bits
    assert status.moving and status.at_limit_switch and not status.homed and not status.error
    assert status.position_mm == pytest.approx(-1.0)


def test_status_reports_homed_and_motion_error():
    stage, _ = make_stage([(REQ_DCSTATUS, get_dcstatus(0, StatusBits.HOMED | StatusBits.MOTION_ERROR)),
                           (ACK_DCSTATUS, b"")])
    status = stage.status()
    assert status.homed and status.error and not status.moving


def test_identify_parses_model_serial_and_firmware():
    info = (struct.pack("<l8sH", 27000123, b"KDC101\x00\x00", 16) + bytes([7, 0, 3, 0])
            + bytes(60) + struct.pack("<HHH", 1, 0, 1))
    reply = struct.pack("<HHBB", 0x0006, len(info), 0x81, 0x50) + info
    stage, _ = make_stage([(REQ_INFO, reply)])
    ident = stage.identify()
    assert (ident.model, ident.serial_number, ident.firmware_version) == ("KDC101", 27000123, "3.0.7")


def test_enable_sends_chan_enable_state_for_channel_1():
    stage, port = make_stage([(ENABLE_CH1, b"")])
    stage.enable()
    assert port.written == [ENABLE_CH1]


@pytest.mark.parametrize("immediate, expected", [(False, STOP_PROFILED), (True, STOP_IMMEDIATE)])
def test_stop_sends_move_stop_with_the_stop_mode(immediate, expected):
    stage, port = make_stage([(expected, b"")])
    stage.stop(immediate=immediate)
    assert port.written == [expected]


class _DeadPort(ScriptedSerial):
    def write(self, data):
        raise OSError(5, "Input/output error")


def test_stop_and_shutdown_never_raise_on_a_dead_port_and_log_instead(caplog):
    stage = AptStage(_DeadPort([]), name="y")
    with caplog.at_level(logging.ERROR, logger="instruments.apt_stage"):
        stage.stop()
        stage.shutdown()
    assert sum("MOT_MOVE_STOP" in r.getMessage() for r in caplog.records) == 2


def test_write_failure_on_a_command_raises_stage_error():
    stage = AptStage(_DeadPort([]), name="y")
    with pytest.raises(StageError, match="cannot write MOT_MOVE_HOME"):
        stage.home()


def test_real_serial_port_path_over_a_pty_carries_the_exact_bytes():
    master, slave = os.openpty()
    received = []

    def controller():
        data = b""
        while len(data) < len(MOVE_ABS_10MM):
            data += os.read(master, 64)
        received.append(data)
        os.write(master, move_completed(345550))

    responder = threading.Thread(target=controller, daemon=True)
    stage = AptStage(os.ttyname(slave), counts_per_mm=COUNTS_PER_MM, timeout_s=2.0, move_timeout_s=2.0)
    try:
        responder.start()
        stage.move_to_mm(10.0)
        responder.join(timeout=2.0)
    finally:
        stage.close()
        os.close(master)
        os.close(slave)
    assert received == [MOVE_ABS_10MM]
