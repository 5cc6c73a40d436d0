"""THz source driver: exact SCPI transcripts (pymeasure's expected_protocol) and refusals.

An empty transcript in expected_protocol fails if anything is written, so each refusal test also proves
that nothing reached the instrument.
"""

import logging

import pytest
from pymeasure.adapters import Adapter
from pymeasure.test import expected_protocol

from instruments.errors import SourceLimitError
from instruments.thz_source import Keysight8257D, THzSource


def test_setting_400_ghz_output_sends_rf_of_f_over_36_at_millihertz_resolution():
    with expected_protocol(THzSource, [(":FREQ 11111111111.111 Hz", None)]) as source:
        source.output_frequency_hz = 400e9


def test_output_frequency_is_rf_frequency_times_multiplier():
    with expected_protocol(THzSource, [(":FREQ?", "+1.25000000000E+10")], multiplier=24) as source:
        assert source.output_frequency_hz == pytest.approx(300e9)


def test_output_frequency_needing_rf_above_the_synthesizer_range_is_refused_before_sending():
    with expected_protocol(THzSource, []) as source:
        with pytest.raises(SourceLimitError, match=r"27\.7778 GHz.*outside the synthesizer's range"):
            source.output_frequency_hz = 1e12  # 1 THz / 36 = 27.8 GHz > 20 GHz (option 520)


def test_a_synthesizer_option_with_a_higher_range_accepts_that_rf():
    with expected_protocol(THzSource, [(":FREQ 27777777777.778 Hz", None)],
                           rf_frequency_range_hz=(250e3, 40e9)) as source:
        source.output_frequency_hz = 1e12


def test_rf_power_inside_the_multiplier_limits_is_sent_with_centi_db_resolution():
    with expected_protocol(THzSource, [(":POW 10.00 dBm", None), (":POW?", "+1.00000000E+001")],
                           rf_power_limits_dbm=(0, 12)) as source:
        source.rf_power_dbm = 10
        assert source.rf_power_dbm == 10.0


@pytest.mark.parametrize("power_dbm", [12.01, 20.0, -0.5, float("nan")])
def test_rf_power_outside_the_multiplier_limits_is_refused_not_clamped_and_nothing_is_sent(power_dbm):
    with expected_protocol(THzSource, [], rf_power_limits_dbm=(0, 12)) as source:
        with pytest.raises(SourceLimitError, match=r"safe RF input range \[0, 12\] dBm"):
            source.rf_power_dbm = power_dbm


def test_source_limit_errors_are_value_errors():
    with expected_protocol(THzSource, []) as source:
        with pytest.raises(ValueError):
            source.rf_power_dbm = 13


def test_modulation_is_a_1khz_internal_square_pulse_modulation_with_am_off():
    with expected_protocol(THzSource, [
        (":SOUR:AM:STAT OFF", None),
        (":SOUR:PULM:SOUR INT", None),
        (":SOUR:PULM:SOUR:INT SQU", None),
        (":SOUR:PULM:INT:FREQ 1000", None),
        (":SOUR:PULM:STAT ON", None),
        (":OUTP:MOD ON", None),
    ]) as source:
        source.configure_modulation(frequency_hz=1000)


def test_modulation_rate_outside_the_internal_square_source_range_is_refused_before_sending():
    with expected_protocol(THzSource, []) as source:
        with pytest.raises(SourceLimitError, match="square-wave range"):
            source.configure_modulation(frequency_hz=20e6)


def test_on_checks_the_held_power_then_switches_the_output_on():
    with expected_protocol(THzSource, [(":POW?", "+1.00000000E+001"), (":OUTP ON", None)]) as source:
        source.on()


def test_on_refuses_when_the_synthesizer_holds_a_power_above_the_limit():
    with expected_protocol(THzSource, [(":POW?", "+1.50000000E+001")]) as source:
        with pytest.raises(SourceLimitError, match="switch on"):
            source.on()


def test_off_sends_output_off():
    with expected_protocol(THzSource, [(":OUTP OFF", None)]) as source:
        source.off()


def test_shutdown_switches_the_output_off():
    with expected_protocol(THzSource, [(":OUTP OFF", None)]) as source:
        source.shutdown()


class _DeadAdapter(Adapter):
    def _write(self, command, **kwargs):
        raise ConnectionResetError("peer closed the connection")

    def _read(self, **kwargs):
        raise ConnectionResetError("peer closed the connection")


def test_off_and_shutdown_never_raise_on_a_dead_connection_and_log_instead(caplog):
    source = THzSource(_DeadAdapter())
    with caplog.at_level(logging.ERROR, logger="instruments.thz_source"):
        source.off()
        source.shutdown()
    assert sum("':OUTP OFF'" in r.getMessage() for r in caplog.records) == 2


def test_snapshot_records_identity_and_settings_in_si_units():
    with expected_protocol(THzSource, [
        ("*IDN?", "Agilent Technologies, E8257D, US12345678, C.06.28"),
        (":FREQ?", "+1.11111111111E+10"),
        (":POW?", "+1.00000000E+001"),
        (":OUTPUT?", "1"),
        (":OUTPUT:MOD?", "1"),
        (":SOUR:PULM:STAT?", "1"),
        (":SOUR:PULM:INT:FREQ?", "+1.0000000000000E+03"),
    ]) as source:
        snap = source.snapshot()
    assert snap["idn"].startswith("Agilent Technologies, E8257D")
    assert snap["output_frequency_hz"] == pytest.approx(400e9, rel=1e-11)
    assert snap["rf_power_dbm"] == 10.0
    assert snap["output_on"] is True and snap["pulse_modulation_on"] is True
    assert snap["pulse_rate_hz"] == 1000.0
    assert snap["multiplier"] == 36 and snap["rf_power_limits_dbm"] == [0.0, 12.0]


@pytest.mark.parametrize("kwargs", [
    {"multiplier": 0}, {"multiplier": 2.5}, {"rf_power_limits_dbm": (12, 0)},
    {"rf_power_limits_dbm": (0, 30)},
])
def test_invalid_source_configuration_is_refused_at_construction(kwargs):
    with pytest.raises(ValueError):
        THzSource(_DeadAdapter(), **kwargs)


def test_synthesizer_frequency_and_power_validators_are_strict_not_truncating():
    with expected_protocol(Keysight8257D, []) as synth:
        with pytest.raises(ValueError):
            synth.frequency = 25e9
        with pytest.raises(ValueError):
            synth.power = 30
        with pytest.raises(ValueError):
            synth.pulse_frequency = 0.01
