"""The emulated E8257D over the real wire: pyvisa (@py, TCPIP SOCKET) and pymeasure's driver."""

import warnings

import pytest
import pyvisa

from lab.virtual.synth import SynthServer


@pytest.fixture
def server():
    with SynthServer() as srv:
        yield srv


@pytest.fixture
def visa(server):
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=2000)
    yield inst
    inst.close()
    rm.close()


def test_server_binds_loopback_and_exposes_visa_resource(server):
    assert server.host == "127.0.0.1"
    assert server.resource == f"TCPIP0::127.0.0.1::{server.port}::SOCKET" and server.port > 0


def test_idn_and_frequency_units_and_long_short_forms(visa):
    assert "E8257D" in visa.query("*IDN?")
    visa.write(":SOURce:FREQuency:CW 11.111 GHz")
    assert float(visa.query(":FREQ?")) == pytest.approx(11.111e9)
    visa.write("freq 1.5e3 MHZ")
    assert float(visa.query(":frequency:fixed?")) == pytest.approx(1.5e9)
    visa.write(":POWer:LEVel:IMMediate:AMPLitude 10 dBm;:OUTP ON")
    assert float(visa.query("POW?")) == 10.0
    assert visa.query(":OUTPut:STATe?") == "1"


def test_relative_header_after_semicolon_uses_current_path(visa):
    visa.write(":SOUR:FREQ:STAR 1 GHz;STOP 2 GHz")
    assert visa.query(":FREQ:STAR?;STOP?") == "+1.000000000000000E+09;+2.000000000000000E+09"
    assert visa.query(":SYST:ERR?") == '+0,"No error"'


def test_unknown_header_goes_to_error_queue_and_esr(visa):
    visa.write(":FREQ:BOGUS 3")
    assert visa.query(":SYST:ERR?") == '-113,"Undefined header"'
    assert visa.query(":SYST:ERR?") == '+0,"No error"'
    visa.write("NOTACOMMAND")
    assert int(visa.query("*ESR?")) & 32      # command error bit
    assert int(visa.query("*ESR?")) == 0      # cleared by reading


@pytest.mark.parametrize("command", [":FREQ 30 GHz", ":FREQ 100 kHz", ":POW 26 dBm", ":POW -140"])
def test_out_of_range_is_refused_and_setting_unchanged(visa, command):
    visa.write(":FREQ 11 GHz;:POW -10 dBm")
    visa.write(command)
    assert visa.query(":SYST:ERR?") == '-222,"Data out of range"'
    assert float(visa.query(":FREQ?")) == 11e9 and float(visa.query(":POW?")) == -10.0


def test_pymeasure_driver_commands_all_parse_and_reach_state(server):
    from pymeasure.instruments.agilent import Agilent8257D
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        gen = Agilent8257D(server.resource, read_termination="\n", write_termination="\n", timeout=2000)
    gen.frequency = 11.111e9
    gen.power = 10
    gen.enable()
    gen.config_amplitude_modulation(frequency=1e3, depth=100.0, shape="square")
    gen.config_pulse_modulation(frequency=2e3, input="square")
    gen.enable_modulation()
    gen.config_low_freq_out(source="internal", amplitude=2)
    gen.config_step_sweep()
    gen.start_frequency, gen.stop_frequency, gen.center_frequency = 1e9, 2e9, 1.5e9
    gen.start_power, gen.stop_power, gen.dwell_time, gen.step_points = -10, 0, 0.01, 11
    gen.enable_retrace()
    gen.single_sweep()
    gen.start_step_sweep()
    gen.stop_step_sweep()
    readback = (gen.frequency, gen.power, gen.is_enabled, gen.has_modulation, gen.has_amplitude_modulation,
                gen.amplitude_depth, gen.amplitude_source, gen.internal_frequency, gen.internal_shape,
                gen.has_pulse_modulation, gen.pulse_source, gen.pulse_input, gen.pulse_frequency,
                gen.low_freq_out_amplitude, gen.low_freq_out_source, gen.start_frequency, gen.dwell_time)
    assert readback == (11.111e9, 10, True, True, True, 100, "internal", 1e3, "square", True,
                        "internal", "square", 2e3, 2, "internal", 1e9, 0.01)
    assert gen.check_errors() == []
    st = server.state()
    assert st.rf_on and st.frequency_hz == 11.111e9 and st.power_dbm == 10
    assert st.modulation_on and st.modulation_kind == "am" and st.modulation_frequency_hz == 1e3
    assert server.synth.reference_frequency_hz() == 1e3
    gen.shutdown()
    assert gen.complete == "1"                # *OPC?: the writes before it have been executed
    assert not server.state().rf_on and not server.state().modulation_on
    gen.adapter.close()


def test_stop_closes_listening_socket_and_threads(visa, server):
    visa.query("*IDN?")
    server.stop()
    assert not server.running
    with pytest.raises(Exception):
        visa.query("*IDN?")


def test_frequency_query_keeps_millihertz_resolution(visa):
    visa.write(":FREQ 11111111111.111 Hz")
    assert float(visa.query(":FREQ?")) * 36 == pytest.approx(400e9, abs=0.05)
