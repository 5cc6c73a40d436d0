"""Fault injection: config validation and the faults as a client sees them on the wire."""

import time

import numpy as np
import pytest
import pyvisa
import serial
import thorlabs_apt_protocol as apt

from lab.virtual.apt import AptController
from lab.virtual.changer import ChangerServer, VirtualObjectChanger
from lab.virtual.clock import Clock
from lab.virtual.faults import FaultConfig, FaultConfigError, faults_by_instrument
from lab.virtual.synth import SynthServer


def open_visa(server, timeout_ms=1000):
    rm = pyvisa.ResourceManager("@py")
    return rm, rm.open_resource(server.resource, read_termination="\n", write_termination="\n",
                                timeout=timeout_ms)


# ---- configuration ---------------------------------------------------------------------------------

def test_config_loads_valid_keys():
    cfg = FaultConfig.from_dict({"drop_after_messages": 3, "reply_delay_s": 0.1, "garble_replies": True},
                                kind="synth")
    assert cfg == FaultConfig(drop_after_messages=3, reply_delay_s=0.1, garble_replies=1)


@pytest.mark.parametrize("config, kind, fragment", [
    ({"drop_after": 3}, "synth", "faults.drop_after: unknown fault key"),
    ({"drop_after_messages": 0}, "synth", "drop_after_messages: must be an integer >= 1"),
    ({"reply_delay_s": -1}, "lockin", "reply_delay_s: must be a finite number >= 0"),
    ({"garble_replies": "often"}, "synth", "garble_replies"),
    ({"stall": True}, "lockin", "stall: only applies to stage"),
    ({"overload": True}, "stage", "overload: only applies to lockin"),
    ({"stall_after_mm": 2.0}, "stage", "requires stall: true"),
    ({"stall": "yes"}, "stage", "stall: must be true or false"),
])
def test_config_errors_name_the_key(config, kind, fragment):
    with pytest.raises(FaultConfigError, match=fragment.replace("(", r"\(")):
        FaultConfig.from_dict(config, kind=kind)


def test_per_instrument_config_rejects_unknown_instrument():
    kinds = {"synth": "synth", "lockin": "lockin", "stage_x": "stage"}
    got = faults_by_instrument({"stage_x": {"stall": True}}, kinds, where="bench.yaml: faults")
    assert got["stage_x"].stall and got["synth"] == FaultConfig()
    with pytest.raises(FaultConfigError, match="bench.yaml: faults.stage_z: unknown instrument"):
        faults_by_instrument({"stage_z": {}}, kinds, where="bench.yaml: faults")


# ---- SCPI / TCP ------------------------------------------------------------------------------------

def test_drop_after_n_messages_closes_connection_without_hang():
    with SynthServer(faults=FaultConfig(drop_after_messages=2)) as srv:
        rm, visa = open_visa(srv)
        assert "E8257D" in visa.query("*IDN?")
        assert visa.query(":FREQ?")                      # 2nd message: answered, then dropped
        t0 = time.monotonic()
        with pytest.raises(Exception):
            visa.write("*IDN?")
            visa.read()
        assert time.monotonic() - t0 < 2.0
        assert srv.dropped_connections == 1
        rm2, visa2 = open_visa(srv)                      # a new connection works again
        assert "E8257D" in visa2.query("*IDN?")
        for inst, r in ((visa, rm), (visa2, rm2)):
            inst.close()
            r.close()


def test_garbled_replies_are_corrupted_but_terminated():
    with SynthServer(faults=FaultConfig(garble_replies=2)) as srv:
        rm, visa = open_visa(srv)
        first, second, third = (visa.query(":FREQ?") for _ in range(3))
        assert float(first) == float(third) == 20e9
        with pytest.raises(ValueError):
            float(second)
        assert len(second) == len(first)
        visa.close()
        rm.close()


def test_reply_delay_delays_every_reply():
    with SynthServer(faults=FaultConfig(reply_delay_s=0.15)) as srv:
        rm, visa = open_visa(srv)
        t0 = time.monotonic()
        visa.query("*IDN?")
        assert time.monotonic() - t0 >= 0.15
        visa.close()
        rm.close()


# ---- APT / pty -------------------------------------------------------------------------------------

def test_apt_drop_after_n_messages_makes_the_port_fail():
    controller = AptController(Clock(0), faults=FaultConfig(drop_after_messages=1)).start()
    port = serial.Serial(controller.port, 115200, rtscts=True, timeout=0.3)
    try:
        port.write(apt.hw_req_info(0x50, 0x01))
        time.sleep(0.1)
        assert controller.dead
        with pytest.raises(serial.SerialException):
            port.read(200)
            port.read(200)
    finally:
        port.close()
        controller.stop()


def test_apt_garbled_reply_is_rejected_by_the_client_parser():
    controller = AptController(Clock(0), faults=FaultConfig(garble_replies=1)).start()
    port = serial.Serial(controller.port, 115200, rtscts=True, timeout=0.3)
    try:
        port.write(apt.hw_req_info(0x50, 0x01))
        raw = port.read(90)
        assert len(raw) == 90 and raw[:2] != b"\x06\x00"
        assert list(apt.Unpacker(__import__("io").BytesIO(raw))) == []
    finally:
        port.close()
        controller.stop()


# ---- object changer --------------------------------------------------------------------------------

def test_changer_mounts_object_with_image():
    image = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    with ChangerServer() as srv, VirtualObjectChanger(srv.host, srv.port) as changer:
        changer.mount("digit-7", image)
        object_id, mounted = srv.current_object()
        assert object_id == "digit-7" and np.array_equal(mounted, image)
        changer.mount("blank", None)
        assert srv.current_object() == ("blank", None) and changer.mounted() == "blank"
        with pytest.raises(ValueError):
            changer.mount("bad", np.full((2, 2), 300))


def test_changer_drop_fault_raises_connection_error():
    with ChangerServer(faults=FaultConfig(drop_after_messages=1)) as srv:
        changer = VirtualObjectChanger(srv.host, srv.port, timeout_s=1.0)
        changer.mount("a")
        with pytest.raises((ConnectionError, OSError)):
            changer.mount("b")
        changer.close()
