"""Procedures end to end on the virtual bench (time_scale 0): what is measured, how runs end, resume."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lab.config import bench_config_from_dict
from lab.runner import run
from lab.store import load_run
from lab.virtual.bench import VirtualBench, as_built_from_config
from lab.virtual.optics import AsBuilt, AsBuiltOptics
from model.checkpoint import save_checkpoint
from model.config import network_config_from_dict
from model.data import load_dataset
from model.network import D2NN
from model.train import train
from procedures.classify import Classify, ClassifyParameters
from procedures.raster_scan import RasterScan, RasterScanParameters

from conftest import TINY

REPO = Path(__file__).resolve().parent.parent
SCAN = dict(objects=("mnist:test:0",), size_mm=(8.0, 8.0), step_mm=1.0)  # 81 points


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    """A tiny network trained for a few seconds: its classes must be clear enough to measure."""
    torch.manual_seed(0)
    net = D2NN(network_config_from_dict(copy.deepcopy(TINY)))
    images, labels = load_dataset("mnist", "train")
    train(net, images[:1500], labels[:1500], images[1500:1700], labels[1500:1700], epochs=3, seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("design") / "model.pt", net.cpu())


def bench_dict(design, as_built=None, faults=None, lockin=None) -> dict:
    return {
        "name": "procedures-test",
        "lockin": {"sensitivity_v": None, "detector": {"aperture_mm": 0.4}, **(lockin or {})},
        "stages": {"x": {"timeout_s": 2.0}, "y": {"timeout_s": 2.0}},
        "object_changer": "virtual",
        "virtual": {"design": str(design), "time_scale": 0.0, "source_power_uw": 100.0,
                    "as_built": as_built or {},
                    "noise": {"lockin_noise_v": 1e-9}, "faults": faults or {}},
    }


MISALIGNED = {"random": {"seed": 3, "lateral_mm": 1.0, "axial_mm": 1.0, "rotation_deg": 2.0},
              "detector_offset_mm": [0.3, -0.2]}


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _predicted(design, cfg, truth: AsBuilt, frame):
    optics = AsBuiltOptics(design, truth, cfg.virtual.source_power_uw * 1e-6)
    image = load_dataset("mnist", "test")[0][0].numpy()
    off = np.array(cfg.virtual.as_built.detector_offset_mm) * 1e-3
    return np.array([optics.detector_power_w(x - off[0], y - off[1], "o", image, 400e9)
                     for x, y in zip(frame["x_m"], frame["y_m"])])


def test_raster_scan_matches_the_as_built_model_and_reveals_misalignment(design, tmp_path):
    cfg = bench_config_from_dict(bench_dict(design, MISALIGNED))
    result = run(RasterScan(RasterScanParameters(**SCAN)), cfg, tmp_path / "run")
    frame, meta = load_run(tmp_path / "run")
    assert result["status"] == meta["status"] == "success" and len(frame) == 81
    measured = frame["power_w"].to_numpy()
    truth = as_built_from_config(cfg, 3)  # only a test may read the hidden truth
    as_built = _predicted(design, cfg, truth, frame)
    ideal = _predicted(design, cfg, AsBuilt(aperture_m=truth.aperture_m, oversample=truth.oversample), frame)
    assert _corr(measured, as_built) > 0.95
    assert _corr(measured, ideal) < _corr(measured, as_built) - 0.1
    assert "as_built" not in meta["bench"]["config"]["virtual"]  # the run never stores the truth


def test_serpentine_order_and_grid(design, tmp_path):
    cfg = bench_config_from_dict(bench_dict(design))
    run(RasterScan(RasterScanParameters(objects=("open",), size_mm=(2.0, 1.0), step_mm=1.0)), cfg, tmp_path / "r")
    frame, _ = load_run(tmp_path / "r")
    xs_mm = np.round(frame["x_m"].to_numpy() * 1e3, 6).tolist()
    assert xs_mm == [-1, 0, 1, 1, 0, -1]  # second row reversed


def test_classify_agrees_with_the_twin_on_an_aligned_bench(design, tmp_path):
    cfg = bench_config_from_dict(bench_dict(design))
    procedure = Classify(ClassifyParameters(twin=str(design), count=20, seed=1, points_per_side=3))
    result = run(procedure, cfg, tmp_path / "run")
    summary = result["summary"]
    assert summary["n"] == 20
    assert summary["agreement_with_twin"] >= 0.95
    assert np.asarray(summary["confusion_measured"]).sum() == 20


def test_overloaded_readings_are_re_ranged_never_recorded(design, tmp_path):
    # a fixed, far too sensitive range: every point overloads first
    cfg = bench_config_from_dict(bench_dict(design, lockin={"sensitivity_v": 2e-9}))
    run(RasterScan(RasterScanParameters(objects=("mnist:test:0",), size_mm=(2.0, 2.0), step_mm=1.0)), cfg,
        tmp_path / "run")
    frame, meta = load_run(tmp_path / "run")
    assert meta["status"] == "success" and len(frame) == 9
    assert (frame["attempts"] > 1).any()
    assert (frame["r_v"] < frame["sensitivity_v"]).all()


def test_a_dropped_lockin_connection_fails_the_run_without_gaps_and_resume_completes(design, tmp_path):
    procedure = RasterScan(RasterScanParameters(**SCAN))
    faulty = bench_config_from_dict(bench_dict(design, faults={"lockin": {"drop_after_messages": 120}}))
    result = run(procedure, faulty, tmp_path / "run")
    frame, meta = load_run(tmp_path / "run")
    assert result["status"] == meta["status"] == "failed"
    assert "lock-in" in meta["reason"]
    assert 0 < len(frame) < 81 and frame["point"].tolist() == list(range(len(frame)))  # no silent gap
    healthy = bench_config_from_dict(bench_dict(design))
    run(procedure, healthy, tmp_path / "run", resume=True)
    frame, meta = load_run(tmp_path / "run")
    assert meta["status"] == "success" and sorted(frame["point"]) == list(range(81))


def test_sigint_aborts_the_run_leaving_rf_off_and_stages_stopped(design, tmp_path):
    server = VirtualBench(bench_config_from_dict(bench_dict(design)))
    try:
        server.write_addresses(tmp_path / "addresses.yaml")
        client = bench_dict(design)
        client["virtual"]["addresses_file"] = str(tmp_path / "addresses.yaml")
        cfg = bench_config_from_dict(client)

        def interrupting_progress(items, total, desc):
            for i, item in enumerate(items):
                if i == 20:
                    os.kill(os.getpid(), signal.SIGINT)
                yield item

        result = run(RasterScan(RasterScanParameters(**SCAN)), cfg, tmp_path / "run", progress=interrupting_progress)
        frame, meta = load_run(tmp_path / "run")
        assert result["status"] == meta["status"] == "aborted"
        assert 15 <= len(frame) <= 21
        state = server.state()
        assert state["source"]["rf_on"] is False
        assert not state["stage_x"]["moving"] and not state["stage_y"]["moving"]
    finally:
        server.close()


def test_stalled_stage_fails_the_run_with_the_reason(design, tmp_path):
    cfg = bench_config_from_dict(bench_dict(design, faults={"stage_y": {"stall": True, "stall_after_mm": 0.5}}))
    data = bench_dict(design, faults={"stage_y": {"stall": True, "stall_after_mm": 0.5}})
    data["stages"]["y"]["timeout_s"] = 0.5
    cfg = bench_config_from_dict(data)
    from lab.bench import Bench
    result = run(RasterScan(RasterScanParameters(**SCAN)), cfg, tmp_path / "run",
                 bench_factory=lambda c, f: Bench(c, f, home=False))
    _, meta = load_run(tmp_path / "run")
    assert result["status"] == "failed" and "Stage" in meta["reason"]


def test_runs_from_the_command_line_and_as_a_module(design, tmp_path):
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump(bench_dict(design)))
    args = ["--bench", str(bench), "--objects", "mnist:test:3", "--size-mm", "2", "2", "--step-mm", "1", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    a = subprocess.run([sys.executable, "-m", "lab.cli", "run", "raster-scan", "--out", str(tmp_path / "a"), *args],
                       capture_output=True, text=True, env=env, timeout=120)
    b = subprocess.run([sys.executable, "-m", "procedures.raster_scan", "--out", str(tmp_path / "b"), *args],
                       capture_output=True, text=True, env=env, timeout=120)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    fa, fb = load_run(tmp_path / "a")[0], load_run(tmp_path / "b")[0]
    assert np.allclose(fa["power_w"], fb["power_w"], rtol=0.05)
    again = subprocess.run([sys.executable, "-m", "lab.cli", "run", "raster-scan", "--out", str(tmp_path / "a"),
                            *args[:-1], "--step-mm", "0.5", "--resume"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert again.returncode == 2 and "parameters differ" in again.stderr and len(again.stderr.strip().splitlines()) == 1
