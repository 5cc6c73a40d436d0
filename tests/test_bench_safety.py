"""Every way out of ``with Bench(...)`` leaves the RF off and the stages stopped — on the EMULATOR.

The virtual bench runs here (as ``bench serve`` would) and the Bench connects to it through an
addresses file, so the emulator outlives the session and its state is the truth to check.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lab.bench import Bench, BenchInterrupted
from lab.config import bench_config_from_dict
from lab.virtual.bench import VirtualBench


REPO = Path(__file__).resolve().parent.parent
FAR_MM = 40.0   # a move of 40 mm at 20 mm/s in real time takes 2 s: still moving when interrupted


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def server_dict(checkpoint, faults=None) -> dict:
    return {"name": "safety", "lockin": {"sensitivity_v": 1e-3},
            "stages": {"x": {"timeout_s": 5.0}, "y": {"timeout_s": 5.0}}, "object_changer": "virtual",
            "virtual": {"design": str(checkpoint), "time_scale": 1.0, "faults": faults or {}}}


@pytest.fixture
def served(checkpoint, tmp_path):
    """(VirtualBench, client BENCH.yaml path) — the emulator outlives every client session."""
    def start(faults=None):
        vb = VirtualBench(bench_config_from_dict(server_dict(checkpoint, faults)))
        started.append(vb)
        vb.write_addresses(tmp_path / "addresses.yaml")
        client = server_dict(checkpoint)
        client["virtual"]["addresses_file"] = "addresses.yaml"     # relative to the client file
        path = tmp_path / "client.yaml"
        path.write_text(yaml.safe_dump(client))
        return vb, path

    started: list[VirtualBench] = []
    yield start
    for vb in started:
        vb.close()


def open_client(path: Path) -> Bench:
    from lab.bench import open_bench
    return open_bench(path)


def start_moving_with_rf_on(bench: Bench, vb: VirtualBench) -> None:
    bench.rf_on()
    bench.stage_x.move_to_mm(50.0 + FAR_MM, wait=False)
    deadline = time.monotonic() + 2
    while not vb.state()["stage_x"]["moving"] and time.monotonic() < deadline:
        time.sleep(0.005)
    state = vb.state()
    assert state["source"]["rf_on"] and state["stage_x"]["moving"], "precondition: RF on and moving"


def assert_safe(vb: VirtualBench) -> None:
    state = vb.state()
    assert state["source"]["rf_on"] is False
    assert state["stage_x"]["moving"] is False and state["stage_y"]["moving"] is False
    assert state["stage_x"]["position_mm"] < 50.0 + FAR_MM - 1.0      # stopped, not arrived


def test_normal_exit_leaves_rf_off_and_stages_stopped(served):
    vb, path = served()
    with open_client(path) as bench:
        assert bench.virtual is None                                  # connected, not started
        start_moving_with_rf_on(bench, vb)
    assert_safe(vb)


def test_exception_inside_the_block_leaves_rf_off_and_stages_stopped(served):
    vb, path = served()
    with pytest.raises(RuntimeError, match="procedure bug"):
        with open_client(path) as bench:
            start_moving_with_rf_on(bench, vb)
            raise RuntimeError("procedure bug")
    assert_safe(vb)


def test_sigint_unwinds_the_block_and_restores_the_handler(served):
    vb, path = served()
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        with open_client(path) as bench:
            start_moving_with_rf_on(bench, vb)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)                                             # the handler raises before this ends
    assert isinstance(info.value, BenchInterrupted) and info.value.signum == signal.SIGINT
    assert_safe(vb)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_failing_shutdown_step_does_not_skip_the_others(served, caplog):
    vb, path = served()
    with open_client(path) as bench:
        start_moving_with_rf_on(bench, vb)
        bench.source.synthesizer.adapter.close()          # the source's connection is gone: RF off fails
    state = vb.state()
    assert state["stage_x"]["moving"] is False           # stopped although the RF-off step failed
    assert state["source"]["rf_on"] is True              # (truthfully: nobody could switch it off)
    assert "check the RF output by hand" in caplog.text


SIGTERM_CLIENT = textwrap.dedent("""
    import sys, time
    from lab.bench import open_bench
    try:
        with open_bench(sys.argv[1]) as bench:
            bench.rf_on()
            bench.stage_x.move_to_mm(50.0 + float(sys.argv[2]), wait=False)
            print("READY", flush=True)
            time.sleep(30)
    except KeyboardInterrupt as exc:
        print("INTERRUPTED", type(exc).__name__, flush=True)
        sys.exit(130)
""")


def test_sigterm_to_a_client_process_leaves_rf_off_and_stages_stopped(served, tmp_path):
    vb, path = served()
    script = tmp_path / "client.py"
    script.write_text(SIGTERM_CLIENT)
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(FAR_MM)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 2
        while not vb.state()["stage_x"]["moving"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert vb.state()["source"]["rf_on"] and vb.state()["stage_x"]["moving"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "INTERRUPTED BenchInterrupted" in out
    assert_safe(vb)


def test_bench_serve_writes_addresses_a_client_can_use_and_removes_them(checkpoint, tmp_path):
    import argparse
    import threading

    from lab.bench_cli import cmd_bench_serve

    server_yaml = tmp_path / "server.yaml"
    data = server_dict(checkpoint)
    data["virtual"]["time_scale"] = 0.0
    server_yaml.write_text(yaml.safe_dump(data))
    out = tmp_path / "served.yaml"
    stop = threading.Event()
    thread = threading.Thread(target=cmd_bench_serve, daemon=True,
                              args=(argparse.Namespace(config=str(server_yaml), addresses_out=str(out)), stop))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        client = server_dict(checkpoint)
        client["virtual"]["addresses_file"] = str(out)
        with Bench(bench_config_from_dict(client)) as bench:
            assert "SR830" in bench.lockin.id and bench.time_scale == 0.0
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and not out.exists()
