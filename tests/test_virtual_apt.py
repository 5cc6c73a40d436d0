"""The emulated KDC101 on a pty, driven with pyserial and thorlabs_apt_protocol (the real wire)."""

import time

import pytest
import serial
import thorlabs_apt_protocol as apt

from lab.virtual.apt import AptController
from lab.virtual.clock import Clock
from lab.virtual.faults import FaultConfig

CPM = 34554.96          # counts per mm (Z8 actuator)
DEV, HOST = 0x50, 0x01


class Client:
    def __init__(self, controller):
        self.port = serial.Serial(controller.port, 115200, bytesize=8, parity="N", stopbits=1,
                                  rtscts=True, timeout=0.5)
        self.unpacker = apt.Unpacker(self.port)

    def send(self, message):
        self.port.write(message)

    def wait_for(self, name, timeout_s=2.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                msg = next(self.unpacker)
            except StopIteration:
                continue
            if msg.msg == name:
                return msg
        raise TimeoutError(f"no {name} within {timeout_s} s")

    def status(self):
        self.send(apt.mot_req_dcstatusupdate(DEV, HOST, 1))
        return self.wait_for("mot_get_dcstatusupdate")


def make(time_scale=0.0, **kwargs):
    controller = AptController(Clock(time_scale), counts_per_mm=CPM, travel_mm=(0.0, 25.0), **kwargs).start()
    return controller, Client(controller)


@pytest.fixture
def instant():
    controller, client = make(0.0, initial_position_mm=5.0)
    yield controller, client
    client.port.close()
    controller.stop()


def test_hw_info_identifies_a_kdc101(instant):
    _, client = instant
    client.send(apt.hw_req_info(DEV, HOST))
    info = client.wait_for("hw_get_info")
    assert info.model_number.rstrip(b"\0") == b"KDC101" and info.nchs == 1


def test_absolute_move_long_and_short_form_complete_at_target(instant):
    controller, client = instant
    client.send(apt.mot_move_absolute(DEV, HOST, 1, int(12 * CPM)))
    done = client.wait_for("mot_move_completed")
    assert done.position == int(12 * CPM) and not done.moving_forward
    client.send(apt.mot_set_moveabsparams(DEV, HOST, 1, int(3 * CPM)))
    client.send(apt.mot_move_absolute(DEV, HOST, 1))
    client.wait_for("mot_move_completed")
    assert controller.state().position_mm == pytest.approx(3.0, abs=1e-4)


def test_relative_move_and_poscounter(instant):
    controller, client = instant
    client.send(apt.mot_move_relative(DEV, HOST, 1, int(-2 * CPM)))
    client.wait_for("mot_move_completed")
    client.send(apt.mot_req_poscounter(DEV, HOST, 1))
    assert client.wait_for("mot_get_poscounter").position == pytest.approx(3 * CPM, abs=2)


def test_home_zeroes_counter_and_sets_homed_bit(instant):
    controller, client = instant
    assert not client.status().homed
    client.send(apt.mot_move_home(DEV, HOST, 1))
    client.wait_for("mot_move_homed")
    status = client.status()
    assert status.homed and status.position == 0 and status.reverse_limit_switch
    assert controller.state().homed


def test_target_beyond_travel_stops_at_limit_and_reports_it(instant):
    controller, client = instant
    client.send(apt.mot_move_absolute(DEV, HOST, 1, int(40 * CPM)))
    stopped = client.wait_for("mot_move_stopped")
    assert stopped.forward_limit_switch
    state = controller.state()
    assert state.position_mm == 25.0 and state.at_limit == "forward" and not state.moving


def test_stage_moves_at_finite_speed(instant):
    controller, client = make(0.01, initial_position_mm=0.0)   # 1 emulated s = 10 ms
    try:
        client.send(apt.mot_set_velparams(DEV, HOST, 1, 0, 1000, int(CPM * 2048 / 6e6 * 65536 * 2.0)))
        client.send(apt.mot_move_absolute(DEV, HOST, 1, int(10 * CPM)))   # 5 emulated s = 50 ms
        time.sleep(0.02)
        status = client.status()
        assert status.moving_forward and 0 < status.position < 10 * CPM
        assert controller.state().moving
        t0 = time.monotonic()
        client.wait_for("mot_move_completed")
        assert time.monotonic() - t0 < 0.2
        assert controller.state().position_mm == pytest.approx(10.0, abs=1e-4)
    finally:
        client.port.close()
        controller.stop()


def test_move_stop_halts_the_stage(instant):
    controller, client = make(0.01)
    try:
        client.send(apt.mot_move_absolute(DEV, HOST, 1, int(20 * CPM)))
        time.sleep(0.02)
        client.send(apt.mot_move_stop(DEV, HOST, 1, 1))
        client.wait_for("mot_move_stopped")
        first = controller.state()
        time.sleep(0.03)
        second = controller.state()
        assert not second.moving and second.stopped and second.position_mm == first.position_mm < 20
    finally:
        client.port.close()
        controller.stop()


def test_velparams_round_trip_and_chan_enable(instant):
    controller, client = instant
    client.send(apt.mot_set_velparams(DEV, HOST, 1, 0, 4506, 1288471))
    client.send(apt.mot_req_velparams(DEV, HOST, 1))
    assert client.wait_for("mot_get_velparams").max_velocity == pytest.approx(1288471, abs=2)
    client.send(apt.mod_set_chanenablestate(DEV, HOST, 1, 2))
    client.send(apt.mod_req_chanenablestate(DEV, HOST, 1))
    assert not client.wait_for("mod_get_chanenablestate").enabled
    client.send(apt.mot_move_absolute(DEV, HOST, 1, int(9 * CPM)))
    client.send(apt.hw_req_info(DEV, HOST))
    client.wait_for("hw_get_info")
    assert controller.state().position_mm == 5.0 and controller.errors


def test_update_messages_stream_until_stopped(instant):
    _, client = instant
    client.send(apt.hw_no_flash_programming(DEV, HOST))
    client.send(apt.hw_start_updatemsgs(DEV, HOST))
    client.wait_for("mot_get_dcstatusupdate")
    client.send(apt.mot_ack_dcstatusupdate(DEV, HOST))
    client.send(apt.hw_stop_updatemsgs(DEV, HOST))
    time.sleep(0.15)
    client.port.reset_input_buffer()
    time.sleep(0.25)
    assert client.port.in_waiting == 0


def test_unknown_message_is_ignored_and_recorded(instant):
    controller, client = instant
    client.send(b"\x99\x09\x00\x00\x50\x01")
    client.send(apt.hw_req_info(DEV, HOST))
    client.wait_for("hw_get_info")                    # still answering
    assert any("0x0999" in e for e in controller.errors)


def test_stall_fault_never_arrives_but_stop_works():
    controller, client = make(0.0, faults=FaultConfig(stall=True, stall_after_mm=1.0))
    try:
        client.send(apt.mot_move_absolute(DEV, HOST, 1, int(10 * CPM)))
        with pytest.raises(TimeoutError):
            client.wait_for("mot_move_completed", timeout_s=0.3)
        state = controller.state()
        assert state.moving and state.position_mm == pytest.approx(1.0)
        client.send(apt.mot_move_stop(DEV, HOST, 1, 2))
        client.wait_for("mot_move_stopped")
        assert not controller.state().moving
    finally:
        client.port.close()
        controller.stop()
