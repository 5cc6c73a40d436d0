"""The real drivers (pyvisa-py TCPIP SOCKET, pyserial on a pty) against the running virtual bench.

Checks are made on the EMULATOR's state (``bench.virtual.state()``), not on what a driver believes.
Every test that could hang runs under its own deadline.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from instruments import LockInOverload, SoftLimitError, StageTimeout
from lab.bench import Bench, BenchCommunicationError
from lab.config import bench_config_from_dict


F_NOMINAL_HZ = 400e9
NOISE_V = 1e-9
RESPONSIVITY_V_PER_W = 1000.0


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def bench_dict(checkpoint, **virtual) -> dict:
    data = {
        "name": "test-bench",
        "lockin": {"time_constant_ms": 10, "filter_slope_db": 12, "sensitivity_v": 1e-3,
                   "detector": {"law": "square", "responsivity_v_per_w": RESPONSIVITY_V_PER_W,
                                "aperture_mm": 0.5}},
        "stages": {"x": {"origin_mm": 50.0, "timeout_s": 2.0}, "y": {"origin_mm": 50.0, "timeout_s": 2.0}},
        "object_changer": "virtual",
        "virtual": {"design": str(checkpoint), "time_scale": 0.0, "source_power_uw": 100.0,
                    "as_built": {"detector_offset_mm": [0.3, -0.2]},
                    "noise": {"lockin_noise_v": NOISE_V}},
    }
    data["virtual"].update(virtual)
    return data


def config(checkpoint, lockin=None, **virtual):
    data = bench_dict(checkpoint, **virtual)
    data["lockin"].update(lockin or {})
    return bench_config_from_dict(data)


def within(deadline_s, fn, *args):
    """Run ``fn`` in a thread; fail (instead of hanging) if it is not done within ``deadline_s``."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline_s)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {deadline_s} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def digit_image():
    image = np.zeros((28, 28), np.uint8)
    image[5:23, 12:16] = 255
    image[5:9, 8:16] = 255
    return image


def expected_power_w(bench, x_mm, y_mm, key, image, freq_hz=F_NOMINAL_HZ):
    """The optics at the detector's true position (stage − origin − hidden detector offset)."""
    dx_m, dy_m = bench.virtual.detector_offset_m
    return bench.virtual.optics.detector_power_w(x_mm * 1e-3 - dx_m, y_mm * 1e-3 - dy_m, key, image, freq_hz)


@pytest.fixture
def bench(checkpoint):
    with Bench(config(checkpoint)) as b:
        yield b


def test_identifies_every_instrument(bench):
    assert "E8257D" in bench.source.synthesizer.id
    assert "SR830" in bench.lockin.id
    assert {bench.stage_x.identify().model, bench.stage_y.identify().model} == {"KDC101"}
    snap = bench.snapshot()
    # the emulator answers :FREQ? with 11 significant digits (0.1 Hz at RF, 4 Hz after ×36)
    assert snap["source"]["output_frequency_hz"] == pytest.approx(F_NOMINAL_HZ, abs=10.0)
    assert snap["stage_x"]["origin_m"] == pytest.approx(0.05)


def test_400_ghz_puts_the_synthesizer_at_11_111_ghz(bench):
    state = bench.virtual.state()["source"]
    assert state["rf_frequency_hz"] == pytest.approx(400e9 / 36, abs=1e-3)
    assert state["modulation_on"] and state["modulation_frequency_hz"] == 1000.0
    assert state["rf_on"] is False                       # configured, not switched on
    bench.rf_on()
    assert bench.virtual.state()["source"]["rf_on"] is True


def test_moves_put_the_emulated_stages_at_origin_plus_coordinate(bench):
    bench.move_to_mm(3.0, -2.5)
    state = bench.virtual.state()
    assert state["stage_x"]["position_mm"] == pytest.approx(53.0, abs=1e-4)
    assert state["stage_y"]["position_mm"] == pytest.approx(47.5, abs=1e-4)
    assert bench.position_mm() == pytest.approx((3.0, -2.5), abs=1e-4)


def test_settled_reading_is_the_optics_through_the_calibration(bench):
    image = digit_image()
    bench.mount("seven", image)
    key, fimage = bench.virtual.current_object()
    assert key.startswith("seven#")
    bench.rf_on()
    noise_w = NOISE_V / RESPONSIVITY_V_PER_W
    for x_mm, y_mm in [(0.0, 0.0), (1.3, -0.7), (-2.1, 2.6)]:
        bench.move_to_mm(x_mm, y_mm)
        truth_w = expected_power_w(bench, x_mm, y_mm, key, fimage)
        assert truth_w > 100 * noise_w
        assert bench.read_power_w() == pytest.approx(truth_w, rel=1e-3, abs=5 * noise_w)


def test_rf_off_reads_only_noise(bench):
    bench.rf_on()
    bench.move_to_mm(0.0, 0.0)
    assert bench.read_power_w() > 1e-10
    bench.rf_off()
    assert bench.virtual.state()["source"]["rf_on"] is False
    assert bench.read_power_w() < 5 * NOISE_V / RESPONSIVITY_V_PER_W


def test_another_frequency_gives_another_map(bench):
    bench.mount("seven", digit_image())
    key, fimage = bench.virtual.current_object()
    bench.rf_on()
    points = [(-1.5, 0.5), (0.0, 0.0), (1.0, 1.5), (2.0, -1.0)]

    def scan():
        out = []
        for p in points:
            bench.move_to_mm(*p)
            out.append(bench.read_power_w())
        return np.array(out)

    at_400 = scan()
    bench.set_frequency_hz(360e9)
    assert bench.virtual.state()["source"]["rf_frequency_hz"] == pytest.approx(10e9, abs=1e-3)
    at_360 = scan()
    expected_360 = np.array([expected_power_w(bench, *p, key, fimage, 360e9) for p in points])
    assert at_360 == pytest.approx(expected_360, rel=1e-3, abs=1e-11)
    assert np.abs(at_360 - at_400).max() > 0.05 * at_400.max()


def test_moves_beyond_the_limits_are_refused_and_nothing_moves(bench):
    bench.move_to_mm(1.0, 1.0)
    with pytest.raises(SoftLimitError, match="soft limits"):
        bench.move_to_mm(60.0, 0.0)                    # stage 110 mm > travel 100 mm
    with pytest.raises(SoftLimitError):
        bench.move_to_mm(0.0, -50.5)
    state = bench.virtual.state()
    assert state["stage_x"]["position_mm"] == pytest.approx(51.0, abs=1e-4)
    assert state["stage_y"]["position_mm"] == pytest.approx(51.0, abs=1e-4)


def test_a_read_right_after_a_move_is_partly_settled(checkpoint):
    # τ = 1 s emulated = 10 ms real at time_scale 0.01; settling (7 τ) takes 70 ms real.
    cfg = config(checkpoint, lockin={"time_constant_ms": 1000}, time_scale=0.01)
    with Bench(cfg) as bench:
        coords, pmap = bench.virtual.optics.power_map("__open__", None, F_NOMINAL_HZ)
        inner = np.abs(coords) < 4e-3
        sub = pmap[np.ix_(inner, inner)]
        c = coords[inner]
        iy, ix = np.unravel_index(sub.argmax(), sub.shape)
        jy, jx = np.unravel_index(sub.argmin(), sub.shape)
        dx_m, dy_m = bench.virtual.detector_offset_m
        bright = (c[ix] * 1e3 + dx_m * 1e3, c[iy] * 1e3 + dy_m * 1e3)
        dark = (c[jx] * 1e3 + dx_m * 1e3, c[jy] * 1e3 + dy_m * 1e3)
        bench.rf_on()
        bench.move_to_mm(*dark)
        dark_w = bench.read_power_w()
        bench.move_to_mm(*bright)
        settled_w = within(5, bench.read_power_w)
        bench.move_to_mm(*dark)
        bench.settle()
        bench.move_to_mm(*bright)
        early_w = bench.read_power_w(settle=False)
        assert dark_w < 0.5 * settled_w
        assert dark_w - 0.02 * settled_w < early_w < 0.9 * settled_w


# ---- faults surface as clear exceptions within the timeout, never a hang ----------------------------

def test_lockin_dropping_the_connection_raises_a_communication_error(checkpoint):
    cfg = config(checkpoint, faults={"lockin": {"drop_after_messages": 12}})
    with Bench(cfg) as bench:
        bench.rf_on()

        def read_until_failure():
            for _ in range(20):
                bench.read_power_w()

        with pytest.raises(BenchCommunicationError, match="lock-in at TCPIP0::127.0.0.1"):
            within(10, read_until_failure)
        assert bench.virtual.lockin.dropped_connections == 1


def test_garbled_source_reply_raises_and_the_rf_stays_off(checkpoint):
    cfg = config(checkpoint, faults={"source": {"garble_replies": True}})
    with Bench(cfg) as bench:
        with pytest.raises(BenchCommunicationError, match="source"):
            within(5, bench.rf_on)                      # on() checks ':POW?' first: unreadable
        assert bench.virtual.state()["source"]["rf_on"] is False


def test_stalled_stage_times_out_and_is_reported(checkpoint):
    cfg = bench_config_from_dict({**bench_dict(checkpoint, faults={"stage_y": {"stall": True,
                                                                               "stall_after_mm": 0.5}}),
                                  "stages": {"x": {"timeout_s": 1.0}, "y": {"timeout_s": 1.0}}})
    with Bench(cfg, home=False) as bench:
        with pytest.raises(StageTimeout, match="stage y: no MOT_MOVE_COMPLETED"):
            within(5, bench.move_to_mm, 0.0, 3.0)
        assert bench.virtual.state()["stage_y"]["moving"] is True     # stalled, still "moving"
        bench.stage_y.stop()
        within(2, bench.stage_y.status)
        assert bench.virtual.state()["stage_y"]["moving"] is False


def test_stalled_stage_while_homing_fails_the_open_cleanly(checkpoint):
    cfg = bench_config_from_dict({**bench_dict(checkpoint, faults={"stage_x": {"stall": True}}),
                                  "stages": {"x": {"timeout_s": 0.5}, "y": {"timeout_s": 0.5}}})
    with pytest.raises(StageTimeout, match="MOT_MOVE_HOMED"):
        within(10, Bench(cfg).open)


@pytest.mark.parametrize("sensitivity_v", [1e-3, None])
def test_lockin_overload_raises_lockin_overload(checkpoint, sensitivity_v):
    cfg = config(checkpoint, lockin={"sensitivity_v": sensitivity_v}, faults={"lockin": {"overload": True}})
    with Bench(cfg) as bench:
        with pytest.raises(LockInOverload):
            within(10, bench.rf_on if sensitivity_v is None else bench.read_power_w)
