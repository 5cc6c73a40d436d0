"""The emulated SR830 over the real wire (pyvisa @py and pymeasure's SR830)."""

import time

import pytest
import pyvisa

from lab.virtual.clock import Clock
from lab.virtual.faults import FaultConfig
from lab.virtual.sr830 import SR830, SR830Server


class Bench:
    """A settable true input signal and reference for the lock-in."""

    def __init__(self):
        self.signal_v = 1e-3
        self.reference_hz = 1000.0

    def signal(self):
        return self.signal_v

    def reference(self):
        return self.reference_hz


def open_visa(server):
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=2000)
    return rm, inst


@pytest.fixture
def bench():
    return Bench()


@pytest.fixture
def instant(bench):
    with SR830Server(bench.signal, bench.reference, Clock(0)) as srv:
        rm, inst = open_visa(srv)
        yield srv, inst
        inst.close()
        rm.close()


def test_settled_reading_equals_input_with_external_reference(instant, bench):
    srv, visa = instant
    visa.write("FMOD 0;SENS 22;OFLT 8")
    x, y, f = (float(v) for v in visa.query("SNAP? 1,2,9").split(","))
    assert x == pytest.approx(1e-3) and abs(y) < 1e-12 and f == 1000.0
    assert float(visa.query("FREQ?")) == 1000.0


def test_phase_rotates_the_reading(instant, bench):
    srv, visa = instant
    visa.write("FMOD 0;SENS 22;PHAS 90")
    x, y = (float(v) for v in visa.query("SNAP?1,2").split(","))
    assert abs(x) < 1e-9 and y == pytest.approx(-1e-3)
    assert float(visa.query("OUTP? 3")) == pytest.approx(1e-3)


def test_unknown_command_sets_command_error_bit(instant):
    srv, visa = instant
    visa.query("*ESR?")
    visa.write("XYZW 3")
    assert int(visa.query("*ESR?")) & 32
    assert int(visa.query("*ESR?")) == 0


def test_out_of_range_sets_execution_error_and_keeps_setting(instant):
    srv, visa = instant
    visa.write("SENS 20;*CLS")
    visa.write("SENS 27")
    visa.write("OFLT 20")
    assert int(visa.query("*ESR?")) & 16
    assert visa.query("SENS?") == "20" and visa.query("OFLT?") == "10"


def test_missing_reference_sets_unlock_bit(instant, bench):
    srv, visa = instant
    visa.write("FMOD 0")
    bench.reference_hz = None
    srv.input_changed()
    assert int(visa.query("LIAS?")) & 8
    assert float(visa.query("OUTP?1")) == 0.0


def test_input_above_full_scale_sets_overload_and_saturates(instant, bench):
    srv, visa = instant
    visa.write("FMOD 0;SENS 17")            # 1 mV full scale
    bench.signal_v = 5e-3
    assert float(visa.query("OUTP?1")) == pytest.approx(1e-3)
    status = int(visa.query("LIAS?"))
    assert status & 1 and status & 4
    bench.signal_v = 0.5e-3
    visa.query("OUTP?1")
    assert int(visa.query("LIAS?")) & 1 == 0     # latched bits were cleared by the read


def test_step_read_early_is_partial_and_late_is_settled(bench):
    clock = Clock(0.01)                          # 1 emulated s = 10 ms
    lockin = SR830(bench.signal, bench.reference, clock)
    for line in ["FMOD 0", "SENS 22", "OFLT 10", "OFSL 0"]:   # tau = 1 s, 6 dB/oct
        lockin.process_line(line)
    time.sleep(0.1)                              # 10 tau: settled at 1 mV
    bench.signal_v = 2e-3
    lockin.input_changed()
    early = float(lockin.process_line("OUTP?1")[0])
    assert 1e-3 <= early < 1.8e-3
    time.sleep(0.07)                             # >= 7 tau after the step
    assert float(lockin.process_line("OUTP?1")[0]) == pytest.approx(2e-3, rel=2e-3)


def test_steeper_slope_settles_slower(bench):
    readings = []
    for slope in (0, 3):
        clock = Clock(0.01)
        bench.signal_v = 0.0
        lockin = SR830(bench.signal, bench.reference, clock)
        lockin.process_line(f"FMOD 0;SENS 22;OFLT 10;OFSL {slope}")
        bench.signal_v = 1e-3
        lockin.input_changed()
        time.sleep(0.03)                         # ~3 tau
        readings.append(float(lockin.process_line("OUTP?1")[0]))
    assert readings[1] < readings[0] < 1e-3


def test_noise_is_seeded_and_scales_with_bandwidth(bench):
    def spread(oflt, seed):
        lockin = SR830(bench.signal, bench.reference, Clock(0), noise_v_per_rthz=1e-6, seed=seed)
        lockin.process_line(f"FMOD 0;SENS 22;OFLT {oflt}")
        return [float(lockin.process_line("OUTP?1")[0]) for _ in range(200)]
    import numpy as np
    assert spread(6, 1) == spread(6, 1)
    assert np.std(spread(4, 1)) > 5 * np.std(spread(8, 1))   # tau 1 ms vs 100 ms


def test_pymeasure_sr830_driver_is_compatible(instant, bench):
    from pymeasure.instruments.srs import SR830 as PymeasureSR830
    srv, _ = instant
    lia = PymeasureSR830(srv.resource, read_termination="\n", write_termination="\n", timeout=2000)
    lia.reference_source = "External"
    lia.sensitivity = 2e-3
    lia.time_constant = 0.3
    lia.filter_slope = 24
    lia.channel1 = "R"
    assert lia.sensitivity == 2e-3 and lia.time_constant == 0.3 and lia.filter_slope == 24
    # DDEF? i answers "j,k" per the manual; pymeasure's channel1 getter cannot map that back.
    assert lia.ask("DDEF?1").strip() == "1,0" and lia.reference_source == "External"
    x, y = lia.snap()
    assert x == pytest.approx(1e-3) and abs(y) < 1e-12
    assert lia.snap("R", "Theta", "Frequency")[2] == 1000.0
    assert lia.x == pytest.approx(1e-3) and lia.frequency == 1000.0
    assert "SR830" in lia.id
    assert int(lia.lia_status) == 0 and int(lia.err_status) == 0
    lia.auto_gain()
    assert lia.sensitivity == 2e-3
    assert int(lia.ask("*ESR?")) & (16 | 32) == 0   # nothing pymeasure sent was refused
    lia.adapter.close()


def test_overload_fault_reports_overload_and_saturates(bench):
    with SR830Server(bench.signal, bench.reference, Clock(0), faults=FaultConfig(overload=True)) as srv:
        rm, visa = open_visa(srv)
        visa.write("FMOD 0;SENS 26")
        assert float(visa.query("OUTP?1")) == 1.0
        assert int(visa.query("LIAS? 0")) == 1
        visa.close()
        rm.close()
