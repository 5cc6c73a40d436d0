"""Lock-in driver: exact SR830 command transcripts, settling, status checks, ranging, calibration."""

import math

import pytest
from pymeasure.test import expected_protocol

from instruments.errors import LockInError, LockInOverload, ReferenceUnlocked
from instruments.lockin import (LIAStatus, LockIn, PowerLaw, SquareLaw, TableCalibration,
                                settling_time_s)


# --- settling ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slope_db, n_tau", [(6, 5), (12, 7), (18, 9), (24, 10)])
def test_settling_time_is_the_srs_99_percent_multiple_of_tau_for_each_slope(slope_db, n_tau):
    assert settling_time_s(0.1, slope_db) == pytest.approx(n_tau * 0.1)


@pytest.mark.parametrize("n_tau, poles", [(5, 1), (7, 2), (9, 3), (10, 4)])
def test_settling_multiple_leaves_about_1_percent_of_a_step_for_that_many_poles(n_tau, poles):
    # step response of n cascaded one-pole filters: 1 - exp(-t) * sum_{k<n} t^k / k!
    remaining = math.exp(-n_tau) * sum(n_tau ** k / math.factorial(k) for k in range(poles))
    assert remaining <= 0.0105  # SRS's 10 τ at 24 dB/oct leaves 1.03 %


def test_settling_time_rejects_an_unknown_slope():
    with pytest.raises(ValueError, match="filter slope"):
        settling_time_s(0.1, 9)


def test_settle_time_reads_time_constant_and_slope_from_the_instrument():
    # OFLT 8 = 100 ms, OFSL 3 = 24 dB/oct → 10 τ = 1 s
    with expected_protocol(LockIn, [("OFLT?", "8"), ("OFSL?", "3")]) as lockin:
        assert lockin.settle_time_s() == pytest.approx(1.0)


def test_wait_settled_clears_latched_status_then_sleeps_one_settling_time_via_injected_sleep():
    slept = []
    with expected_protocol(LockIn, [("*CLS", None), ("OFLT?", "9"), ("OFSL?", "1")]) as lockin:
        waited = lockin.wait_settled(sleep=slept.append)   # 300 ms, 12 dB/oct → 7 τ
    assert slept == [pytest.approx(2.1)] and waited == pytest.approx(2.1)


# --- readings ------------------------------------------------------------------------------------------
def test_read_r_theta_is_one_snap_query_with_theta_in_radians():
    with expected_protocol(LockIn, [("SNAP? 3,4", "1.5e-03,90.0")]) as lockin:
        r_v, theta_rad = lockin.read_r_theta()
    assert r_v == 1.5e-3 and theta_rad == pytest.approx(math.pi / 2)


def test_read_xy_is_one_snap_query():
    with expected_protocol(LockIn, [("SNAP? 1,2", "1.0e-03,-2.0e-03")]) as lockin:
        assert tuple(lockin.read_xy()) == (1e-3, -2e-3)


def test_garbled_snap_reply_raises_a_lockin_error():
    with expected_protocol(LockIn, [("SNAP? 3,4", "1.0e-03")]) as lockin:
        with pytest.raises(LockInError, match="SNAP"):
            lockin.read_r_theta()


def test_status_decodes_the_lias_byte_into_flags():
    with expected_protocol(LockIn, [("LIAS?", "9")]) as lockin:
        flags = lockin.status()
    assert flags == LIAStatus.INPUT_OVERLOAD | LIAStatus.REF_UNLOCK


def test_reading_during_input_overload_raises_lockin_overload():
    with expected_protocol(LockIn, [("SNAP? 3,4", "0.5,0.0"), ("LIAS?", "1")]) as lockin:
        with pytest.raises(LockInOverload, match="overload"):
            lockin.read_power_w()


@pytest.mark.parametrize("lias", ["2", "4"])
def test_reading_during_filter_or_output_overload_raises_lockin_overload(lias):
    with expected_protocol(LockIn, [("SNAP? 3,4", "0.5,0.0"), ("LIAS?", lias)]) as lockin:
        with pytest.raises(LockInOverload):
            lockin.read_power_w()


def test_reading_with_reference_unlocked_raises_reference_unlocked():
    with expected_protocol(LockIn, [("SNAP? 3,4", "0.5,0.0"), ("LIAS?", "8")]) as lockin:
        with pytest.raises(ReferenceUnlocked, match="reference unlocked"):
            lockin.read_power_w()


def test_harmless_status_bits_do_not_invalidate_a_reading():
    # bit 4 frequency range switched, bit 5 time constant changed, bit 6 trigger
    with expected_protocol(LockIn, [("SNAP? 3,4", "0.5,0.0"), ("LIAS?", "112")]) as lockin:
        assert lockin.read_power_w() == pytest.approx(0.5)


def test_read_power_converts_r_through_the_square_law_responsivity():
    with expected_protocol(LockIn, [("SNAP? 3,4", "2.0e-03,10.0"), ("LIAS?", "0")],
                           calibration=SquareLaw(responsivity_v_per_w=400.0)) as lockin:
        reading = lockin.read_checked()
    assert reading.power_w == pytest.approx(5e-6) and reading.r_v == 2e-3


# --- calibration ---------------------------------------------------------------------------------------
def test_square_law_power_is_linear_in_r():
    cal = SquareLaw(responsivity_v_per_w=2.0)
    assert cal.power_w(1.0) == 0.5 and cal.power_w(3.0) == 3 * cal.power_w(1.0)


def test_power_law_inverts_its_own_response():
    cal = PowerLaw(responsivity_v_per_w=3.0, exponent=0.8)
    power_w = 0.02
    assert cal.power_w(3.0 * power_w ** 0.8) == pytest.approx(power_w)


def test_table_calibration_interpolates_linearly_and_refuses_readings_outside_the_table():
    cal = TableCalibration(r_v=[0.0, 1.0, 3.0], power_w=[0.0, 1.0, 2.0])
    assert cal.power_w(2.0) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="outside the detector calibration table"):
        cal.power_w(3.5)


@pytest.mark.parametrize("bad", [lambda: SquareLaw(0.0), lambda: PowerLaw(1.0, -1.0),
                                 lambda: TableCalibration([0, 2, 1], [0, 1, 2])])
def test_invalid_calibrations_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


def test_negative_r_is_refused_by_the_calibration():
    with pytest.raises(ValueError):
        SquareLaw().power_w(-1e-3)


# --- ranging -------------------------------------------------------------------------------------------
def test_auto_range_steps_less_sensitive_while_overloaded_or_above_90_percent():
    slept = []
    settle = [("*CLS", None), ("OFLT?", "4"), ("OFSL?", "0")]   # 1 ms, 6 dB/oct → 5 ms
    with expected_protocol(LockIn, [
        ("SENS?", "20"),                                   # 10 mV
        ("SNAP? 3,4", "0.035,0.0"), ("LIAS?", "1"),        # input overload
        ("SENS21", None), *settle,                         # 20 mV
        ("SNAP? 3,4", "0.035,0.0"), ("LIAS?", "0"),        # 175 % of full scale
        ("SENS22", None), *settle,                         # 50 mV
        ("SNAP? 3,4", "0.035,0.0"), ("LIAS?", "0"),        # 70 %: in band
    ]) as lockin:
        assert lockin.auto_range(sleep=slept.append) == 50e-3
    assert slept == [pytest.approx(5e-3)] * 2


def test_auto_range_jumps_down_to_the_most_sensitive_range_keeping_r_below_90_percent():
    with expected_protocol(LockIn, [
        ("SENS?", "26"),                                   # 1 V
        ("SNAP? 3,4", "3.0e-04,0.0"), ("LIAS?", "0"),      # 0.03 %
        ("SENS16", None), ("*CLS", None), ("OFLT?", "4"), ("OFSL?", "0"),   # 500 µV
        ("SNAP? 3,4", "3.0e-04,0.0"), ("LIAS?", "0"),      # 60 %
    ]) as lockin:
        assert lockin.auto_range(sleep=lambda s: None) == 500e-6


def test_auto_range_leaves_an_in_band_reading_alone():
    with expected_protocol(LockIn, [("SENS?", "22"), ("SNAP? 3,4", "0.02,0.0"), ("LIAS?", "0")]) as lockin:
        assert lockin.auto_range(sleep=lambda s: None) == 50e-3


def test_auto_range_overloaded_at_the_least_sensitive_range_raises():
    with expected_protocol(LockIn, [("SENS?", "26"), ("SNAP? 3,4", "1.1,0.0"), ("LIAS?", "4")]) as lockin:
        with pytest.raises(LockInOverload, match="least sensitive"):
            lockin.auto_range(sleep=lambda s: None)


def test_auto_range_refuses_to_range_on_an_unlocked_reference():
    with expected_protocol(LockIn, [("SENS?", "20"), ("SNAP? 3,4", "1e-6,0.0"), ("LIAS?", "8")]) as lockin:
        with pytest.raises(ReferenceUnlocked):
            lockin.auto_range(sleep=lambda s: None)


def test_sensitivity_outside_the_table_is_refused_not_rounded():
    with expected_protocol(LockIn, []) as lockin:
        with pytest.raises(ValueError):
            lockin.sensitivity = 3e-3


def test_snapshot_records_settings_in_si_units():
    with expected_protocol(LockIn, [
        ("OFLT?", "8"), ("OFSL?", "1"),
        ("*IDN?", "Stanford_Research_Systems,SR830,s/n12345,ver1.07"),
        ("SENS?", "22"), ("FMOD?", "0"), ("FREQ?", "1000.0"), ("PHAS?", "90.0"), ("RMOD?", "1"),
        ("ISRC?", "0"),
    ]) as lockin:
        snap = lockin.snapshot()
    assert snap["time_constant_s"] == 0.1 and snap["filter_slope_db_per_oct"] == 12
    assert snap["settle_time_s"] == pytest.approx(0.7)
    assert snap["sensitivity_v"] == 50e-3 and snap["reference_frequency_hz"] == 1000.0
    assert snap["phase_rad"] == pytest.approx(math.pi / 2)
    assert snap["calibration"] == {"kind": "square_law", "responsivity_v_per_w": 1.0}
